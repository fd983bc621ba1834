"""Ingest: readers for every format and location, cleaning and filters, and every kind of bad input."""

import bz2
import gzip
import json
import re
import tracemalloc

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
import zstandard

from conftest import REUTERS, read_jsonl_gz
from pretrain import ingest
from pretrain.chain import plan
from pretrain.configfile import validate_config
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import IngestConfig
from pretrain.core.errors import ConfigError, InputError
from pretrain.data import clean, formats
from pretrain.data.io import FileStats, RecordSource, expand_sources, iter_texts, read_records

TRAILER = r"(?i)\s*reuter\s*\x03\s*$"


def texts(store, aid):
    folder = store.local_dir(aid)
    return {s: pq.read_table(folder / f"{s}.parquet").column("text").to_pylist() for s in formats.SPLITS}


def everything(store, aid):
    out = texts(store, aid)
    return out["train"] + out["validation"]


@pytest.fixture(scope="module")
def stories():
    """40 real, distinct Reuters stories (cleaned), long enough for every filter."""
    cfg = IngestConfig(inputs=["x"], strip_patterns=[TRAILER])
    cleaner = clean.Cleaner(cfg)
    out = []
    for record in read_jsonl_gz(REUTERS / "corpus.jsonl.gz", limit=200):
        cleaned = cleaner(record["text"])
        if cleaned and cleaned[1] > 40 and cleaned[0] not in out:
            out.append(cleaned[0])
    return out[:40]


def test_real_reuters_slice(tmp_path, corpus_file):
    store = ArtifactStore(tmp_path / "store")
    cfg = IngestConfig(inputs=[str(corpus_file)], strip_patterns=[TRAILER], validation_fraction=0.1)
    aid = ingest.run(cfg, store)
    m = store.manifest(aid)["metrics"]
    assert m["documents_read"] == 402
    assert m["duplicates_removed"] >= 2  # the fixture repeats two stories
    removed = m["duplicates_removed"] + m["near_duplicates_removed"] + m["short_removed"] + m["empty_removed"]
    assert m["documents"] == m["train_documents"] + m["validation_documents"] == 402 - removed
    out = texts(store, aid)
    both = out["train"] + out["validation"]
    assert len(both) == len(set(both))
    assert not any("\x03" in t or t.lower().endswith("reuter") for t in both)
    assert 0.03 < len(out["validation"]) / len(both) < 0.2
    assert ingest.run(cfg, store) == aid  # second run: found, not rebuilt
    assert ingest.stage_id(cfg) == aid


def test_a_run_hashes_its_inputs_once(tmp_path, tiny_config, monkeypatch):
    """Run alone, and as the ingest flow calls it (plan, shard tasks, then assembly from that plan)."""
    from conftest import write_config
    from pretrain.stage_cli import main as stage_main

    hashed = []
    digest = ingest.source_digest
    monkeypatch.setattr(ingest, "source_digest", lambda path: hashed.append(path) or digest(path))
    stage_main("ingest", argv=["--config", str(write_config(tmp_path / "c.yaml", tiny_config))])
    assert len(hashed) == 1

    hashed.clear()
    store, cfg = ArtifactStore(tmp_path / "flow-store"), IngestConfig(**tiny_config["ingest"])
    corpus = ingest.make_plan(cfg, store)
    for shard in corpus.shards:
        ingest.process_shard(shard, cfg, store.url)
    assert ingest.run(cfg, store, plan=corpus) == corpus.aid and len(hashed) == 1


def test_split_is_by_content_not_order(tmp_path, corpus_file):
    records = read_jsonl_gz(corpus_file)
    reversed_file = tmp_path / "reversed.jsonl"
    reversed_file.write_text("".join(json.dumps(r) + "\n" for r in reversed(records)))
    store = ArtifactStore(tmp_path / "store")
    # Near-duplicate removal keeps the first of a group, which depends on order: compare without it.
    exact_only = {"near": False}
    a = texts(store, ingest.run(IngestConfig(inputs=[str(corpus_file)], validation_fraction=0.1, dedup=exact_only), store))
    b = texts(store, ingest.run(IngestConfig(inputs=[str(reversed_file)], validation_fraction=0.1, dedup=exact_only), store))
    assert set(a["validation"]) == set(b["validation"])
    assert set(a["train"]) == set(b["train"])


def test_cleaning():
    cfg = IngestConfig(inputs=["x"], strip_patterns=[TRAILER])
    raw = "Cafe\u0301 prices\r\nrose  4 pct\x07 \u200b today.\n\n\n\n   Second\tparagraph.\n Reuter\n\x03"
    assert clean.clean_text(raw, cfg, [re.compile(TRAILER)]) == "Café prices\nrose 4 pct today.\n\nSecond paragraph."
    # ASCII takes a faster path; it must agree with the general one on the same characters.
    odd = "tab\t\tx\x0c\x0bend \x07\n \n \n \nz\u2028y\x85w"  # \x0b, \x0c, \x07, \x85: control characters
    assert clean.clean_text(odd, cfg, []) == "tab xend\n\nz yw"
    assert clean.clean_text(odd.encode("ascii", "ignore").decode(), cfg, []) == "tab xend\n\nzyw"


# --- readers -----------------------------------------------------------------------------------------


def _write_every_format(folder, docs):
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(docs[0])
    (folder / "b.jsonl").write_text(json.dumps({"body": docs[1]}) + "\n\n" + json.dumps({"body": docs[2]}) + "\n")
    with gzip.open(folder / "sub" / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"body": docs[3]}) + "\n")
    (folder / "sub" / "d.csv").write_text('id,body\n1,"' + docs[4].replace('"', '""') + '"\n')
    pq.write_table(pa.table({"body": [docs[5], None]}), folder / "sub" / "e.parquet")
    (folder / "sub" / "f.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress((json.dumps({"body": docs[6]}) + "\n").encode()))
    (folder / "sub" / "g.tsv").write_text("body\tid\n" + docs[7].replace("\n", " ").replace("\t", " ") + "\t7\n")
    with gzip.open(folder / "sub" / "h.json.gz", "wt") as f:
        f.write(json.dumps({"body": docs[8], "id": 8}) + "\n")
    (folder / "sub" / "i.txt.bz2").write_bytes(bz2.compress(docs[9].encode()))
    (folder / ".hidden.jsonl").write_text("not read at all")


def test_every_format_folders_and_globs(tmp_path, stories):
    folder = tmp_path / "in"
    _write_every_format(folder, stories)
    store = ArtifactStore(tmp_path / "store")
    cfg = IngestConfig(inputs=[str(folder)], text_field="body", validation_fraction=0.3)
    aid = ingest.run(cfg, store)
    m = store.manifest(aid)
    assert m["metrics"]["documents"] == 10 and m["metrics"]["empty_removed"] == 1
    assert len(m["sources"]) == 9  # the hidden file is not an input
    assert set(everything(store, aid)) == {" ".join(s.split()) if i == 7 else s for i, s in enumerate(stories[:10])}
    glob_cfg = IngestConfig(inputs=[str(folder / "**" / "*.json*")], text_field="body", validation_fraction=0.3)
    assert store.manifest(ingest.run(glob_cfg, store))["metrics"]["documents_read"] == 5  # b (2), c, f, h


def test_huggingface_save_to_disk_dataset_and_dataset_dict(tmp_path, stories):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    single = tmp_path / "hf_single"
    datasets.Dataset.from_dict({"text": stories[:6], "n": list(range(6))}).save_to_disk(single)
    both = tmp_path / "hf_dict"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": stories[6:12]}),
        "test": datasets.Dataset.from_dict({"text": stories[12:15]}),
    }).save_to_disk(both)  # fmt: skip
    assert [p.rsplit("/", 2)[-2] for p in expand_sources([str(both)])] == ["train", "test"]
    store = ArtifactStore(tmp_path / "store")
    aid = ingest.run(IngestConfig(inputs=[str(single), str(both)], validation_fraction=0.3), store)
    assert sorted(everything(store, aid)) == sorted(stories[:15])
    assert all(s["path"].endswith(".arrow") for s in store.manifest(aid)["sources"])
    # The folder inside a glob is read as a dataset too; the bare .arrow file likewise.
    arrow = next(single.glob("*.arrow"))
    assert [t for t in iter_texts(RecordSource(str(arrow), "arrow"), FileStats(str(arrow)))] == stories[:6]


def test_memory_and_file_urls_give_the_same_corpus_as_paths(tmp_path, stories):
    folder = tmp_path / "in"
    folder.mkdir()
    lines = [json.dumps({"text": t}) + "\n" for t in stories[:12]]
    (folder / "a.jsonl").write_text("".join(lines[:6]))
    (folder / "b.jsonl").write_text("".join(lines[6:]))
    memory = fsspec.filesystem("memory")
    memory.pipe("/dapt-test/corpus/a.jsonl", "".join(lines[:6]).encode())
    memory.pipe("/dapt-test/corpus/b.jsonl", "".join(lines[6:]).encode())
    store = ArtifactStore(tmp_path / "store")
    ids = {
        "paths": ingest.run(IngestConfig(inputs=[str(folder)], validation_fraction=0.3), store),
        "file://": ingest.run(IngestConfig(inputs=[f"file://{folder}/*.jsonl"], validation_fraction=0.3), store),
        "memory:// folder": ingest.run(IngestConfig(inputs=["memory://dapt-test/corpus"], validation_fraction=0.3), store),
        "memory:// glob": ingest.run(IngestConfig(inputs=["memory://dapt-test/corpus/*.jsonl"], validation_fraction=0.3), store),
    }
    assert len(set(ids.values())) == 1  # the id is the content, wherever it is read from
    assert sorted(everything(store, ids["paths"])) == sorted(stories[:12])
    assert expand_sources(["memory://dapt-test/corpus"]) == ["memory:///dapt-test/corpus/a.jsonl", "memory:///dapt-test/corpus/b.jsonl"]
    memory.rm("/dapt-test", recursive=True)


def test_a_url_whose_backend_is_missing_is_a_config_error(tiny_config):
    tiny_config["ingest"]["inputs"] = ["nosuchproto://bucket/corpus/*.jsonl"]
    with pytest.raises(ConfigError, match=r"ingest.inputs\[0\]: nosuchproto://bucket/corpus/\*.jsonl: not a usable URL"):
        validate_config(tiny_config)


def test_txt_modes(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("first paragraph line one\nline two of it here\n\nsecond paragraph is here now\n")
    counts = {mode: len(list(read_records(path, txt_mode=mode))) for mode in ("file", "line", "paragraph")}
    assert counts == {"file": 1, "line": 4, "paragraph": 2}


def test_config_survives_a_yaml_round_trip_with_the_same_ids(tmp_path, tiny_config):
    """A config written out (as the launcher and Prefect do) and read back must plan the same ids."""
    config = validate_config(tiny_config)
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    from pretrain.configfile import load_config

    assert plan(load_config(path), until="tokens") == plan(config, until="tokens")


# --- cleaning and filters ------------------------------------------------------------------------------


def test_filters_and_pii_counts(tmp_path, stories):
    table = "Shr 1.23 dlrs vs 98 cts\nNet 12,345 vs 9,876\nRevs 123.4 mln vs 99.9 mln\n1987 1986 1985 1984 1983"
    contact = (
        stories[0] + "\nWrite to jane.doe@example.com or ops@mail.example.co.uk, call (212) 555-0199 or +44 20 7946 0958,"
        " or 212-555-0188; the server at 192.168.10.4 and 2001:db8::8a2e:370:7334 logged it at 12:30:45 on 1987-03-02."
    )
    docs = [table, " ".join(["word"] * 3000), contact, *stories[1:20]]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    store = ArtifactStore(tmp_path / "store")
    cfg = IngestConfig(inputs=[str(path)], max_words=2000, min_alpha_fraction=0.6, scrub_pii=["email", "phone", "ip"], validation_fraction=0.3)
    aid = ingest.run(cfg, store)
    m = store.manifest(aid)["metrics"]
    assert (m["low_alpha_removed"], m["long_removed"]) == (1, 1)
    assert (m["pii_email"], m["pii_phone"], m["pii_ip"]) == (2, 3, 2)
    scrubbed = next(t for t in everything(store, aid) if "<EMAIL>" in t)
    assert "Write to <EMAIL> or <EMAIL>, call <PHONE> or <PHONE>, or <PHONE>; the server at <IP> and <IP> logged it" in scrubbed
    assert "12:30:45 on 1987-03-02" in scrubbed  # times and dates are not phone numbers
    assert clean.alpha_fraction("abc 12") == 0.6 and clean.alpha_fraction("Ünïcode 1") == 7 / 8


# --- bad input: a clear message, and no partial corpus artifact ---------------------------------------


def _fails(tmp_path, cfg, match):
    store = ArtifactStore(tmp_path / "failing-store")
    with pytest.raises(InputError, match=match):
        ingest.run(cfg, store)
    assert store.ids() == []  # nothing half-built is left behind


def test_empty_corpus_and_empty_files(tmp_path, stories):
    path = tmp_path / "empty.jsonl"
    path.write_text(json.dumps({"text": "   "}) + "\n" + json.dumps({"text": "too short"}) + "\n")
    _fails(tmp_path, IngestConfig(inputs=[str(path)]), r"no documents left after cleaning .* 1 empty, 1 shorter than ingest.min_words=5")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "nothing.jsonl").write_text("")
    (tmp_path / "in" / "nothing.txt").write_text("")
    _fails(tmp_path, IngestConfig(inputs=[str(tmp_path / "in")]), r"empty files: .*nothing.jsonl, .*nothing.txt")
    (tmp_path / "in" / "good.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in stories[:8]))
    store = ArtifactStore(tmp_path / "store")
    m = store.manifest(ingest.run(IngestConfig(inputs=[str(tmp_path / "in")], validation_fraction=0.3), store))
    assert m["metrics"]["documents"] == 8
    assert [f["records"] for f in m["files_read"]] == [8, 0, 0]


def test_binary_file_is_skipped_with_a_warning(tmp_path, stories, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (folder / "utf16.txt").write_bytes("some words in UTF-16".encode("utf-16"))
    _fails(tmp_path, IngestConfig(inputs=[str(folder)]), r"every input was skipped as not text: .*image.txt \(a binary file .*utf16.txt \(UTF-16")
    (folder / "good.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in stories[:8]))
    store = ArtifactStore(tmp_path / "store")
    m = store.manifest(ingest.run(IngestConfig(inputs=[str(folder)], validation_fraction=0.3), store))
    assert m["metrics"]["documents"] == 8 and m["metrics"]["files_skipped"] == 2
    assert any("image.txt: skipped, it looks like a binary file" in r.message for r in caplog.records)


def test_bad_json_line_fails_or_is_skipped(tmp_path, stories):
    path = tmp_path / "bad.jsonl"
    good = [json.dumps({"text": t}) + "\n" for t in stories[:8]]
    path.write_text(good[0] + "{not json\n" + "".join(good[1:]) + "[1, 2]\n")
    _fails(tmp_path, IngestConfig(inputs=[str(path)]), r"bad.jsonl:2: not valid JSON .*\(ingest.on_error: skip skips such records")
    store = ArtifactStore(tmp_path / "store")
    m = store.manifest(ingest.run(IngestConfig(inputs=[str(path)], on_error="skip", validation_fraction=0.3), store))
    assert m["metrics"]["documents"] == 8 and m["metrics"]["records_skipped"] == 2
    assert [e.rsplit("/", 1)[-1] for e in m["files_read"][0]["error_examples"]] == [
        "bad.jsonl:2: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        "bad.jsonl:10: expected a JSON object per line, got list",
    ]


def test_json_array_file_says_what_it_is(tmp_path):
    path = tmp_path / "array.json"
    path.write_text(json.dumps([{"text": "a document"}, {"text": "another one"}], indent=1))
    _fails(tmp_path, IngestConfig(inputs=[str(path)]), r"array.json:1: a JSON array, not JSON Lines .*jq -c")


def test_missing_text_field_fails_or_is_skipped(tmp_path, stories):
    path = tmp_path / "fields.jsonl"
    path.write_text(json.dumps({"body": stories[0]}) + "\n" + "".join(json.dumps({"text": t}) + "\n" for t in stories[1:9]))
    _fails(tmp_path, IngestConfig(inputs=[str(path)]), r"fields.jsonl:1: no field 'text' \(fields here: 'body'\); set ingest.text_field")
    store = ArtifactStore(tmp_path / "store")
    m = store.manifest(ingest.run(IngestConfig(inputs=[str(path)], on_error="skip", validation_fraction=0.3), store))
    assert m["metrics"]["documents"] == 8 and m["metrics"]["records_skipped"] == 1
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": stories[:3]}), table)
    _fails(tmp_path, IngestConfig(inputs=[str(table)]), r"t.parquet: no column 'text' \(columns: 'body'\); set ingest.text_field")


def test_truncated_compressed_files_and_unknown_type(tmp_path, stories):
    payload = "".join(json.dumps({"text": t}) + "\n" for t in stories[:30]).encode()
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(payload)[:-300])
    _fails(tmp_path, IngestConfig(inputs=[str(path)]), r"cut.jsonl.gz: compressed stream is truncated or corrupt")
    store = ArtifactStore(tmp_path / "store")
    m = store.manifest(ingest.run(IngestConfig(inputs=[str(path)], on_error="skip", validation_fraction=0.3), store))
    assert 10 < m["metrics"]["documents_read"] < 30 and m["metrics"]["records_skipped"] == 1  # what came before the cut
    zst = tmp_path / "cut.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(payload)[:-300])
    _fails(tmp_path, IngestConfig(inputs=[str(zst)]), r"cut.jsonl.zst: compressed stream is truncated or corrupt")
    other = tmp_path / "notes.docx"
    other.write_bytes(b"PK\x03\x04")
    _fails(tmp_path, IngestConfig(inputs=[str(other)]), r"notes.docx: unsupported file type .docx")


def test_a_glob_that_matches_nothing(tmp_path, tiny_config):
    _fails(tmp_path, IngestConfig(inputs=[str(tmp_path / "nowhere" / "*.jsonl")]), r"match no file")
    tiny_config["ingest"]["inputs"] = [str(tmp_path / "nowhere" / "*.jsonl")]
    with pytest.raises(ConfigError, match=r"ingest.inputs\[0\]: '.*nowhere/\*.jsonl' matches no file"):
        validate_config(tiny_config)


def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.txt"
    path.write_text("some text that nobody may read at all")
    path.chmod(0)
    try:
        if path.open("rb"):  # running as root: permissions do not apply, nothing to test
            pytest.skip("file permissions are not enforced for this user")
    except PermissionError:
        pass
    _fails(tmp_path, IngestConfig(inputs=[str(path)]), r"locked.txt: cannot be read")


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"".join(f"Caf\xe9 prices rose sharply in quarter {i}\n".encode("latin-1") for i in range(8)))
    store = ArtifactStore(tmp_path / "store")
    aid = ingest.run(IngestConfig(inputs=[str(path)], txt_mode="line", min_words=1, validation_fraction=0.4, dedup={"near": False}), store)
    m = store.manifest(aid)
    assert m["metrics"]["invalid_utf8_lines"] == 8
    assert m["files_read"][0]["invalid_utf8_lines"] == 8
    assert all("Caf\ufffd prices" in t for t in everything(store, aid))


@pytest.mark.slow
def test_a_100_mb_file_without_newline_is_refused_in_bounded_memory(tmp_path, stories):
    big = tmp_path / "one-line.jsonl"
    chunk = ("x" * (1 << 20)).encode()
    with open(big, "wb") as f:
        f.write(b'{"text": "')
        for _ in range(100):
            f.write(chunk)
        f.write(b'"}')  # no newline anywhere in 100 MB
    _fails(tmp_path, IngestConfig(inputs=[str(big)]), r"one-line.jsonl:1: line longer than ingest.max_document_mb \(16 MiB\)")
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": t}) + "\n" for t in stories[:8]))
    store = ArtifactStore(tmp_path / "store")
    tracemalloc.start()
    try:
        aid = ingest.run(IngestConfig(inputs=[str(big), str(good)], on_error="skip", validation_fraction=0.3), store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20  # the 100 MB line was never held
    assert store.manifest(aid)["metrics"]["records_skipped"] == 1 and len(everything(store, aid)) == 8
    text = tmp_path / "one-doc.txt"
    text.write_bytes(b"word " * (4 << 20))  # 20 MB, one line, txt_mode file: one document over the limit
    _fails(tmp_path, IngestConfig(inputs=[str(text)]), r"one-doc.txt: document longer than ingest.max_document_mb")


def test_byte_ranges_tile_a_file_and_name_the_right_line(tmp_path, stories):
    """A JSONL file read as many byte ranges gives exactly its records, and errors name the file's line."""
    path = tmp_path / "many.jsonl"
    lines = [json.dumps({"text": f"{i} " + stories[i % 40]}) + "\n" for i in range(300)]
    lines[217] = "{broken\n"
    path.write_text("".join(lines))
    size = path.stat().st_size
    cuts = [0, 1, 2, 777, 778, size // 3, size // 2, size - 5, size]
    seen = []
    for a, b in zip(cuts, cuts[1:]):
        stats = FileStats(str(path), on_error="skip")
        seen += list(iter_texts(RecordSource(str(path), "jsonl", None, a, b), stats))
        if stats.errors:
            assert stats.error_examples == [f"{path}:218: not valid JSON (Expecting property name enclosed in double quotes at column 2)"]
    assert seen == [json.loads(line)["text"] for i, line in enumerate(lines) if i != 217]
