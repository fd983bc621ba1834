"""Build the bundled Gene Ontology data (biochemistry) from Debian's r-bioc-go.db package.

    python data/gene-ontology/prepare.py                       # downloads r-bioc-go.db=3.16.0-1 with apt-get
    python data/gene-ontology/prepare.py --source r-bioc-go.db_3.16.0-1_all.deb
    python data/gene-ontology/prepare.py --check               # verify the committed files

Writes, next to this script, byte-identically on every run (gzip mtime 0, sorted keys, id order):

- corpus.jsonl.gz      domain corpus: "<term name>: <definition>" of every GO term (all three
                       ontologies) that has a definition, except the task's test terms
- enzyme_train.jsonl.gz, enzyme_validation.jsonl.gz, enzyme_test.jsonl.gz
                       the task: the enzyme class of a catalytic activity from its GO definition alone
                       (the term's name is left out: it often names the class, "...dehydrogenase activity")
- SHA256SUMS           hashes of the files (and of the source package) for `--check`

Label: a molecular-function term belongs to the one of the six EC classes (oxidoreductase,
transferase, hydrolase, lyase, isomerase, ligase) whose GO term is among its is_a ancestors; terms
under none or several of them, and definitions that occur more than once, are left out. Per label,
terms are ranked by the sha256 of their GO id: the first 20% are test, the next 10 validation, the
rest train (a larger share would contain every smaller one). Standard library only.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import io
import json
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import builtfiles  # noqa: E402
import debsource  # noqa: E402

PACKAGE, VERSION = "r-bioc-go.db", "3.16.0-1"
SOURCE_SHA256 = "6cf9c43b97212811ecb7ad0d7cde12e76f984ab7494a59c02455239a9dd3243d"
DATABASE = "usr/lib/R/site-library/GO.db/extdata/GO.sqlite"
CLASSES = {  # label -> its GO term (the EC classes under "catalytic activity", GO:0003824)
    "oxidoreductase": "GO:0016491",
    "transferase": "GO:0016740",
    "hydrolase": "GO:0016787",
    "lyase": "GO:0016829",
    "isomerase": "GO:0016853",
    "ligase": "GO:0016874",
}
TEST_SHARE, VALIDATION_PER_LABEL = 0.2, 10


def gzip_jsonl(records: list[dict]) -> bytes:
    buffer = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of anything that changes between runs.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as f:
        for record in records:
            f.write((json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    return buffer.getvalue()


def rank(go_id: str) -> str:
    return hashlib.sha256(go_id.encode()).hexdigest()


def read_terms(database: bytes) -> tuple[dict[int, tuple[str, str, str, str | None]], dict[int, set[int]]]:
    """(_id -> (go id, name, ontology, definition), molecular-function _id -> its is_a parents)."""
    with tempfile.NamedTemporaryFile(suffix=".sqlite") as tmp:
        tmp.write(database)
        tmp.flush()
        db = sqlite3.connect(tmp.name)
        terms = {row[0]: tuple(row[1:]) for row in db.execute("SELECT _id, go_id, term, ontology, definition FROM go_term")}
        parents = collections.defaultdict(set)
        for child, parent, kind in db.execute("SELECT _id, _parent_id, relationship_type FROM go_mf_parents"):
            if kind == "isa":
                parents[child].add(parent)
        db.close()
    return terms, parents


def enzyme_labels(terms: dict, parents: dict[int, set[int]]) -> dict[int, str]:
    """_id -> EC class, for the molecular-function terms under exactly one class (the class terms excluded)."""
    by_go = {go_id: key for key, (go_id, *_rest) in terms.items()}
    class_of = {by_go[go]: label for label, go in CLASSES.items()}
    ancestors: dict[int, set[int]] = {}

    def up(key: int) -> set[int]:  # iterative: the ontology is deep
        stack, seen = [key], set()
        while stack:
            for parent in parents.get(stack.pop(), ()):
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return seen

    labels = {}
    for key, (_, _, ontology, _) in terms.items():
        if ontology != "MF" or key in class_of:
            continue
        ancestors[key] = up(key)
        hits = [class_of[a] for a in ancestors[key] if a in class_of]
        if len(hits) == 1:
            labels[key] = hits[0]
    return labels


def build(raw: bytes) -> dict[str, bytes]:
    terms, parents = read_terms(debsource.data_files(raw)[DATABASE])
    labels = enzyme_labels(terms, parents)
    definitions = collections.Counter((terms[k][3] or "").strip() for k in labels)
    task = collections.defaultdict(list)
    for key, label in labels.items():
        go_id, _, _, definition = terms[key]
        text = (definition or "").strip()
        if text and definitions[text] == 1:
            task[label].append({"id": go_id, "label": label, "text": text})
    train, validation, test = [], [], []
    for label in CLASSES:
        ranked = sorted(task[label], key=lambda r: rank(r["id"]))
        n_test = round(TEST_SHARE * len(ranked))
        test += ranked[:n_test]
        validation += ranked[n_test : n_test + VALIDATION_PER_LABEL]
        train += ranked[n_test + VALIDATION_PER_LABEL :]
    test_ids = {r["id"] for r in test}
    corpus = [
        {"id": go_id, "text": f"{name}: {definition.strip()}"}
        for go_id, name, _, definition in sorted(terms.values())
        if definition and definition.strip() and go_id not in test_ids
    ]
    by_id = lambda records: sorted(records, key=lambda r: r["id"])  # noqa: E731
    return {
        "corpus.jsonl.gz": gzip_jsonl(corpus),
        "enzyme_train.jsonl.gz": gzip_jsonl(by_id(train)),
        "enzyme_validation.jsonl.gz": gzip_jsonl(by_id(validation)),
        "enzyme_test.jsonl.gz": gzip_jsonl(by_id(test)),
    }


def sums(files: dict[str, bytes]) -> str:
    lines = [f"{SOURCE_SHA256}  {PACKAGE}_{VERSION}_all.deb (source)"]
    lines += [f"{hashlib.sha256(data).hexdigest()}  {name}" for name, data in sorted(files.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help=f"{PACKAGE}_{VERSION}_all.deb (default: apt-get download it)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--check", action="store_true", help="only verify the committed files are what the package builds")
    args = parser.parse_args(argv)
    files = build(debsource.source_from(args.source, PACKAGE, VERSION, SOURCE_SHA256))
    return builtfiles.write_or_check(files, args.out, args.check, f"{PACKAGE} {VERSION}", sums(files))


if __name__ == "__main__":
    sys.exit(main())
