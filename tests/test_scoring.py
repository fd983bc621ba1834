"""Metrics, multi-label thresholds and the paired comparison, against scikit-learn and seqeval."""

import numpy as np
import pytest
from seqeval.metrics import f1_score as entity_f1

from pretrain.finetuning import scoring


def _random_tags(rng, n_sentences: int) -> list[list[str]]:
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC"]
    return [[tags[i] for i in rng.integers(0, len(tags), rng.integers(1, 12))] for _ in range(n_sentences)]


def test_counts_give_the_library_metrics_on_the_full_set():
    rng = np.random.default_rng(0)
    ones = np.ones((1, 200))
    # single-label, with class 4 never occurring (macro-F1 averages over classes present)
    gold, pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    labels = ["a", "b", "c", "d", "e"]
    expected = scoring.scores("single_label", gold, pred, labels)
    got = scoring.metrics_from_counts(scoring.example_counts("single_label", gold, pred, labels), ones)
    assert {k: float(v[0]) for k, v in got.items()} == pytest.approx(expected)
    # multi-label
    gold, pred = rng.random((200, 4)) < 0.3, rng.random((200, 4)) < 0.3
    expected = scoring.scores("multi_label", gold, pred, labels[:4])
    got = scoring.metrics_from_counts(scoring.example_counts("multi_label", gold, pred, labels[:4]), ones)
    assert {k: float(v[0]) for k, v in got.items()} == pytest.approx(expected)
    # token task, BIO: entity-level, as seqeval counts
    tags = ["O", "B-LOC", "B-ORG", "B-PER", "I-ORG", "I-PER"]
    gold, pred = _random_tags(rng, 200), _random_tags(rng, 200)
    pred = [p[: len(g)] + ["O"] * (len(g) - len(p)) for g, p in zip(gold, pred)]
    expected = scoring.scores("token", gold, pred, tags)
    assert expected["micro_f1"] == pytest.approx(entity_f1(gold, pred))
    got = scoring.metrics_from_counts(scoring.example_counts("token", gold, pred, tags), ones)
    assert {k: float(v[0]) for k, v in got.items()} == pytest.approx(expected)
    # token task, plain tags (POS): per word
    expected = scoring.scores("token", gold, pred, tags, tag_scheme="none")
    got = scoring.metrics_from_counts(scoring.example_counts("token", gold, pred, tags, tag_scheme="none"), ones)
    assert {k: float(v[0]) for k, v in got.items()} == pytest.approx(expected)


def test_entity_scores_are_per_entity_not_per_word():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "O", "O", "B-LOC"]]  # 3 of 4 words right, but the person is cut short
    s = scoring.scores("token", gold, pred, ["O", "B-LOC", "B-PER", "I-PER"], detail=True)
    assert s["accuracy"] == 0.75
    assert s["micro_f1"] == pytest.approx(0.5)  # LOC found, PER wrong: 1 of 2 gold, 1 of 2 predicted
    assert s["per_class"]["PER"]["f1"] == 0 and s["per_class"]["LOC"]["f1"] == 1
    assert s["confusion"]["labels"][0] == "O"


def test_thresholds_are_tuned_per_label_on_validation():
    rng = np.random.default_rng(1)
    n = 400
    gold = np.zeros((n, 3), dtype=bool)
    gold[:, 0] = rng.random(n) < 0.5
    gold[:, 1] = rng.random(n) < 0.5
    # label 0: positives score 0.3-0.4, negatives below 0.2: 0.2, 0.25 and 0.3 separate them perfectly
    # label 1: positives 0.8-0.9, negatives 0.6-0.7: 0.7 ... 0.8 do; label 2: never positive -> 0.5
    p0 = np.where(gold[:, 0], rng.uniform(0.3, 0.4, n), rng.uniform(0.0, 0.2, n))
    p1 = np.where(gold[:, 1], rng.uniform(0.8, 0.9, n), rng.uniform(0.6, 0.7, n))
    p2 = rng.uniform(0, 1, n)
    thresholds = scoring.tune_thresholds(np.stack([p0, p1, p2], 1), gold)
    assert thresholds[0] == 0.3 and thresholds[1] == 0.7  # of equally good thresholds, the one nearest 0.5
    assert thresholds[2] == 0.5
    decided = np.stack([p0, p1, p2], 1) >= thresholds
    assert (decided[:, :2] == gold[:, :2]).all()  # separable labels are decided perfectly


def test_paired_comparison_interval_and_test():
    rng = np.random.default_rng(2)
    gold = rng.integers(0, 3, 300)
    labels = ["a", "b", "c"]

    def noisy(error_rate, seed):
        r = np.random.default_rng(seed)
        pred = gold.copy()
        flip = r.random(len(gold)) < error_rate
        pred[flip] = (pred[flip] + 1) % 3
        return pred

    strong = [noisy(0.1, s) for s in range(3)]
    weak = [noisy(0.3, s + 10) for s in range(3)]
    counts = lambda preds: [scoring.example_counts("single_label", gold, p, labels) for p in preds]  # noqa: E731
    acc = lambda preds: [float((p == gold).mean()) for p in preds]  # noqa: E731
    c = scoring.paired_comparison(counts(strong), counts(weak), acc(strong), acc(weak), "accuracy", samples=500)
    assert c["difference"] == pytest.approx(np.mean(acc(strong)) - np.mean(acc(weak)))
    assert c["better_in_seeds"] == 3 and c["t_test_p"] < 0.05
    assert 0 < c["bootstrap"]["low"] < c["difference"] < c["bootstrap"]["high"]
    assert c["bootstrap"]["share_not_better"] == 0
    # the other way round: the interval lies below zero
    c = scoring.paired_comparison(counts(weak), counts(strong), acc(weak), acc(strong), "accuracy", samples=500)
    assert c["bootstrap"]["high"] < 0
    # a model compared with itself: no difference, no test to run, a zero-width interval
    c = scoring.paired_comparison(counts(weak), counts(weak), acc(weak), acc(weak), "macro_f1", samples=200)
    assert c["difference"] == 0 and c["t_test_p"] is None
    assert c["bootstrap"]["low"] == c["bootstrap"]["high"] == 0
    # the same seed gives the same interval
    again = scoring.paired_comparison(counts(weak), counts(weak), acc(weak), acc(weak), "macro_f1", samples=200)
    assert again == c


def test_the_verdict_needs_an_interval_over_seeds_and_test_clear_of_zero_and_three_seeds():
    rng = np.random.default_rng(3)
    gold = rng.integers(0, 3, 400)
    labels = ["a", "b", "c"]

    def runs(error_rates, first_seed):
        preds = []
        for i, rate in enumerate(error_rates):
            r = np.random.default_rng(first_seed + i)
            pred = gold.copy()
            flip = r.random(len(gold)) < rate
            pred[flip] = (pred[flip] + 1) % 3
            preds.append(pred)
        return [scoring.example_counts("single_label", gold, p, labels) for p in preds], [float((p == gold).mean()) for p in preds]

    def compare(model_errors, baseline_errors):
        (a, sa), (b, sb) = runs(model_errors, 0), runs(baseline_errors, 100)
        return scoring.paired_comparison(a, b, sa, sb, "accuracy", samples=1000)

    # clearly better with every seed: helped, and the interval lies above 0
    c = compare([0.10, 0.12, 0.11], [0.30, 0.28, 0.31])
    assert c["verdict"] == "helped" and 0 < c["interval"]["low"] < c["difference"] < c["interval"]["high"]
    assert compare([0.30, 0.28, 0.31], [0.10, 0.12, 0.11])["verdict"] == "hurt"
    # better on average and on every test resample, but one seed of three is worse: the test-only interval
    # excludes 0, the interval over seeds and test does not, so there is no clear difference
    c = compare([0.10, 0.30, 0.10], [0.30, 0.25, 0.30])
    assert c["bootstrap"]["low"] > 0 and c["interval"]["low"] < 0 < c["interval"]["high"]
    assert c["verdict"] == "no clear difference" and c["better_in_seeds"] == 2
    # one seed, however large the difference: the figures and no verdict
    c = compare([0.05], [0.40])
    assert c["interval"]["low"] > 0 and c["verdict"] == "no verdict" and c["interval"]["seeds"] == 1
    assert scoring.verdict(0.01, 0.05, 2) == "no verdict" and scoring.verdict(0.01, 0.05, 3) == "helped"
    assert scoring.verdict(-0.01, 0.05, 5) == "no clear difference" and scoring.verdict(-0.05, -0.01, 3) == "hurt"


def test_predictions_survive_json():
    labels = ["x", "y", "z"]
    single = np.array([2, 0, 1])
    assert (scoring.from_plain("single_label", scoring.to_plain("single_label", single), 3) == single).all()
    multi = np.array([[True, False, True], [False, False, False]])
    assert scoring.to_plain("multi_label", multi) == [[0, 2], []]
    assert (scoring.from_plain("multi_label", [[0, 2], []], len(labels)) == multi).all()
    tags = [["O", "B-X"], ["I-X"]]
    assert scoring.from_plain("token", scoring.to_plain("token", tags), 3) == tags
