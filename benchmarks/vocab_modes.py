"""Vocabulary modes compared: `keep` vs `extend` (and optionally `replace`) on the same data, budget and seeds.

    .venv/bin/python benchmarks/vocab_modes.py                       # the demo config: keep vs extend
    .venv/bin/python benchmarks/vocab_modes.py --modes keep extend replace --config my.yaml

For each mode it runs the pipeline's own stages (base to evaluate, distill too when configured) with
the config's settings and only `vocab.mode` changed, so every mode trains on the same corpus, for
the same number of steps of the same number of tokens (the same token budget; an extended
vocabulary packs about 5% more text into it), and is fine-tuned with the same seeds. Artifacts go to
the config's store, so a mode already built (e.g. by `make demo`) is a cache hit.

Per-token perplexities are not comparable across vocabularies (an extended tokenizer makes fewer,
harder predictions). The comparable figure is perplexity per *word*: on fixed validation blocks, all
tokens of whole words are masked together and the summed negative log-likelihood is divided by the
number of masked words (`validation_word_perplexity_*`, computed by the pretrain stage).

Prints one JSON line per mode, then one line comparing each mode with the first (ratios and differences).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrain.artifacts import ArtifactStore  # noqa: E402
from pretrain.config import load_config  # noqa: E402
from pretrain.pipeline import STAGES, enabled, run_stage  # noqa: E402

def run_mode(config_path: str, mode: str, overrides: list[str]) -> dict:
    cfg = load_config(config_path, [f"vocab.mode={mode}", *overrides])
    store = ArtifactStore(cfg.store)
    ids: dict[str, str] = {}
    started = time.perf_counter()
    for stage in [s for s in STAGES if enabled(s, cfg) and s != "report"]:
        ids[stage] = run_stage(stage, cfg, store, ids)
    vocab = store.manifest(ids["vocab"])["metrics"]
    trained = store.manifest(ids["pretrain"])["metrics"]
    evaluated = store.manifest(ids["evaluate"])["metrics"]
    results = json.loads((store.local_dir(ids["evaluate"]) / "results.json").read_text())
    f1 = results["models"]["adapted"]["summary"]["macro_f1"]["values"]
    base_f1 = results["models"]["base"]["summary"]["macro_f1"]["values"]
    return {
        "mode": mode,
        "model_vocab_size": vocab["model_vocab_size"],
        "added_tokens": vocab.get("added_tokens", 0),
        "tokens_per_word": vocab.get("fertility_model", vocab["fertility_base"]),
        "steps": trained["steps"],
        "tokens": trained["tokens"],
        "validation_word_perplexity_before": trained["validation_word_perplexity_before"],
        "validation_word_perplexity_after": trained["validation_word_perplexity_after"],
        "validation_token_perplexity_after": trained["validation_perplexity_after"],
        "task": evaluated["task"],
        "seeds": len(f1),
        "adapted_macro_f1_mean": round(statistics.mean(f1), 4),
        "adapted_macro_f1_std": round(statistics.stdev(f1), 4) if len(f1) > 1 else 0.0,
        "adapted_macro_f1": [round(v, 4) for v in f1],
        "base_macro_f1_mean": round(statistics.mean(base_f1), 4),
        "pretrain_artifact": ids["pretrain"],
        "evaluate_artifact": ids["evaluate"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--modes", nargs="+", default=["keep", "extend"], choices=["keep", "extend", "replace"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config overrides for every mode")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    rows = []
    for mode in args.modes:
        row = run_mode(args.config, mode, args.overrides)
        print(json.dumps(row), flush=True)
        rows.append(row)
    reference = rows[0]
    for row in rows[1:]:
        per_seed = [a - b for a, b in zip(row["adapted_macro_f1"], reference["adapted_macro_f1"])]
        print(json.dumps({
            "compare": f"{row['mode']} vs {reference['mode']}",
            "word_perplexity_ratio": round(row["validation_word_perplexity_after"] / reference["validation_word_perplexity_after"], 4),
            "macro_f1_difference_mean": round(statistics.mean(per_seed), 4),
            "macro_f1_difference_per_seed": [round(d, 4) for d in per_seed],
            "tokens_per_word_ratio": round(row["tokens_per_word"] / reference["tokens_per_word"], 4),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
