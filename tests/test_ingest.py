import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import read_jsonl_gz
from pretrain import ingest
from pretrain.artifacts import ArtifactStore
from pretrain.config import IngestConfig
from pretrain.errors import InputError
from pretrain.io import read_records

TRAILER = r"(?i)\s*reuter\s*\x03\s*$"


def texts(store, aid):
    folder = store.local_dir(aid)
    return {s: pq.read_table(folder / f"{s}.parquet").column("text").to_pylist() for s in ingest.SPLITS}


def test_real_reuters_slice(tmp_path, corpus_file):
    store = ArtifactStore(tmp_path / "store")
    cfg = IngestConfig(inputs=[str(corpus_file)], strip_patterns=[TRAILER], validation_fraction=0.1)
    aid = ingest.run(cfg, store)
    m = store.manifest(aid)["metrics"]
    assert m["documents_read"] == 402
    assert m["duplicates_removed"] >= 2  # the fixture repeats two stories
    assert m["documents"] == m["train_documents"] + m["validation_documents"] == 402 - m["duplicates_removed"] - m["short_removed"] - m["empty_removed"]
    out = texts(store, aid)
    everything = out["train"] + out["validation"]
    assert len(everything) == len(set(everything))
    assert not any("\x03" in t or t.lower().endswith("reuter") for t in everything)
    assert 0.03 < len(out["validation"]) / len(everything) < 0.2
    assert ingest.run(cfg, store) == aid  # second run: found, not rebuilt
    assert ingest.stage_id(cfg) == aid


def test_split_is_by_content_not_order(tmp_path, corpus_file):
    records = read_jsonl_gz(corpus_file)
    reversed_file = tmp_path / "reversed.jsonl"
    reversed_file.write_text("".join(json.dumps(r) + "\n" for r in reversed(records)))
    store = ArtifactStore(tmp_path / "store")
    a = texts(store, ingest.run(IngestConfig(inputs=[str(corpus_file)], validation_fraction=0.1), store))
    b = texts(store, ingest.run(IngestConfig(inputs=[str(reversed_file)], validation_fraction=0.1), store))
    assert set(a["validation"]) == set(b["validation"])
    assert set(a["train"]) == set(b["train"])


def test_cleaning():
    cfg = IngestConfig(inputs=["x"], strip_patterns=[TRAILER])
    raw = "Cafe\u0301 prices\r\nrose  4 pct\x07 \u200b today.\n\n\n\n   Second\tparagraph.\n Reuter\n\x03"
    assert ingest.clean_text(raw, cfg, [__import__("re").compile(TRAILER)]) == "Café prices\nrose 4 pct today.\n\nSecond paragraph."


def test_every_format_and_directories_and_globs(tmp_path):
    docs = [f"document number {i} about oil prices and shipping rates" for i in range(6)]
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(docs[0])
    (folder / "b.jsonl").write_text(json.dumps({"body": docs[1]}) + "\n\n" + json.dumps({"body": docs[2]}) + "\n")
    with gzip.open(folder / "sub" / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"body": docs[3]}) + "\n")
    (folder / "sub" / "d.csv").write_text('id,body\n1,"' + docs[4] + '"\n')
    pq.write_table(pa.table({"body": [docs[5], None]}), folder / "sub" / "e.parquet")
    store = ArtifactStore(tmp_path / "store")
    cfg = IngestConfig(inputs=[str(folder)], text_field="body", validation_fraction=0.3)
    m = store.manifest(ingest.run(cfg, store))
    assert m["metrics"]["documents"] == 6 and m["metrics"]["empty_removed"] == 1
    assert len(m["sources"]) == 5
    glob_cfg = IngestConfig(inputs=[str(tmp_path / "in" / "**" / "*.jsonl*")], text_field="body", validation_fraction=0.3)
    assert store.manifest(ingest.run(glob_cfg, store))["metrics"]["documents_read"] == 3


def test_txt_modes(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("first paragraph line one\nline two of it here\n\nsecond paragraph is here now\n")
    counts = {mode: len(list(read_records(path, txt_mode=mode))) for mode in ("file", "line", "paragraph")}
    assert counts == {"file": 1, "line": 4, "paragraph": 2}


def _fails(tmp_path, cfg, match):
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(InputError, match=match):
        ingest.run(cfg, store)
    assert store.ids() == []  # nothing half-built is left behind


def test_empty_corpus(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text(json.dumps({"text": "   "}) + "\n" + json.dumps({"text": "too short"}) + "\n")
    _fails(tmp_path, IngestConfig(inputs=[str(path)]), r"no documents left after cleaning .* 1 empty, 1 shorter than ingest.min_words=5")


def test_binary_file(tmp_path):
    path = tmp_path / "image.txt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    _fails(tmp_path, IngestConfig(inputs=[str(path)]), r"image.txt: looks like a binary file")


def test_bad_json_line_and_missing_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "a fine document with enough words"}) + "\n{not json\n")
    _fails(tmp_path, IngestConfig(inputs=[str(path)]), r"bad.jsonl:2: not valid JSON")
    path.write_text(json.dumps({"body": "a fine document with enough words"}) + "\n")
    _fails(tmp_path, IngestConfig(inputs=[str(path)]), r"bad.jsonl:1: no field 'text' \(fields here: 'body'\); set ingest.text_field")


def test_truncated_gzip_and_unknown_type(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps({"text": "word " * 50}) + "\n").encode() * 200)[:-40])
    _fails(tmp_path, IngestConfig(inputs=[str(path)]), r"cut.jsonl.gz: compressed stream is truncated or corrupt")
    other = tmp_path / "notes.docx"
    other.write_bytes(b"PK\x03\x04")
    _fails(tmp_path, IngestConfig(inputs=[str(other)]), r"notes.docx: unsupported file type .docx")


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
    m = store.manifest(ingest.run(IngestConfig(inputs=[str(path)], txt_mode="line", min_words=1, validation_fraction=0.4), store))
    assert m["metrics"]["invalid_utf8_lines"] == 8
    assert m["files_read"][0]["invalid_utf8_lines"] == 8
