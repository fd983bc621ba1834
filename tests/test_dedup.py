"""Deduplication: exact and near duplicates over the whole corpus, the first occurrence kept, deterministically."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH

from conftest import REUTERS, read_jsonl_gz
from pretrain import ingest
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import DedupConfig, IngestConfig
from pretrain.data import formats
from pretrain.data.clean import Cleaner
from pretrain.data.dedup import Signer


@pytest.fixture(scope="module")
def stories():
    cleaner = Cleaner(IngestConfig(inputs=["x"], strip_patterns=[r"(?i)\s*reuter\s*\x03\s*$"]))
    out = []
    for record in read_jsonl_gz(REUTERS / "corpus.jsonl.gz", limit=400):
        cleaned = cleaner(record["text"])
        if cleaned and cleaned[1] > 150 and cleaned[0] not in out:
            out.append(cleaned[0])
    assert len(out) >= 60
    return out[:60]


def near_copy(text: str, changes: int = 1) -> str:
    """The text with `changes` words replaced, evenly spread. One change in 150+ words leaves a Jaccard
    similarity of 5-word shingles above 0.93, where LSH (9 bands of 13) finds a pair 98% of the time;
    at 0.8, the threshold, it would be 40%: tests use clear cases."""
    words = text.split(" ")
    every = len(words) // changes
    return " ".join("CHANGED" if i % every == every // 2 else w for i, w in enumerate(words))


def corpus_order(store, aid):
    """The kept documents in corpus order (both splits keep it; merge them by first position)."""
    folder = store.local_dir(aid)
    return [t for s in formats.SPLITS for t in pq.read_table(folder / f"{s}.parquet").column("text").to_pylist()]


def write(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def test_exact_and_near_duplicates_keep_the_first_occurrence(tmp_path, stories):
    a, b, c = stories[0], stories[1], stories[2]
    others = stories[3:30]
    docs = [a, b, a, c, near_copy(b), *others, near_copy(a, 2), b]
    store = ArtifactStore(tmp_path / "store")
    cfg = IngestConfig(inputs=[str(write(tmp_path / "c.jsonl", docs))], validation_fraction=0.2)
    aid = ingest.run(cfg, store)
    m = store.manifest(aid)["metrics"]
    assert (m["duplicates_removed"], m["near_duplicates_removed"]) == (2, 2)
    assert sorted(corpus_order(store, aid)) == sorted([a, b, c, *others])

    # Reversed: the near copy of a now comes first and is the one kept; b still comes before its copy.
    backwards = IngestConfig(inputs=[str(write(tmp_path / "r.jsonl", docs[::-1]))], validation_fraction=0.2)
    kept = set(corpus_order(store, ingest.run(backwards, store)))
    assert near_copy(a, 2) in kept and a not in kept and b in kept and near_copy(b) not in kept


def test_near_duplicate_threshold_and_switches(tmp_path, stories):
    docs = [*stories[:30], near_copy(stories[0]), near_copy(stories[1], 12)]  # ~0.95 and ~0.5 similar
    path = write(tmp_path / "c.jsonl", docs)
    store = ArtifactStore(tmp_path / "store")
    metrics = lambda **dedup: store.manifest(ingest.run(IngestConfig(inputs=[str(path)], validation_fraction=0.3, dedup=dedup), store))["metrics"]  # noqa: E731
    assert metrics()["near_duplicates_removed"] == 1
    assert metrics(threshold=0.3)["near_duplicates_removed"] == 2
    assert metrics(near=False)["near_duplicates_removed"] == 0
    assert metrics(exact=False, near=False)["documents"] == 32


def test_deterministic_and_the_same_in_bounded_passes(tmp_path, stories, monkeypatch):
    """Dedup read in many small passes (as for a corpus larger than memory) gives the same bytes."""
    docs = [*stories, *stories[:10], *[near_copy(s) for s in stories[10:25]], *stories[40:]]
    path = write(tmp_path / "c.jsonl", docs)
    cfg = IngestConfig(inputs=[str(path)], validation_fraction=0.2)
    one = ArtifactStore(tmp_path / "one")
    first = one.manifest(ingest.run(cfg, one))
    again = ArtifactStore(tmp_path / "again")
    monkeypatch.setattr("pretrain.data.dedup._PASS_ENTRIES", 7)  # ~13 passes over 85 documents
    second = again.manifest(ingest.run(cfg, again))
    assert first["id"] == second["id"] and first["files"] == second["files"]
    assert first["metrics"]["duplicates_removed"] == 30 and first["metrics"]["near_duplicates_removed"] >= 15


def test_band_keys_find_the_same_candidates_as_datasketch(stories):
    """Our sort-based banding and datasketch's MinHashLSH index agree on which documents collide."""
    dedup = DedupConfig()
    signer = Signer(dedup)
    docs = [*stories[:30], *[near_copy(s, 1 + i % 3) for i, s in enumerate(stories[:10])]]
    keys = signer.band_keys(docs)
    ours = {(i, j) for i in range(len(docs)) for j in range(i) if (keys[i] == keys[j]).any()}
    lsh = MinHashLSH(threshold=dedup.threshold, num_perm=dedup.num_perm)
    assert (lsh.b, lsh.r) == (signer.bands, signer.rows)
    theirs = set()
    for i, doc in enumerate(docs):
        minhash = LeanMinHash(seed=1, hashvalues=signer.signature(doc), scheme="affine32")
        theirs |= {(i, j) for j in lsh.query(minhash)}
        lsh.insert(i, minhash)
    assert ours == theirs and len(ours) >= 8


def test_signature_is_datasketch_minhash_of_the_shingles(stories):
    """The one-array update_batch shortcut equals datasketch's documented one-value-at-a-time update."""
    signer = Signer(DedupConfig())
    for text in stories[:5]:
        reference = MinHash(num_perm=128, seed=1, hashfunc=int, scheme="affine32")
        reference.update_batch([int(h) for h in signer.shingles(text)])
        assert np.array_equal(signer.signature(text), reference.hashvalues)
    similar = Signer(DedupConfig()).signature
    estimate = LeanMinHash(seed=1, hashvalues=similar(stories[0]), scheme="affine32").jaccard(
        LeanMinHash(seed=1, hashvalues=similar(near_copy(stories[0])), scheme="affine32")
    )
    assert 0.75 < estimate < 1.0
