"""Scores of one run on one split, multi-label thresholds, and the paired comparison of two models.

Predictions and gold take one form per task type:
- `single_label`: class ids, shape (n,);
- `multi_label`: boolean indicator matrices, shape (n, labels);
- `token`: one list of tag strings per sentence (word level).

Metrics come from scikit-learn and seqeval. The paired bootstrap needs thousands of re-scorings, so it
works on per-example counts (true/false positives and negatives per class, correct and total units)
that add up to exactly the same micro/macro-F1 and accuracy; `tests/test_scoring.py` checks that they
agree with scikit-learn and seqeval on the full test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("accuracy", "macro_f1", "micro_f1")
# Multi-label decision thresholds tried on validation for each label.
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def entity_types(tags: list[str]) -> list[str]:
    """The entity types of a BIO tag set: B-PER, I-PER, O -> [PER]."""
    return sorted({t[2:] for t in tags if t != "O"})


def scores(kind: str, gold, pred, labels: list[str], tag_scheme: str = "BIO", detail: bool = False) -> dict:
    """accuracy, macro_f1, micro_f1 (and, with detail, per-class P/R/F1/support and a confusion matrix).

    Macro-F1 averages over the classes that occur in gold or predictions (as scikit-learn and seqeval do
    without an explicit label list), so a class absent from a split neither helps nor hurts.
    Token tasks with BIO tags are scored per entity (seqeval, conlleval rules); accuracy is per word.
    """
    # Imported here, not with the module: scikit-learn pulls in SciPy and pandas, seconds at every start
    # of `dapt` and of each stage process, most of which score nothing.
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, multilabel_confusion_matrix, precision_recall_fscore_support

    if kind == "token" and tag_scheme == "BIO":
        return _entity_scores(gold, pred, labels, detail)
    if kind == "token":  # plain tags (POS): every word is one single-label decision
        ids = {tag: i for i, tag in enumerate(labels)}
        gold = np.array([ids[t] for sentence in gold for t in sentence], dtype=np.int64)
        pred = np.array([ids[t] for sentence in pred for t in sentence], dtype=np.int64)
        kind = "single_label"
    if kind == "single_label":
        present = sorted(set(gold.tolist()) | set(pred.tolist()))
        out = {
            "accuracy": float(accuracy_score(gold, pred)),
            "macro_f1": float(f1_score(gold, pred, labels=present, average="macro", zero_division=0)),
            "micro_f1": float(f1_score(gold, pred, labels=present, average="micro", zero_division=0)),
        }
        if detail:
            everything = list(range(len(labels)))
            p, r, f, s = precision_recall_fscore_support(gold, pred, labels=everything, zero_division=0)
            out["per_class"] = _per_class(labels, p, r, f, s)
            out["confusion"] = {"labels": labels, "matrix": confusion_matrix(gold, pred, labels=everything).tolist()}
        return out
    # multi_label
    present = [k for k in range(len(labels)) if gold[:, k].any() or pred[:, k].any()]
    out = {
        "accuracy": float(accuracy_score(gold, pred)),  # exact match of the whole label set
        "macro_f1": float(f1_score(gold, pred, labels=present, average="macro", zero_division=0)) if present else 0.0,
        "micro_f1": float(f1_score(gold, pred, average="micro", zero_division=0)),
    }
    if detail:
        p, r, f, s = precision_recall_fscore_support(gold, pred, labels=list(range(len(labels))), zero_division=0)
        out["per_class"] = _per_class(labels, p, r, f, s)
        # One 2x2 matrix per label: [[tn, fp], [fn, tp]]
        out["confusion"] = {"labels": labels, "per_label": multilabel_confusion_matrix(gold, pred).tolist()}
    return out


def _entity_scores(gold: list[list[str]], pred: list[list[str]], labels: list[str], detail: bool) -> dict:
    from seqeval.metrics import accuracy_score as word_accuracy
    from seqeval.metrics import classification_report
    from seqeval.metrics import f1_score as entity_f1
    from sklearn.metrics import confusion_matrix

    out = {
        "accuracy": float(word_accuracy(gold, pred)),
        "macro_f1": float(entity_f1(gold, pred, average="macro", zero_division=0)),
        "micro_f1": float(entity_f1(gold, pred, average="micro", zero_division=0)),
    }
    if detail:
        report = classification_report(gold, pred, output_dict=True, zero_division=0)
        # Every entity type of the tag set, also those absent from this run (seqeval lists only present ones).
        absent = {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
        out["per_class"] = {
            name: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]), "support": int(v["support"])}
            for name, v in ((t, report.get(t, absent)) for t in entity_types(labels))
        }
        micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0})
        out["precision"], out["recall"] = float(micro["precision"]), float(micro["recall"])
        tags = sorted({t for sentence in gold + pred for t in sentence}, key=_tag_order)
        flat_gold = [t for sentence in gold for t in sentence]
        flat_pred = [t for sentence in pred for t in sentence]
        out["confusion"] = {"labels": tags, "matrix": confusion_matrix(flat_gold, flat_pred, labels=tags).tolist()}
    return out


def _tag_order(tag: str) -> tuple:
    return (tag != "O", tag[2:], tag[:2])


def _per_class(labels: list[str], p, r, f, s) -> dict:
    return {
        label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, label in enumerate(labels)
    }


def to_plain(kind: str, value) -> list:
    """Gold or predictions as JSON: class ids, the label ids of each example (multi-label), or tag lists."""
    if kind == "multi_label":
        return [np.flatnonzero(row).tolist() for row in np.asarray(value, dtype=bool)]
    if kind == "single_label":
        return np.asarray(value).tolist()
    return [list(tags) for tags in value]


def from_plain(kind: str, value: list, n_labels: int):
    """`to_plain`'s inverse: the form `scores` and `example_counts` take."""
    if kind == "multi_label":
        matrix = np.zeros((len(value), n_labels), dtype=bool)
        for i, ids in enumerate(value):
            matrix[i, ids] = True
        return matrix
    if kind == "single_label":
        return np.asarray(value, dtype=np.int64)
    return [list(tags) for tags in value]


def tune_thresholds(probabilities: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Per-label decision thresholds that maximise each label's F1 on validation.

    A label with no positive validation example keeps 0.5 (nothing to tune on); ties go to the
    threshold closest to 0.5, so a flat optimum does not drift to an extreme.
    """
    decided = probabilities[:, None, :] >= THRESHOLD_GRID[None, :, None]  # (n, grid, labels)
    truth = gold[:, None, :].astype(bool)
    tp = (decided & truth).sum(0)
    fp = (decided & ~truth).sum(0)
    fn = (~decided & truth).sum(0)
    f1 = np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    # Among the best thresholds of each label, the one nearest 0.5.
    closeness = -np.abs(THRESHOLD_GRID - 0.5)[:, None]
    best = np.lexsort((np.broadcast_to(closeness, f1.shape), f1), axis=0)[-1]
    thresholds = THRESHOLD_GRID[best]
    thresholds[~truth.any(0)[0]] = 0.5
    return thresholds


# --- the paired comparison ---------------------------------------------------------------------------


@dataclass
class Counts:
    """Per-example sufficient statistics: summed over any (re)sample they give that sample's metrics."""

    tp: np.ndarray  # (n, classes)
    fp: np.ndarray
    fn: np.ndarray
    correct: np.ndarray  # (n,) correct units (examples, or words for token tasks)
    total: np.ndarray  # (n,) units


def example_counts(kind: str, gold, pred, labels: list[str], tag_scheme: str = "BIO") -> Counts:
    if kind == "single_label":
        k = len(labels)
        g, p = np.eye(k, dtype=np.int64)[gold].astype(bool), np.eye(k, dtype=np.int64)[pred].astype(bool)
        return Counts(g & p, ~g & p, g & ~p, (gold == pred).astype(np.int64), np.ones(len(gold), dtype=np.int64))
    if kind == "multi_label":
        g, p = gold.astype(bool), pred.astype(bool)
        return Counts(g & p, ~g & p, g & ~p, (g == p).all(1).astype(np.int64), np.ones(len(g), dtype=np.int64))
    correct = np.array([sum(a == b for a, b in zip(gs, ps)) for gs, ps in zip(gold, pred)], dtype=np.int64)
    total = np.array([len(gs) for gs in gold], dtype=np.int64)
    if tag_scheme != "BIO":
        ids = {tag: i for i, tag in enumerate(labels)}
        shape = (len(gold), len(labels))
        tp, fp, fn = np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape, np.int64)
        for i, (gs, ps) in enumerate(zip(gold, pred)):
            for a, b in zip(gs, ps):
                if a == b:
                    tp[i, ids[a]] += 1
                else:
                    fn[i, ids[a]] += 1
                    fp[i, ids[b]] += 1
        return Counts(tp, fp, fn, correct, total)
    from seqeval.metrics.sequence_labeling import get_entities

    types = entity_types(labels)
    index = {t: i for i, t in enumerate(types)}
    shape = (len(gold), len(types))
    tp, fp, fn = np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for i, (gs, ps) in enumerate(zip(gold, pred)):
        true, found = set(get_entities(gs)), set(get_entities(ps))
        for entity_type, *_ in true & found:
            tp[i, index[entity_type]] += 1
        for entity_type, *_ in found - true:
            fp[i, index[entity_type]] += 1
        for entity_type, *_ in true - found:
            fn[i, index[entity_type]] += 1
    return Counts(tp, fp, fn, correct, total)


def metrics_from_counts(counts: Counts, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric for every row of `weights` (resamples x examples: how often each example is drawn)."""
    tp, fp, fn = (weights @ m.astype(np.float64) for m in (counts.tp, counts.fp, counts.fn))
    present = (tp + fp + fn) > 0
    per_class = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-12), 0.0)
    macro = per_class.sum(1) / np.maximum(present.sum(1), 1)
    micro_tp, micro_rest = tp.sum(1), (fp + fn).sum(1)
    micro = np.where(micro_tp > 0, 2 * micro_tp / np.maximum(2 * micro_tp + micro_rest, 1e-12), 0.0)
    accuracy = (weights @ counts.correct) / np.maximum(weights @ counts.total, 1)
    return {"accuracy": accuracy, "macro_f1": macro, "micro_f1": micro}


# A verdict ("helped", "hurt") needs at least this many seeds: with fewer, the differences between seeds
# cannot show how much another seed would move the difference.
MIN_SEEDS_FOR_VERDICT = 3
VERDICTS = ("helped", "hurt", "no clear difference", "no verdict")


def interval_method(samples: int, confidence: float = 0.95) -> str:
    """One sentence saying how the verdict's interval is computed (the report quotes it)."""
    return (
        f"The {confidence:.0%} interval is a t-interval on the mean of the per-seed differences whose variance adds two parts: "
        "the seed-to-seed variance of the differences (over the number of seeds) and the test-sampling variance the seeds share "
        f"(from a paired bootstrap over test examples, {samples:,} resamples, the same draw for both models and every seed); "
        "Student's t on seeds − 1 degrees of freedom keeps its coverage with as few as 3 seeds. "
        f"A verdict needs it to exclude 0 and at least {MIN_SEEDS_FOR_VERDICT} seeds."
    )


def verdict(low: float, high: float, seeds: int) -> str:
    """`helped` or `hurt` when the interval excludes 0 (with enough seeds), else `no clear difference` or `no verdict`."""
    if seeds < MIN_SEEDS_FOR_VERDICT:
        return "no verdict"
    return "helped" if low > 0 else "hurt" if high < 0 else "no clear difference"


def seed_and_test_interval(differences: list[float], test_variance: float, confidence: float = 0.95) -> dict:
    """The verdict's interval for the mean of per-seed differences (model − baseline, one per seed).

    Two things would move the mean on a rerun: other seeds and another test set. Their variances add:
    `s²/k` (s: the standard deviation of the k differences, n − 1 in the denominator; it holds each
    seed's own luck on these test examples too) and `test_variance`, the part of the test-sampling
    variance that every seed shares (`shared_test_variance`). The quantile is Student's t on k − 1
    degrees of freedom: the seed part is estimated from k values, the test part from thousands of
    examples, and the Welch-Satterthwaite degrees of freedom of the sum are never fewer than k − 1; so
    the interval is never narrower than the paired t-interval over seeds alone (whose verdict it cannot
    contradict) and keeps its coverage at 3-10 seeds, where a percentile bootstrap over seeds is too
    narrow (it drops the k/(k − 1) factor and the t tails). With one seed the seed part is unknown: the
    interval is the test part alone (normal quantile) and `verdict` gives none.
    """
    from scipy import stats

    k = len(differences)
    mean = float(np.mean(differences))
    seed_variance = float(np.var(differences, ddof=1)) / k if k > 1 else 0.0
    standard_error = float(np.sqrt(seed_variance + max(test_variance, 0.0)))
    degrees = k - 1 if k > 1 else float("inf")
    quantile = float(stats.t.ppf(0.5 + confidence / 2, degrees))
    p_value = float(2 * stats.t.sf(abs(mean) / standard_error, degrees)) if standard_error > 0 else (1.0 if mean == 0 else 0.0)
    return {
        "low": mean - quantile * standard_error,
        "high": mean + quantile * standard_error,
        "standard_error": standard_error,
        "seed_standard_error": float(np.sqrt(seed_variance)),
        "test_standard_error": float(np.sqrt(max(test_variance, 0.0))),
        "degrees_of_freedom": k - 1 if k > 1 else None,
        "t_quantile": quantile,
        "p_value": p_value,
    }


def shared_test_variance(per_seed: np.ndarray) -> float:
    """The test-sampling variance of a seed-averaged difference that more seeds would not average away.

    `per_seed` (resamples x seeds): each seed's difference on each bootstrap resample of the test
    examples. A seed's variance over resamples is the shared part (how lucky this test set is for the
    model) plus the seed's own luck on these examples; the second already shows in the spread between
    seeds (`seed_and_test_interval`'s s²), and counting it twice would make the interval needlessly
    wide. The covariance between two seeds' differences holds the shared part alone: its mean over
    pairs of seeds (never below 0). One seed: its whole variance.
    """
    k = per_seed.shape[1]
    if k < 2:
        return float(np.var(per_seed[:, 0], ddof=1))
    covariance = np.cov(per_seed, rowvar=False)
    return max(float((covariance.sum() - np.trace(covariance)) / (k * (k - 1))), 0.0)


def paired_comparison(
    model: list[Counts], baseline: list[Counts], model_scores: list[float], baseline_scores: list[float],
    metric: str, samples: int, confidence: float = 0.95, seed: int = 0,
) -> dict:  # fmt: skip
    """Model minus baseline on one metric: per seed, the verdict's interval, and two secondary figures.

    Runs are paired by seed (same seed: same head initialisation and data order for both models), and
    the two lists are in the same seed order. `interval` (with `verdict`) covers seed variance and test
    sampling together (`seed_and_test_interval`): the test part comes from resamples of the test
    examples (the same examples for both models and every seed), `shared_test_variance`. Secondary: a
    paired t-test over seeds (seed variance only), and `bootstrap`, the test-only percentile interval
    of the seed-averaged difference from the same resamples: how much it could move with another test
    set, not with another seed.
    """
    from scipy import stats

    if len(model) != len(baseline):
        raise ValueError(f"paired runs needed: {len(model)} model runs vs {len(baseline)} baseline runs")
    differences = [a - b for a, b in zip(model_scores, baseline_scores)]
    k, n = len(model), len(model[0].total)
    rng = np.random.default_rng(seed)
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(samples)]).astype(np.float64)
    # (samples, seeds): each seed's paired difference on each test resample.
    per_seed = np.stack([metrics_from_counts(a, weights)[metric] - metrics_from_counts(b, weights)[metric] for a, b in zip(model, baseline)], axis=1)
    test_only = per_seed.mean(1)
    interval = seed_and_test_interval(differences, shared_test_variance(per_seed), confidence)
    tail = (1 - confidence) / 2
    p_value = None
    if len(differences) > 1 and np.ptp(differences) > 0:
        p_value = float(stats.ttest_rel(model_scores, baseline_scores).pvalue)
    return {
        "metric": metric,
        "difference": float(np.mean(differences)),
        "difference_std": float(np.std(differences, ddof=1)) if len(differences) > 1 else 0.0,
        "per_seed": [float(d) for d in differences],
        "better_in_seeds": int(sum(d > 0 for d in differences)),
        "verdict": verdict(interval["low"], interval["high"], k),
        "interval": {
            "method": "t-interval over seeds, the test-sampling variance the seeds share added (bootstrap over test examples)",
            "samples": samples,
            "confidence": confidence,
            "seeds": k,
            **interval,
        },
        "t_test_p": p_value,
        "bootstrap": {
            "method": "bootstrap over test examples, seeds fixed",
            "samples": samples,
            "confidence": confidence,
            "low": float(np.quantile(test_only, tail)),
            "high": float(np.quantile(test_only, 1 - tail)),
            "share_not_better": float(np.mean(test_only <= 0)),
        },
    }
