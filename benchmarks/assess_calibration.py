"""Calibrate `dapt assess`: the measured verdict (base vs adapted) at several label budgets per domain,
beside the signals assess computes for that domain.

    .venv/bin/python benchmarks/assess_calibration.py configs/gene-ontology.yaml --budgets 10 50 200
    .venv/bin/python benchmarks/assess_calibration.py configs/manpages.yaml --budgets 10 50 all
    .venv/bin/python benchmarks/assess_calibration.py configs/gene-ontology.yaml --signals   # assess's signals only

The evaluate stage runs with `evaluate.label_budgets` set to the budgets (labels per class; `all`:
the whole train split): the task's train split is cut to nested, stratified, hash-determined subsets
(`pretrain/finetuning/budgets.py`) and base and adapted are compared at each exactly as `dapt run` does (same
validation and test sets, seeds, fine-tuning protocol and verdict). Base, corpus, vocabulary, tokens
and the adapted model are the pipeline's own stages, cached in the config's store; every fine-tuning
run is an `f-` artifact, so a budget already measured costs nothing.

Prints one JSON line per budget (labels per class, the verdict, adapted - base with its interval, per
seed scores, the evaluation id) and one line with the assess signals of the domain.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrain.chain import run_stage, run_through, switched_on  # noqa: E402
from pretrain.configfile import load_config  # noqa: E402
from pretrain.core.artifacts import ArtifactStore  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)


def measure(config: str, budgets: list[str], overrides: list[str]) -> None:
    budget_list = "[" + ", ".join("null" if b == "all" else b for b in budgets) + "]"
    cfg = load_config(config, ["distill=null", *overrides, f"evaluate.label_budgets={budget_list}"])
    store = ArtifactStore(cfg.store)
    ids: dict[str, str] = {}
    started = time.perf_counter()
    for stage in ("base", "ingest", "vocab", "tokens", "pretrain"):
        ids[stage] = run_stage(stage, cfg, store, ids)
    pretrained = store.manifest(ids["pretrain"])["metrics"]
    print(json.dumps({"domain": cfg.name, "pretrain": ids["pretrain"], "seconds": round(time.perf_counter() - started, 1),
                      "word_perplexity": [pretrained.get("validation_word_perplexity_before"), pretrained.get("validation_word_perplexity_after")],
                      "cpu": cpu_model()}), flush=True)  # fmt: skip
    begun = time.perf_counter()
    evaluation = run_stage("evaluate", cfg, store, ids)
    results = json.loads((store.local_dir(evaluation) / "results.json").read_text())
    metric = results["primary_metric"]
    for entry in results["label_budgets"]:
        comparison = next(c for c in entry["comparisons"] if c["model"] == "adapted" and c["baseline"] == "base" and c["metric"] == metric)
        print(json.dumps({
            "domain": cfg.name, "budget": entry["name"], "labels_per_class": entry["class_counts"], "capped": entry["capped"],
            "verdict": comparison["verdict"], "difference": round(comparison["difference"], 4),
            "interval": [round(comparison["interval"]["low"], 4), round(comparison["interval"]["high"], 4)],
            "base": round(entry["models"]["base"]["summary"][metric]["mean"], 4), "adapted": round(entry["models"]["adapted"]["summary"][metric]["mean"], 4),
            "per_seed": [round(d, 4) for d in comparison["per_seed"]], "evaluate": evaluation, "seconds": round(time.perf_counter() - begun, 1),
        }), flush=True)  # fmt: skip


def signals(config: str, overrides: list[str]) -> None:
    """The assess stage on this config (building base, corpus, vocab and tokens if needed): one JSON line."""
    cfg = switched_on("assess", load_config(config, ["distill=null", *overrides]))
    store = ArtifactStore(cfg.store)
    started = time.perf_counter()
    aid = run_through("assess", cfg, store)["assess"]
    result = json.loads((store.local_dir(aid) / "assessment.json").read_text())
    print(json.dumps({"domain": cfg.name, "assess": aid, "signals": result["signals"], "train_per_class": result["task"]["train_per_class"],
                      "seconds": round(time.perf_counter() - started, 1), "cpu": cpu_model()}), flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--budgets", nargs="+", default=["10", "50", "all"], help="labels per class, or `all`")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--signals", action="store_true", help="only the assess stage's signals")
    args = parser.parse_args()
    if args.signals:
        signals(args.config, args.overrides)
    else:
        measure(args.config, args.budgets, args.overrides)


if __name__ == "__main__":
    main()
