"""The calibration domains' bundled data (data/gene-ontology, data/manpages) and the assess reference text:
committed files match their hashes and cards, splits are disjoint, and the scripts rebuild them byte for byte."""

import collections
import hashlib
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, read_jsonl_gz

DOMAINS = {  # folder -> (task file prefix, train/validation/test counts per label from the data card)
    "gene-ontology": ("enzyme", {
        "train": {"transferase": 1925, "oxidoreductase": 1881, "hydrolase": 1102, "lyase": 485, "ligase": 214, "isomerase": 199},
        "validation": dict.fromkeys(("transferase", "oxidoreductase", "hydrolase", "lyase", "ligase", "isomerase"), 10),
        "test": {"transferase": 484, "oxidoreductase": 473, "hydrolase": 278, "lyase": 124, "ligase": 56, "isomerase": 52},
    }),
    "manpages": ("section", {
        "train": {"library": 423, "syscall": 196, "overview": 82, "file": 37},
        "validation": dict.fromkeys(("library", "syscall", "overview", "file"), 10),
        "test": {"library": 144, "syscall": 69, "overview": 30, "file": 16},
    }),
}  # fmt: skip


@pytest.mark.parametrize("domain", DOMAINS)
def test_committed_files_match_their_hashes(domain):
    folder = ROOT / "data" / domain
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        if not name.endswith("(source)"):
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("domain", DOMAINS)
def test_splits_match_the_card_are_disjoint_and_the_test_set_is_not_in_the_corpus(domain):
    prefix, counts = DOMAINS[domain]
    folder = ROOT / "data" / domain
    splits = {split: read_jsonl_gz(folder / f"{prefix}_{split}.jsonl.gz") for split in counts}
    for split, records in splits.items():
        assert dict(collections.Counter(r["label"] for r in records)) == counts[split], split
    ids = {split: {r["id"] for r in records} for split, records in splits.items()}
    texts = {split: {r["text"] for r in records} for split, records in splits.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not ids[a] & ids[b] and not texts[a] & texts[b], (a, b)
    corpus_ids = {r["id"] for r in read_jsonl_gz(folder / "corpus.jsonl.gz")}
    assert not corpus_ids & ids["test"]  # no test text is pretrained on
    assert ids["train"] <= corpus_ids  # the domain's own text, as Reuters' corpus holds its train stories


def _check(script: str) -> subprocess.CompletedProcess:
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get is not on this machine: the scripts download their Debian packages with it")
    result = subprocess.run([sys.executable, str(ROOT / script), "--check"], capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "apt-get download" in result.stderr:
        pytest.skip(f"the Debian package could not be downloaded here: {result.stderr.strip()[:300]}")
    return result


@pytest.mark.slow
@pytest.mark.parametrize("script", ["data/gene-ontology/prepare.py", "data/manpages/prepare.py", "data/reference/prepare.py"])
def test_prepare_rebuilds_the_files_byte_identically(script):
    result = _check(script)
    assert result.returncode == 0, result.stderr
