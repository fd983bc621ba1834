"""Calibrate `dapt assess`: the measured verdict (base vs adapted) at several label budgets per domain,
beside the signals assess computes for that domain.

    .venv/bin/python benchmarks/assess_calibration.py configs/gene-ontology.yaml --budgets 10 50 200
    .venv/bin/python benchmarks/assess_calibration.py configs/manpages.yaml --budgets 10 50 all
    .venv/bin/python benchmarks/assess_calibration.py configs/gene-ontology.yaml --signals-only

For each budget (labels per class; `all`: the whole train split) the task's train split is cut to a
stratified, hash-determined subset (per label, the records ranked by the sha256 of their text, the
first N: nested, the 10 inside the 50), written under `build/calibration/`, and the evaluate stage
compares base and adapted on it exactly as `dapt run` does (same validation and test sets, seeds,
fine-tuning protocol and verdict). Base, corpus, vocabulary, tokens and the adapted model are built
once (the pipeline's own stages, cached in the config's store); every fine-tuning run is an `f-`
artifact, so a budget already measured costs nothing.

Prints one JSON line per budget (labels per class, the verdict, adapted - base with its interval, per
seed scores, the evaluation id) and one line with the assess signals of the domain.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrain.artifacts import ArtifactStore  # noqa: E402
from pretrain.config import load_config  # noqa: E402
from pretrain.io import expand_inputs  # noqa: E402
from pretrain.pipeline import run_stage  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

WORK = ROOT / "build" / "calibration"


def read_records(paths: list[str]) -> list[dict]:
    records = []
    for path in paths:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


def subset(records: list[dict], label_field: str, text_field: str, per_label: int | None) -> list[dict]:
    """Per label, the first `per_label` records ranked by the sha256 of their text (all when None)."""
    by_label = collections.defaultdict(list)
    for r in records:
        by_label[r[label_field]].append(r)
    rank = lambda r: hashlib.sha256(r[text_field].encode()).hexdigest()  # noqa: E731
    out = []
    for label in sorted(by_label):
        out += sorted(by_label[label], key=rank)[:per_label]
    return sorted(out, key=rank)


def write_subset(name: str, records: list[dict]) -> Path:
    path = WORK / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        for r in records:
            f.write((json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n").encode())
    return path


def measure(config: str, budgets: list[str], overrides: list[str]) -> None:
    cfg = load_config(config, ["distill=null", *overrides])
    store = ArtifactStore(cfg.store)
    ids: dict[str, str] = {}
    started = time.perf_counter()
    for stage in ("base", "ingest", "vocab", "tokens", "pretrain"):
        ids[stage] = run_stage(stage, cfg, store, ids)
    pretrained = store.manifest(ids["pretrain"])["metrics"]
    print(json.dumps({"domain": cfg.name, "pretrain": ids["pretrain"], "seconds": round(time.perf_counter() - started, 1),
                      "word_perplexity": [pretrained.get("validation_word_perplexity_before"), pretrained.get("validation_word_perplexity_after")],
                      "cpu": cpu_model()}), flush=True)  # fmt: skip
    task = cfg.evaluate.task
    # A validation or test text never trains: the demo's validation stories come out of R8's train split.
    held_out = {r[task.text_field] for r in read_records([str(p) for p in expand_inputs([*(task.validation_files or []), *task.test_files])])}
    records = [r for r in read_records([str(p) for p in expand_inputs(task.train_files)]) if r[task.text_field] not in held_out]
    for budget in budgets:
        per_label = None if budget == "all" else int(budget)
        chosen = subset(records, task.label_field, task.text_field, per_label)
        path = write_subset(f"{cfg.name}/train_{budget}.jsonl.gz", chosen)
        counts = collections.Counter(r[task.label_field] for r in chosen)
        run_cfg = load_config(config, ["distill=null", *overrides, f"evaluate.task.train_files=[{path}]"])
        begun = time.perf_counter()
        evaluation = run_stage("evaluate", run_cfg, store, ids)
        m = store.manifest(evaluation)["metrics"]
        results = json.loads((store.local_dir(evaluation) / "results.json").read_text())
        print(json.dumps({
            "domain": cfg.name, "budget": budget, "labels_per_class": dict(sorted(counts.items())),
            "verdict": m.get("adapted_minus_base_verdict"), "difference": m.get("adapted_minus_base"),
            "interval": [m.get("adapted_minus_base_low"), m.get("adapted_minus_base_high")],
            "base": m.get(f"base_{m['primary_metric']}_mean"), "adapted": m.get(f"adapted_{m['primary_metric']}_mean"),
            "per_seed": {name: [run["test"][m["primary_metric"]] for run in model["runs"]] for name, model in results["models"].items()},
            "evaluate": evaluation, "seconds": round(time.perf_counter() - begun, 1),
        }), flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--budgets", nargs="+", default=["10", "50", "all"], help="labels per class, or `all`")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    measure(args.config, args.budgets, args.overrides)


if __name__ == "__main__":
    main()
