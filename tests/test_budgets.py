"""Label budgets: nested, stratified, hash-determined subsets of the train split, per task type; config checks."""

import random

import pytest

from pretrain.configfile import validate_config
from pretrain.core.errors import ConfigError
from pretrain.data.tasks import Split, TaskData
from pretrain.finetuning import budgets


def _task(kind: str, texts: list, labels: list) -> TaskData:
    train = Split(list(texts), None, list(labels), [f"train.jsonl:{i + 1}" for i in range(len(texts))])
    held = Split(["v"], None, [labels[0]], ["validation.jsonl:1"])
    names = sorted({c for cs in budgets.example_classes(TaskData(kind, [], train, held, held, "validation_files")) for c in cs})
    return TaskData(kind, names, train, held, held, "validation_files")


def _single(counts: dict[str, int], order_seed: int = 0) -> TaskData:
    rows = [(f"{label} story number {i}", label) for label, n in counts.items() for i in range(n)]
    random.Random(order_seed).shuffle(rows)
    return _task("single_label", [t for t, _ in rows], [label for _, label in rows])


def _kept(data: TaskData, budget: budgets.Budget) -> set:
    return {data.train.texts[i] for i in budget.indices}


def test_subsets_are_stratified_nested_and_capped():
    data = _single({"earn": 300, "acq": 120, "grain": 7})
    small, middle, whole = budgets.plan(data, [50, 10, None])  # any order in the config: fewest labels first
    assert [b.labels_per_class for b in (small, middle, whole)] == [10, 50, None]
    assert small.class_counts == {"earn": 10, "acq": 10, "grain": 7} and small.capped == {"grain": 7}
    assert middle.class_counts == {"earn": 50, "acq": 50, "grain": 7}
    assert _kept(data, small) < _kept(data, middle) < _kept(data, whole)  # nested
    assert list(small.indices) == sorted(small.indices)  # file order kept
    assert whole.run_key is None and whole.indices == tuple(range(427))
    assert small.run_key["labels_per_class"] == 10 and small.run_key["examples"] == 27
    assert budgets.capped_note(small) == "label budget 10 per class: capped for grain (7 train examples): it keeps all its examples"
    assert budgets.capped_note(whole) is None
    # a budget that caps every class is the whole split: the same runs as `null`
    assert budgets.select(data, 300).run_key is None and budgets.select(data, 299).run_key is not None
    cut = budgets.subset(data, small)
    assert len(cut.train) == 27 and cut.validation is data.validation and cut.test is data.test
    assert budgets.subset(data, whole) is data


def test_subsets_depend_on_the_texts_not_on_file_order():
    one, other = _single({"earn": 80, "acq": 40}, order_seed=1), _single({"earn": 80, "acq": 40}, order_seed=2)
    assert one.train.texts != other.train.texts  # shuffled differently
    a, b = budgets.select(one, 10), budgets.select(other, 10)
    assert _kept(one, a) == _kept(other, b)
    assert a.run_key["sha256"] != b.run_key["sha256"]  # same examples, another order: another training run
    assert budgets.select(one, 10) == a  # deterministic


def test_multi_label_counts_an_example_for_each_of_its_labels_and_keeps_negatives():
    rng = random.Random(0)
    labels = [sorted(rng.sample(["a", "b", "c"], rng.randint(0, 2))) for _ in range(400)]
    data = _task("multi_label", [f"text {i}" for i in range(400)], labels)
    small, middle = budgets.select(data, 5), budgets.select(data, 20)
    classes = budgets.example_classes(data)
    for budget, n in ((small, 5), (middle, 20)):
        # every label, and the examples without one, has at least the budget; co-occurring labels can give more
        assert set(budget.class_counts) == {"a", "b", "c", budgets.NO_LABEL}
        assert all(count >= n for count in budget.class_counts.values())
        assert sum(classes[i] == (budgets.NO_LABEL,) for i in budget.indices) == n
    assert set(small.indices) < set(middle.indices)


def test_token_tasks_count_sentences_per_entity_type_or_per_tag():
    tags = [["B-PER", "I-PER", "O"], ["O", "B-LOC"], ["O", "O"], ["B-PER", "O", "B-LOC"]] * 30
    data = _task("token", [[f"w{i}", "x", "y"][: len(t)] for i, t in enumerate(tags)], tags)
    budget = budgets.select(data, 4)
    assert budget.class_counts.keys() == {"PER", "LOC", budgets.NO_ENTITY}
    assert budget.class_counts[budgets.NO_ENTITY] == 4 and min(budget.class_counts.values()) >= 4
    plain = budgets.select(data, 4, tag_scheme="none")  # e.g. POS: each tag is a class
    assert set(plain.class_counts) == {"B-PER", "I-PER", "B-LOC", "O"}


def test_config_takes_positive_distinct_budgets_or_null(tiny_config):
    ok = validate_config({**tiny_config, "evaluate": {**tiny_config["evaluate"], "label_budgets": [10, 50, None]}})
    assert ok.evaluate.label_budgets == [10, 50, None]
    assert validate_config(tiny_config).evaluate.label_budgets is None  # off by default
    for bad, message in (
        ([0, 10], "evaluate.label_budgets: budgets are labels per class: positive whole numbers, or null for the whole train split (got [0])"),
        ([10, 10], "evaluate.label_budgets: budgets must be distinct (got [10, 10])"),
        ([], "evaluate.label_budgets: give at least one budget"),
        (["10"], "evaluate.label_budgets[0]: Input should be a valid integer"),
        ([1.5], "evaluate.label_budgets[0]: Input should be a valid integer"),
    ):
        with pytest.raises(ConfigError) as error:
            validate_config({**tiny_config, "evaluate": {**tiny_config["evaluate"], "label_budgets": bad}})
        assert message in str(error.value)


@pytest.mark.slow
def test_a_budget_curve_reuses_built_runs_and_is_reported(tiny_config):
    import json

    from conftest import build_until
    from pretrain import evaluate, report
    from pretrain.chain import key_figures
    from pretrain.core.summaries import evaluation_figures

    config, store, ids = build_until(tiny_config, "pretrain")
    cfg = config.evaluate.model_copy(update={"seeds": [0], "num_epochs": 1, "patience_epochs": None})

    def evaluation(budgets):
        aid = evaluate.run(cfg.model_copy(update={"label_budgets": budgets}), store, base=ids["base"], model=ids["pretrain"])
        m = store.manifest(aid)
        return aid, m, json.loads((store.local_dir(aid) / "results.json").read_text())

    _, first, _ = evaluation([5, None])
    assert (first["metrics"]["finetune_runs"], first["metrics"]["finetune_runs_built"]) == (4, 4)
    aid, second, results = evaluation([10, 5, None])
    # a longer curve costs only its new budget's runs: those of 5 per class and of all are cache hits
    assert (second["metrics"]["finetune_runs"], second["metrics"]["finetune_runs_built"]) == (6, 2)
    runs = lambda m: {role: fid for role, fid in m["inputs"].items() if fid.startswith("f-")}  # noqa: E731
    assert runs(first).items() < runs(second).items()
    assert sorted(r for r in runs(second) if r.startswith("base lr 3e-3 seed 0")) == [
        "base lr 3e-3 seed 0", "base lr 3e-3 seed 0 labels/class 10", "base lr 3e-3 seed 0 labels/class 5"]  # fmt: skip
    curve = results["label_budgets"]
    assert [(e["name"], e["train"]) for e in curve] == [("5", 15), ("10", 30), ("all", 135)]
    assert all(e["class_counts"] == {"acq": n, "crude": n, "earn": n} for e, n in zip(curve[:2], (5, 10)))
    # the headline is the comparison with all labels, the same as an evaluation without budgets (same runs, same code)
    _, plain, plain_results = evaluation(None)
    assert plain["metrics"]["finetune_runs_built"] == 0 and "label_budgets" not in plain_results
    assert results["comparisons"] == curve[-1]["comparisons"] == plain_results["comparisons"]
    assert results["sizes"]["train"] == 135
    for entry in curve:
        headline = next(c for c in entry["comparisons"] if c["model"] == "adapted" and c["metric"] == "macro_f1")
        assert second["metrics"]["label_budgets"][entry["name"]]["adapted_minus_base_verdict"] == headline["verdict"]
    assert "; adapted − base by labels per class: 5: " in evaluation_figures(second)

    rid = report.run(None, store, key_figures=key_figures(), **{role: ids[role] for role in ("base", "ingest", "vocab", "tokens", "pretrain")}, evaluate=aid)
    text = (store.local_dir(rid) / "report.md").read_text()
    assert "## Labels per class: where adaptation pays off" in text and "![label-budget curve](label_budgets.png)" in text
    assert (store.local_dir(rid) / "label_budgets.png").stat().st_size > 10_000
    assert "**Adaptation " in text and "| all | 135 |" in text
