"""Build the bundled Reuters demo data from the Reuters-21578 JSONL file.

    python data/reuters/prepare.py --source ../shared/datasets/reuters-21578/reuters21578.jsonl.gz

Writes, next to this script, byte-identically on every run (gzip mtime 0, sorted keys, id order):

- corpus.jsonl.gz    domain corpus: the raw body of every document that is NOT in the R8 test split
                     (the ` Reuter\\n\\x03` trailer is left in; the ingest stage strips it by config)
- r8_train.jsonl.gz  R8 task, train split (date before 1987-04-08)
- r8_test.jsonl.gz   R8 task, test split (date on/after 1987-04-08)
- r8_few_train.jsonl.gz, r8_few_validation.jsonl.gz
                     low-resource R8 (the demo's task): 10 train and 10 other validation stories per
                     label, taken from r8_train; the test split stays whole
- r8_train_rest.jsonl.gz
                     r8_train without the r8_few_validation stories: the whole train split for the
                     demo's validation set (configs/demo-budgets.yaml, a label-budget curve)
- SHA256SUMS         hashes of the files (and of the source) for `--check`

The low-resource split ranks each label's train stories by the sha256 of their id and takes the first
10 for train and the next 10 for validation: the choice depends on the records alone, and a larger
split would contain every smaller one.

R8: documents with a body and exactly one topic, that topic one of
earn, acq, crude, trade, money-fx, interest, ship, grain (DATACARD.md).
Standard library only, so it runs without the project installed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import io
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import builtfiles  # noqa: E402

SOURCE_SHA256 = "f63a6a1e2260f33a16d89a5b819622d9ac470bb2538949c1e1722a15570066c6"
R8_LABELS = ("earn", "acq", "crude", "trade", "money-fx", "interest", "ship", "grain")
TEST_FROM = dt.date(1987, 4, 8)
TRAILER = re.compile(r"\s*reuter\s*\x03\s*$", re.IGNORECASE)
FEW_PER_LABEL = 10


def parse_day(date: str) -> dt.date:
    # One record has a malformed time ("31-MAR-1987 605:12:19.12"): only the day matters.
    return dt.datetime.strptime(date.strip().split()[0], "%d-%b-%Y").date()


def r8_label(doc: dict) -> str | None:
    topics = doc.get("topics") or []
    if "body" in doc and len(topics) == 1 and topics[0] in R8_LABELS:
        return topics[0]
    return None


def task_text(body: str) -> str:
    return TRAILER.sub("", body).strip()


def gzip_jsonl(records: list[dict]) -> bytes:
    buffer = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of anything that changes between runs.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as f:
        for record in records:
            f.write((json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    return buffer.getvalue()


def few_per_label(records: list[dict], per_label: int) -> tuple[list[dict], list[dict]]:
    """(train, validation): per label, the first `per_label` records by sha256 of the id, then the next `per_label`."""
    rank = lambda r: hashlib.sha256(r["id"].encode()).hexdigest()  # noqa: E731
    train, validation = [], []
    for label in R8_LABELS:
        ranked = sorted((r for r in records if r["label"] == label), key=rank)
        train += ranked[:per_label]
        validation += ranked[per_label : 2 * per_label]
    return sorted(train, key=rank), sorted(validation, key=rank)


def build(source: Path) -> dict[str, bytes]:
    raw = source.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{source}: sha256 {digest} is not the one DATACARD.md names ({SOURCE_SHA256})")
    docs = [json.loads(line) for line in gzip.decompress(raw).decode("utf-8").splitlines() if line.strip()]
    docs.sort(key=lambda d: int(d["id"]))

    corpus, train, test = [], [], []
    for doc in docs:
        label = r8_label(doc)
        is_test = label is not None and parse_day(doc["date"]) >= TEST_FROM
        if label is not None:
            record = {"id": doc["id"], "date": doc["date"].strip(), "label": label, "text": task_text(doc["body"])}
            (test if is_test else train).append(record)
        if "body" in doc and not is_test:
            corpus.append({"id": doc["id"], "text": doc["body"]})
    few_train, few_validation = few_per_label(train, FEW_PER_LABEL)
    held = {r["id"] for r in few_validation}
    rest = [r for r in train if r["id"] not in held]
    return {
        "corpus.jsonl.gz": gzip_jsonl(corpus),
        "r8_train.jsonl.gz": gzip_jsonl(train),
        "r8_test.jsonl.gz": gzip_jsonl(test),
        "r8_few_train.jsonl.gz": gzip_jsonl(few_train),
        "r8_few_validation.jsonl.gz": gzip_jsonl(few_validation),
        "r8_train_rest.jsonl.gz": gzip_jsonl(rest),
    }


def sums(files: dict[str, bytes]) -> str:
    lines = [f"{SOURCE_SHA256}  reuters21578.jsonl.gz (source)"]
    lines += [f"{hashlib.sha256(data).hexdigest()}  {name}" for name, data in sorted(files.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="reuters21578.jsonl.gz")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--check", action="store_true", help="only verify the committed files are what --source builds")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        raise SystemExit(f"--source {args.source}: no such file (see data/reuters/DATACARD.md for where it comes from)")

    files = build(args.source)
    return builtfiles.write_or_check(files, args.out, args.check, str(args.source), sums(files))


if __name__ == "__main__":
    sys.exit(main())
