"""Adaptation recipes compared on the same token budget, task and seeds, with the pipeline's own verdict.

    .venv/bin/python benchmarks/recipes.py                                  # keep, extend, keep+wwm on the demo
    .venv/bin/python benchmarks/recipes.py --recipes keep extend --set pretrain.max_steps=300
    .venv/bin/python benchmarks/recipes.py --recipe 'lr1e-3 vocab.mode=keep pretrain.learning_rate=1e-3' --passes 0.5

A recipe is a name and config overrides (`RECIPES` below, or `--recipe 'NAME KEY=VALUE ...'`); every
recipe also gets the `--set` overrides, so recipes differ only in their own. For each one the
pipeline's own stages build base, corpus, vocabulary, tokens and the adapted model, then the evaluate
stage fine-tunes base and adapted with every seed and compares them, exactly as `dapt run` does
(distillation and the report are left out). Every artifact is cached in the config's store, and each
fine-tuning run is its own `f-` artifact: the base model is fine-tuned once for all recipes, and a
recipe built before (by `make demo`, say) costs nothing.

`--passes P` sets the budget from the corpus: P passes over the train tokens of the first recipe's
tokens artifact, the same number of steps of the same size for every recipe (an extended vocabulary
packs ~5% more text into the same tokens).

Prints one JSON line per recipe: the budget, validation perplexity per word (comparable across
vocabularies) and per token, before and after, base and adapted scores on the task (mean, std, per
seed, best epochs), adapted - base per seed with the evaluate stage's seed-aware interval and verdict,
seconds to build, and the artifact ids.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrain.chain import plan, run_stage  # noqa: E402
from pretrain.configfile import load_config  # noqa: E402
from pretrain.core.artifacts import ArtifactStore  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

# Name -> overrides; budget, task and seeds come from the config and --set, the same for all.
RECIPES = {
    "keep": ["vocab.mode=keep"],
    "extend": ["vocab.mode=extend"],
    "keep+wwm": ["vocab.mode=keep", "pretrain.whole_word_mask=true"],
    "keep+mask25": ["vocab.mode=keep", "pretrain.mlm_probability=0.25"],
    "keep+lr1e-3": ["vocab.mode=keep", "pretrain.learning_rate=1e-3"],
}
DEFAULT_RECIPES = ["keep", "extend", "keep+wwm"]


def parse_recipe(text: str) -> tuple[str, list[str]]:
    name, *overrides = shlex.split(text)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise SystemExit(f"--recipe {text!r}: {bad[0]!r} is not KEY=VALUE")
    return name, overrides


def steps_for_passes(config: str, overrides: list[str], passes: float) -> int:
    """Optimizer steps for `passes` passes over the train tokens of this config's tokens artifact."""
    cfg = load_config(config, ["distill=null", *overrides])
    store = ArtifactStore(cfg.store)
    ids: dict[str, str] = {}
    for stage in ("base", "ingest", "vocab", "tokens"):
        ids[stage] = run_stage(stage, cfg, store, ids)
    train_tokens = store.manifest(ids["tokens"])["metrics"]["train_tokens"]
    return max(1, math.ceil(passes * train_tokens / (cfg.pretrain.global_batch_size * cfg.pretrain.max_seq_length)))


def run_recipe(config: str, name: str, overrides: list[str]) -> dict:
    cfg = load_config(config, ["distill=null", *overrides])
    store = ArtifactStore(cfg.store)
    ids: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for stage in plan(cfg, until="evaluate"):  # distill off; TAPT if the config sets it
        started = time.perf_counter()
        ids[stage] = run_stage(stage, cfg, store, ids)
        seconds[stage] = round(time.perf_counter() - started, 1)
    trained = store.manifest(ids["pretrain"])["metrics"]
    results = json.loads((store.local_dir(ids["evaluate"]) / "results.json").read_text())
    metric = results["primary_metric"]
    models = results["models"]

    def scores(model: str) -> dict:
        summary = models[model]["summary"][metric]
        runs = models[model]["runs"]
        return {
            "mean": round(summary["mean"], 4),
            "std": round(summary["std"], 4),
            "per_seed": [round(v, 4) for v in summary["values"]],
            "best_epochs": [r["best_epoch"] for r in runs],
            "epochs_trained": [r["epochs_trained"] for r in runs],
            "converged": sum(bool(r["converged"]) for r in runs),
        }

    c = next(c for c in results["comparisons"] if c["model"] == "adapted" and c["baseline"] == "base" and c["metric"] == metric)
    return {
        "recipe": name,
        "overrides": overrides,
        "budget": {"steps": trained["steps"], "tokens": trained["tokens"], "max_seq_length": cfg.pretrain.max_seq_length},
        "word_perplexity": [round(trained["validation_word_perplexity_before"], 2), round(trained["validation_word_perplexity_after"], 2)],
        "token_perplexity": [round(trained["validation_perplexity_before"], 2), round(trained["validation_perplexity_after"], 2)],
        "task": {"name": results["task"], **results["sizes"]},
        "metric": metric,
        "seeds": results["seeds"],
        "base": scores("base"),
        "adapted": scores("adapted"),
        "adapted_minus_base": {
            "mean": round(c["difference"], 4),
            "per_seed": [round(d, 4) for d in c["per_seed"]],
            "better_in_seeds": c["better_in_seeds"],
            "interval": [round(c["interval"]["low"], 4), round(c["interval"]["high"], 4)],
            "verdict": c["verdict"],
        },
        "seconds": seconds,
        "artifacts": {k: ids[k] for k in ("vocab", "pretrain", "evaluate")},
        "cpu": cpu_model(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--recipes", nargs="+", default=None, choices=sorted(RECIPES), help=f"built-in recipes (default {DEFAULT_RECIPES})")
    parser.add_argument("--recipe", action="append", default=[], metavar="'NAME KEY=VALUE ...'", help="a recipe of your own (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config overrides for every recipe")
    parser.add_argument("--passes", type=float, default=None, help="budget: this many passes over the first recipe's train tokens")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    chosen = [(n, RECIPES[n]) for n in args.recipes or ([] if args.recipe else DEFAULT_RECIPES)] + [parse_recipe(r) for r in args.recipe]
    overrides = list(args.overrides)
    if args.passes is not None:
        steps = steps_for_passes(args.config, [*chosen[0][1], *overrides], args.passes)
        overrides.append(f"pretrain.max_steps={steps}")
    for name, own in chosen:
        print(json.dumps(run_recipe(args.config, name, [*own, *overrides])), flush=True)


if __name__ == "__main__":
    main()
