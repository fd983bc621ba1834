"""Ingest and tokens at scale: shards in processes, byte ranges, incremental re-runs, token shards."""

import json

import numpy as np
import pytest

from conftest import REUTERS, read_jsonl_gz
from pretrain import base, ingest, tokens, vocab
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import BaseModelConfig, IngestConfig, VocabConfig
from pretrain.data import formats
from pretrain.training.kit import Blocks, word_eval_batches

TRAILER = r"(?i)\s*reuter\s*\x03\s*$"


@pytest.fixture(scope="module")
def records():
    return read_jsonl_gz(REUTERS / "corpus.jsonl.gz", limit=1200)


def write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def files_of(store, aid):
    return {name: meta["sha256"] for name, meta in store.manifest(aid)["files"].items()}


@pytest.mark.slow
def test_byte_ranges_and_worker_processes_give_the_same_corpus(tmp_path, records):
    """One file cut into ~40 byte ranges and run on 2 worker processes = the file read whole, in one process."""
    folder = tmp_path / "in"
    write(folder / "a.jsonl", records[:900])
    write(folder / "b.jsonl", records[900:])
    whole = ArtifactStore(tmp_path / "whole")
    cfg = IngestConfig(inputs=[str(folder)], strip_patterns=[TRAILER], validation_fraction=0.1)
    aid = ingest.run(cfg, whole)
    assert whole.manifest(aid)["metrics"]["pieces"] == 2
    cut = ArtifactStore(tmp_path / "cut")
    sharded = cfg.model_copy(update={"parallel": cfg.parallel.model_copy(update={"workers": 2, "shard_mb": 0.02})})
    assert ingest.run(sharded, cut) == aid  # where and how it ran is not part of the id
    m = cut.manifest(aid)["metrics"]
    assert m["pieces"] > 40 and m["documents_read"] == 1200
    assert files_of(cut, aid) == files_of(whole, aid)  # byte for byte


def test_incremental_rerun_reads_only_new_and_changed_files(tmp_path, records, monkeypatch):
    folder = tmp_path / "in"
    for i in range(4):
        write(folder / f"part{i}.jsonl", records[i * 100 : (i + 1) * 100])
    store = ArtifactStore(tmp_path / "store")
    cfg = IngestConfig(inputs=[str(folder)], strip_patterns=[TRAILER], validation_fraction=0.1)
    processed = []
    original = ingest._process_piece
    monkeypatch.setattr(ingest, "_process_piece", lambda piece, *a: processed.append(piece.source.rsplit("/", 1)[-1]) or original(piece, *a))

    first = ingest.run(cfg, store)
    assert sorted(processed) == ["part0.jsonl", "part1.jsonl", "part2.jsonl", "part3.jsonl"]

    processed.clear()
    (folder / "part1.jsonl").touch()  # new stamps, same content: the same corpus, nothing read
    assert ingest.run(cfg, store) == first and processed == []

    write(folder / "part2.jsonl", records[200:300] + records[1000:1010])  # changed
    write(folder / "part4.jsonl", records[400:500])  # new
    second = ingest.run(cfg, store)
    assert second != first
    assert sorted(processed) == ["part2.jsonl", "part4.jsonl"]
    m = store.manifest(second)["metrics"]
    assert (m["pieces"], m["documents_read"]) == (5, 510)

    # The result is what a fresh run over the same files gives.
    fresh = ArtifactStore(tmp_path / "fresh")
    assert ingest.run(cfg, fresh) == second and files_of(fresh, second) == files_of(store, second)


def test_token_shards_read_back_as_one_stream(tmp_path, corpus_file, tiny_base, monkeypatch):
    store = ArtifactStore(tmp_path / "store")
    monkeypatch.setattr(ingest, "_WRITE_BATCH", 16)  # small row groups: the unit token shards are cut in
    corpus = ingest.run(IngestConfig(inputs=[str(corpus_file)], strip_patterns=[TRAILER], validation_fraction=0.1), store)
    base_id = base.run(BaseModelConfig(source=str(tiny_base)), store)
    vocab_id = vocab.run(VocabConfig(vocab_size=400, min_frequency=1), store, corpus=corpus, base=base_id)
    aid = tokens.run(None, store, corpus=corpus, vocab=vocab_id)
    one = store.local_dir(aid)
    meta = formats.load_meta(one)
    assert [len(meta["splits"][s]["shards"]) for s in ("train", "validation")] == [1, 1]

    # The same corpus cut into many shards (in another store: same id, shard size is a constant there).
    other = ArtifactStore(tmp_path / "other")
    for source in (corpus, vocab_id):
        import shutil

        shutil.copytree(store.local_dir(source), tmp_path / "other" / source)
    monkeypatch.setattr(tokens, "SHARD_BYTES", 20_000)
    assert tokens.run(None, other, corpus=corpus, vocab=vocab_id) == aid
    many = other.local_dir(aid)
    sharded = formats.load_meta(many)
    assert len(sharded["splits"]["train"]["shards"]) > 5

    for split in ("train", "validation"):
        a, b = formats.TokenStream(one, split), formats.TokenStream(many, split)
        assert len(a) == len(b) == meta["splits"][split]["tokens"] == sum(s["tokens"] for s in sharded["splits"][split]["shards"])
        assert np.array_equal(a.ids(0, len(a)), b.ids(0, len(b)))
        assert np.array_equal(a.word_starts(0, len(a)), b.word_starts(0, len(b)))
        for shard in sharded["splits"][split]["shards"]:  # each shard ends with a document's [SEP]
            assert (many / shard["ids"]).stat().st_size == 2 * shard["tokens"]
            assert np.memmap(many / shard["ids"], dtype=np.uint16, mode="r")[-1] == meta["special_ids"]["sep"]
        # blocks cut across shard boundaries are the same blocks
        x, y = Blocks(one, split, 32), Blocks(many, split, 32)
        indices = np.arange(len(x))
        assert len(x) == len(y) and np.array_equal(x.get(indices).numpy(), y.get(indices).numpy())
        assert np.array_equal(x.word_starts(indices).numpy(), y.word_starts(indices).numpy())
    assert [b[0]["input_ids"].tolist() for b in word_eval_batches(one, 32, 500, 8, 0)] == [
        b[0]["input_ids"].tolist() for b in word_eval_batches(many, 32, 500, 8, 0)
    ]
    m = other.manifest(aid)["metrics"]
    assert m["bytes_per_token"] <= 2.13  # uint16 ids + one bit per token for word starts
    assert m["shards"] == len(sharded["splits"]["train"]["shards"]) + len(sharded["splits"]["validation"]["shards"])
    assert not list((tmp_path / "other" / ".shards" / "tokens").iterdir())  # moved into the artifact, nothing left over


@pytest.mark.slow
def test_a_bad_record_in_a_worker_process_is_the_users_error(tmp_path, records):
    from pretrain.core.errors import InputError

    folder = tmp_path / "in"
    write(folder / "a.jsonl", records[:300])
    (folder / "b.jsonl").write_text(json.dumps(records[300]) + "\n" + json.dumps({"body": "no text field"}) + "\n")
    write(folder / "c.jsonl", records[301:600])
    store = ArtifactStore(tmp_path / "store")
    cfg = IngestConfig(inputs=[str(folder)], parallel={"workers": 2, "shard_mb": 0.2})
    with pytest.raises(InputError, match=r"b.jsonl:2: no field 'text' \(fields here: 'body'\)"):
        ingest.run(cfg, store)
    assert store.ids() == []
