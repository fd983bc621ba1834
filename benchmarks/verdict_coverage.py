"""How often the verdict is wrong: simulated comparisons with no true difference (A/A), and its power.

    .venv/bin/python benchmarks/verdict_coverage.py                       # 2,000 trials at 3, 5 and 10 seeds, A/A and +0.05
    .venv/bin/python benchmarks/verdict_coverage.py --trials 500 --seeds 5 --test-size 500
    .venv/bin/python benchmarks/verdict_coverage.py --scores --trials 20000   # per-seed differences drawn directly: fast

Each trial draws a test set and fine-tuning "runs" of two models, scores them with the evaluate
stage's own code (`scoring.example_counts`, `scoring.paired_comparison`) and records the verdict.
The runs are simulated per test example, so both sources of noise the interval must cover are real:

- the test set: `--test-size` examples drawn afresh in every trial, labels in R8's test proportions
  (8 classes, 1,043 down to 7 examples of 2,133), each with a difficulty shared by every run (models
  tend to miss the same examples);
- the seed: every run (a model and a seed) gets a skill drawn around its model's skill (`--seed-sd`
  on the logit scale; `--heavy-tails` draws it from Student's t with 3 degrees of freedom instead of a
  normal, for the occasional seed that fails), then decides each example with its own coin.

With no true difference (both models the same skill) a 95% interval should say "helped" or "hurt" in
at most 5% of trials; with a real difference of the demo's size (`--gap`, on the logit scale: 0.8
gives about +0.05 macro-F1) it should often say "helped" (how often is the power; it grows with the
seeds). Printed per number of seeds and gap, one JSON line each: the false-verdict rate and the power of the evaluate stage's interval (`seed_and_test_interval`)
and, for comparison, of the percentile bootstrap over seeds and test examples it replaced; and the
simulated spreads (standard deviation over seeds of one model's macro-F1 and of the difference, the
half-width of the test-only 95% interval), to set beside a real run's (the demo's: ± 0.040 base,
± 0.016 adapted, difference ± 0.028, test-only 95% interval ± 0.017). `--scores` asks the same of
per-seed differences drawn directly with the demo's spreads (`measure_scores`), as
`tests/test_verdict_coverage.py` does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrain.finetuning import scoring  # noqa: E402

# R8's test class counts (data/reuters/DATACARD.md): a very unbalanced task, as macro-F1 usually sees.
R8_TEST_COUNTS = np.array([1043, 660, 123, 105, 81, 65, 49, 7])
LABELS = [f"c{i}" for i in range(len(R8_TEST_COUNTS))]
# Logit of a run's chance to get an example right, before difficulty and skill: rare classes are harder
# (fewer train examples), which puts macro-F1 (about 0.77) well below accuracy (about 0.84), as in the demo
# (0.72-0.77 and 0.88-0.90). Examples differ much in difficulty (DIFFICULTY_SD, shared by every run), so
# two runs mostly miss the same examples, and the test-only interval of a difference comes out near the
# demo's in width.
CLASS_EASE = 6.6 + 1.5 * np.log(R8_TEST_COUNTS / R8_TEST_COUNTS.max())
DIFFICULTY_SD = 5.0


def draw_test_set(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and difficulties of a test set drawn from the population."""
    gold = rng.choice(len(R8_TEST_COUNTS), size=size, p=R8_TEST_COUNTS / R8_TEST_COUNTS.sum())
    return gold, rng.normal(0.0, DIFFICULTY_SD, size)


def draw_run(rng: np.random.Generator, gold: np.ndarray, difficulty: np.ndarray, skill: float) -> np.ndarray:
    """One run's predictions: right with probability sigmoid(ease + skill - difficulty), else another class (frequent ones likelier)."""
    right = rng.random(len(gold)) < 1 / (1 + np.exp(-(CLASS_EASE[gold] + skill - difficulty)))
    weights = np.broadcast_to(R8_TEST_COUNTS.astype(float), (len(gold), len(R8_TEST_COUNTS))).copy()
    weights[np.arange(len(gold)), gold] = 0
    cumulative = np.cumsum(weights / weights.sum(1, keepdims=True), axis=1)
    wrong = (rng.random((len(gold), 1)) > cumulative).sum(1)
    return np.where(right, gold, np.minimum(wrong, len(R8_TEST_COUNTS) - 1))


def seed_skills(rng: np.random.Generator, seeds: int, sd: float, heavy_tails: bool) -> np.ndarray:
    if heavy_tails:  # Student's t with 3 df, scaled to the same standard deviation
        return rng.standard_t(3, seeds) * sd / np.sqrt(3.0)
    return rng.normal(0.0, sd, seeds)


def trial(rng: np.random.Generator, seeds: int, test_size: int, gap: float, seed_sd: float, heavy_tails: bool, samples: int) -> dict:
    """One simulated comparison: model (skill `gap`) against baseline (skill 0), paired by seed, on one test set."""
    gold, difficulty = draw_test_set(rng, test_size)
    runs = {}
    for name, skill in (("model", gap), ("baseline", 0.0)):
        preds = [draw_run(rng, gold, difficulty, skill + s) for s in seed_skills(rng, seeds, seed_sd, heavy_tails)]
        counts = [scoring.example_counts("single_label", gold, p, LABELS) for p in preds]
        # The same macro-F1 as scoring.scores (tests/test_scoring.py checks it), from the counts: faster.
        values = [float(scoring.metrics_from_counts(c, np.ones((1, test_size)))["macro_f1"][0]) for c in counts]
        runs[name] = (counts, values)
    (model, model_scores), (baseline, baseline_scores) = runs["model"], runs["baseline"]
    comparison = scoring.paired_comparison(model, baseline, model_scores, baseline_scores, "macro_f1", samples, seed=int(rng.integers(2**31)))
    return {"comparison": comparison, "model_scores": model_scores, "old": old_verdict(model, baseline, samples, rng)}


def old_verdict(model: list, baseline: list, samples: int, rng: np.random.Generator) -> str:
    """The verdict of the interval used before: a percentile bootstrap drawing seeds and test examples with replacement."""
    k, n = len(model), len(model[0].total)
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(samples)]).astype(np.float64)
    per_seed = np.stack([scoring.metrics_from_counts(a, weights)["macro_f1"] - scoring.metrics_from_counts(b, weights)["macro_f1"]
                         for a, b in zip(model, baseline)], axis=1)  # fmt: skip
    both = np.take_along_axis(per_seed, rng.integers(0, k, (samples, k)), axis=1).mean(1)
    return scoring.verdict(float(np.quantile(both, 0.025)), float(np.quantile(both, 0.975)), k)


def measure(trials: int, seeds: int, test_size: int, gap: float, seed_sd: float, heavy_tails: bool, samples: int, seed: int) -> dict:
    """Share of trials with each verdict, for the current interval and the one it replaced."""
    rng = np.random.default_rng(seed)
    new, old, spreads, differences, test_errors, means = [], [], [], [], [], []
    for _ in range(trials):
        t = trial(rng, seeds, test_size, gap, seed_sd, heavy_tails, samples)
        c = t["comparison"]
        new.append(c["verdict"])
        old.append(t["old"])
        spreads.append(np.std(t["model_scores"], ddof=1))
        differences.append(c["difference_std"])
        means.append(c["difference"])
        test_errors.append((c["bootstrap"]["high"] - c["bootstrap"]["low"]) / 2)
    share = lambda verdicts, *which: float(np.mean([v in which for v in verdicts]))  # noqa: E731
    return {
        "trials": trials, "seeds": seeds, "test_size": test_size, "gap_logit": gap, "seed_sd_logit": seed_sd, "heavy_tails": heavy_tails,
        "bootstrap_samples": samples,
        "clear_verdict_rate": share(new, "helped", "hurt"), "helped_rate": share(new, "helped"), "hurt_rate": share(new, "hurt"),
        "old_clear_verdict_rate": share(old, "helped", "hurt"), "old_helped_rate": share(old, "helped"),
        "simulated_mean_difference": round(float(np.mean(means)), 4),
        "simulated_macro_f1_std_over_seeds": round(float(np.mean(spreads)), 4),
        "simulated_difference_std_over_seeds": round(float(np.mean(differences)), 4),
        "simulated_test_only_interval_half_width": round(float(np.mean(test_errors)), 4),
    }  # fmt: skip


def measure_scores(trials: int, seeds: int, difference: float, seed_sd: float, test_se: float, seed: int) -> dict:
    """The same question on per-seed differences drawn directly (`--scores`): fast, so many more trials.

    Each trial: a test-set offset shared by every seed (standard deviation `test_se`), each seed's own
    deviation (`seed_sd`), and the test variance as a 1,000-resample bootstrap would estimate it (its
    chi-square noise); then `scoring.seed_and_test_interval` and, for comparison, the percentile
    bootstrap over seeds (1,000 resamples, the test offset added to each) it replaced.
    """
    rng = np.random.default_rng(seed)
    new, old = [], []
    for _ in range(trials):
        differences = difference + rng.normal(0, test_se) + rng.normal(0, seed_sd, seeds)
        interval = scoring.seed_and_test_interval(list(differences), test_se**2 * rng.chisquare(999) / 999)
        new.append(scoring.verdict(interval["low"], interval["high"], seeds))
        resampled = differences[rng.integers(0, seeds, (1000, seeds))].mean(1) + rng.normal(0, test_se, 1000)
        old.append(scoring.verdict(*np.quantile(resampled, [0.025, 0.975]), seeds))
    share = lambda verdicts, *which: float(np.mean([v in which for v in verdicts]))  # noqa: E731
    return {
        "trials": trials, "seeds": seeds, "difference": difference, "seed_sd": seed_sd, "test_se": test_se,
        "clear_verdict_rate": share(new, "helped", "hurt"), "helped_rate": share(new, "helped"),
        "old_clear_verdict_rate": share(old, "helped", "hurt"), "old_helped_rate": share(old, "helped"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from machine import cpu_model  # benchmarks/machine.py (here, so tests can import this module from elsewhere)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 10], help="seeds per model (paired)")
    parser.add_argument("--test-size", type=int, default=2133, help="test examples per trial (R8's test set: 2,133)")
    parser.add_argument("--gap", type=float, nargs="+", default=[0.0, 0.8], help="model minus baseline skill, logit scale (0: A/A)")
    parser.add_argument("--seed-sd", type=float, default=0.3, help="standard deviation of a run's skill over seeds, logit scale")
    parser.add_argument("--heavy-tails", action="store_true", help="seed skills from Student's t (3 df) instead of a normal")
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap resamples per comparison (evaluate.bootstrap_samples)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scores", action="store_true", help="draw per-seed differences directly (the demo's spreads by default): fast")
    parser.add_argument("--difference", type=float, nargs="+", default=[0.0, 0.05], help="--scores: the true difference (0: A/A)")
    parser.add_argument("--difference-sd", type=float, default=0.028, help="--scores: standard deviation of the difference over seeds")
    parser.add_argument("--test-se", type=float, default=0.0084, help="--scores: test-sampling standard error the seeds share")
    args = parser.parse_args(argv)
    if args.scores:
        for difference in args.difference:
            for seeds in args.seeds:
                result = measure_scores(args.trials, seeds, difference, args.difference_sd, args.test_se, args.seed)
                print(json.dumps({"benchmark": "verdict_coverage_scores", **result, "cpu": cpu_model()}), flush=True)
        return 0
    for gap in args.gap:
        for seeds in args.seeds:
            started = time.perf_counter()
            result = measure(args.trials, seeds, args.test_size, gap, args.seed_sd, args.heavy_tails, args.samples, args.seed)
            print(json.dumps({"benchmark": "verdict_coverage", **result, "seconds": round(time.perf_counter() - started, 1), "cpu": cpu_model()}),
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
