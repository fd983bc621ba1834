"""Honest figures: build durations cover the build, near duplicates are shown, plots say what they draw and
order classes one way."""

import copy
import time

import numpy as np
import pytest

from conftest import REUTERS, read_jsonl_gz, write_jsonl
from pretrain import report
from pretrain.chain import plan, run_stage
from pretrain.configfile import validate_config
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.summaries import corpus_figures


def test_duration_covers_the_whole_build_of_every_stage(tiny_config, monkeypatch):
    from pretrain import base, ingest, tokens

    pause = 0.5

    def slowed(fn):
        def wrapper(*args, **kwargs):
            time.sleep(pause)
            return fn(*args, **kwargs)

        return wrapper

    # Work each stage does before its artifact's build block opens: finding and hashing the model
    # files, the shard tasks of ingest and tokens.
    monkeypatch.setattr(base, "model_files", slowed(base.model_files))
    monkeypatch.setattr(ingest, "process_shard", slowed(ingest.process_shard))
    monkeypatch.setattr(tokens, "process_shard", slowed(tokens.process_shard))
    config = validate_config(tiny_config)
    store = ArtifactStore(config.store)
    ids: dict[str, str] = {}
    for stage in plan(config, until="pretrain"):
        started = time.perf_counter()
        ids[stage] = run_stage(stage, config, store, ids)
        elapsed = time.perf_counter() - started
        duration = store.manifest(ids[stage])["duration_s"]
        assert duration <= elapsed + 0.01, (stage, duration, elapsed)
        if stage in ("base", "ingest", "tokens"):
            assert duration >= pause, (stage, duration)
    metrics = store.manifest(ids["pretrain"])["metrics"]
    assert store.manifest(ids["pretrain"])["duration_s"] >= metrics["train_seconds"]


def test_store_build_counts_from_the_given_start(tmp_path):
    store = ArtifactStore(tmp_path / "s")
    started = time.time() - 5
    with store.build("report", "r-" + "1" * 20, config={}, started=started) as build:
        (build.dir / "x").write_text("x")
    assert store.manifest("r-" + "1" * 20)["duration_s"] >= 5


def test_near_duplicates_are_counted_in_the_key_figures(tmp_path, tiny_config):
    long = [r["text"] for r in read_jsonl_gz(REUTERS / "corpus.jsonl.gz", limit=300) if len(r["text"].split()) > 80]
    texts = list(dict.fromkeys(long))[:40]  # distinct stories (newswire repeats some)
    near = [t.replace(" the ", " a ", 1) for t in texts[:3]]  # one word changed: near, not exact, duplicates
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts + texts[:2] + near])
    raw = copy.deepcopy(tiny_config)
    raw["ingest"]["inputs"] = [str(corpus)]
    config = validate_config(raw)
    store = ArtifactStore(config.store)
    aid = run_stage("ingest", config, store, {})
    metrics = store.manifest(aid)["metrics"]
    assert metrics["duplicates_removed"] == 2 and metrics["near_duplicates_removed"] == 3
    assert "removed 2 exact and 3 near duplicates" in corpus_figures(store.manifest(aid))


class _Captured:
    """matplotlib.pyplot, keeping every figure the report closes, to read what was drawn."""

    def __init__(self):
        self.plt = report._pyplot()
        self.figures = []

    def __getattr__(self, name):
        return getattr(self.plt, name)

    def close(self, fig):
        self.figures.append(fig)


@pytest.fixture
def captured(monkeypatch):
    c = _Captured()
    monkeypatch.setattr(report, "_pyplot", lambda: c)
    yield c
    for fig in c.figures:
        c.plt.close(fig)


def _results():
    labels = ["acq", "crude", "earn", "grain", "ship"]  # alphabetical, as the task's label set
    support = {"acq": 30, "crude": 10, "earn": 50, "grain": 10, "ship": 3}
    per_class = {c: {"f1_mean": 0.5, "f1_std": 0.1, "support": n} for c, n in support.items()}
    matrix = np.diag([support[c] for c in labels]).tolist()
    run = {"seed": 0, "validation": {"macro_f1": 0.5}, "test": {"confusion": {"labels": labels, "matrix": matrix}}}
    return {"type": "single_label", "primary_metric": "macro_f1", "labels": labels,
            "models": {name: {"per_class": per_class, "runs": [run]} for name in ("base", "adapted")}}  # fmt: skip


def test_confusion_matrix_and_f1_plot_share_one_class_order(tmp_path, captured):
    results = _results()
    order = report.class_order(results)
    assert order == ["earn", "acq", "crude", "grain", "ship"]  # most test examples first, ties by name
    report.plot_per_class(results, tmp_path / "f1.png")
    report.plot_confusion(results, tmp_path / "cm.png")
    f1_axes, confusion_axes = captured.figures[0].axes[0], captured.figures[1].axes[0]
    assert [t.get_text().split(" (n=")[0] for t in f1_axes.get_yticklabels()] == order
    assert [t.get_text() for t in confusion_axes.get_yticklabels()] == order
    assert [t.get_text() for t in confusion_axes.get_xticklabels()] == order
    # The counts moved with their labels: the diagonal still holds each class's own support.
    shown = {text.get_text() for text in confusion_axes.texts}
    assert shown == {"50", "30", "10", "3"}


def test_distillation_curve_names_its_objective_and_draws_the_teacher(tmp_path, captured):
    curve = [{"step": 0, "validation_perplexity": 900.0}]
    curve += [{"step": s, "loss": 9.0 - s, "distill_loss": 1.0, "mlm_loss": 3.0 - s / 10} for s in (2, 4)]
    curve += [{"step": 4, "validation_perplexity": 120.0}]
    objective = "objective: 5·T²·KL + 2·MLM (T = 2)"
    report.plot_curve(curve, tmp_path / "d.png", title="Distillation: ", objective=objective, teacher_perplexity=51.8)
    left, right = captured.figures[0].axes
    assert [t.get_text() for t in left.get_legend().get_texts()] == [objective, "its masked-LM cross-entropy"]
    teacher = [line for line in right.get_lines() if line.get_label().startswith("teacher")]
    assert len(teacher) == 1 and teacher[0].get_label() == "teacher (51.8)" and list(teacher[0].get_ydata()) == [51.8, 51.8]
