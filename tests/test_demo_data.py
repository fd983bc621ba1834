import hashlib
import subprocess
import sys

import pytest

from conftest import REUTERS, ROOT, read_jsonl_gz

SOURCE = ROOT.parent / "shared" / "datasets" / "reuters-21578" / "reuters21578.jsonl.gz"


def test_committed_files_match_their_hashes():
    for line in (REUTERS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        if name.endswith("(source)"):
            continue
        assert hashlib.sha256((REUTERS / name).read_bytes()).hexdigest() == digest, name


def test_r8_split_matches_the_data_card():
    train = read_jsonl_gz(REUTERS / "r8_train.jsonl.gz")
    test = read_jsonl_gz(REUTERS / "r8_test.jsonl.gz")
    assert (len(train), len(test)) == (5086, 2133)
    counts = {}
    for record in test:
        counts[record["label"]] = counts.get(record["label"], 0) + 1
    assert counts == {"earn": 1043, "acq": 660, "crude": 123, "trade": 105, "money-fx": 81, "interest": 65, "ship": 49, "grain": 7}
    corpus_ids = {r["id"] for r in read_jsonl_gz(REUTERS / "corpus.jsonl.gz")}
    assert not corpus_ids & {r["id"] for r in test}  # no test text is seen in pretraining
    assert {r["id"] for r in train} <= corpus_ids


def test_low_resource_split_takes_ten_of_each_label_from_train_for_each_side():
    train_ids = {r["id"] for r in read_jsonl_gz(REUTERS / "r8_train.jsonl.gz")}
    few_train = read_jsonl_gz(REUTERS / "r8_few_train.jsonl.gz")
    few_validation = read_jsonl_gz(REUTERS / "r8_few_validation.jsonl.gz")
    for records in (few_train, few_validation):
        labels = [r["label"] for r in records]
        assert {label: labels.count(label) for label in set(labels)} == dict.fromkeys(
            ("earn", "acq", "crude", "trade", "money-fx", "interest", "ship", "grain"), 10
        )
        assert {r["id"] for r in records} <= train_ids
    assert not {r["id"] for r in few_train} & {r["id"] for r in few_validation}


def test_the_rest_of_train_is_train_without_the_low_resource_validation_stories():
    train = read_jsonl_gz(REUTERS / "r8_train.jsonl.gz")
    held = {r["id"] for r in read_jsonl_gz(REUTERS / "r8_few_validation.jsonl.gz")}
    assert read_jsonl_gz(REUTERS / "r8_train_rest.jsonl.gz") == [r for r in train if r["id"] not in held]  # same records, same order


@pytest.mark.slow
@pytest.mark.skipif(not SOURCE.is_file(), reason="the Reuters-21578 source file is not on this machine")
def test_prepare_regenerates_the_files_byte_identically():
    result = subprocess.run(
        [sys.executable, str(REUTERS / "prepare.py"), "--source", str(SOURCE), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
