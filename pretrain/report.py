"""Report: one Markdown page with plots that says whether domain adaptation helped, from the run's artifacts.

    python -m pretrain.report --config configs/demo.yaml

Output (report artifact `r-...`): `report.md`; `comparison.png` (test score of every model and seed),
`per_class_f1.png`, `confusion_matrix.png` (the best adapted run, chosen on validation),
`pretrain_curve.png` (and `tapt_curve.png` with TAPT, `distill_curve.png` with distillation), `fertility.png`;
`summary.json` (the stage table)
and `comparison.txt` (the comparison table as `dapt run` prints it). Everything in it is read from
the manifests and files of the input artifacts, so the report of an old run can be rebuilt from the
store alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from pretrain.core.artifacts import ArtifactStore
from pretrain.core.ids import artifact_id
from pretrain.core.logs import get_logger
from pretrain.core.summaries import (
    Figures,
    budget_comparison,
    budget_label,
    budget_sentence,
    decontamination_sentence,
    format_comparison,
    format_p,
    grid_searched,
    hand_over_lines,
    mean_std,
    metric_label,
    public_name,
    removed_documents,
    seed_counts,
    seed_tally,
    shown_metrics,
    summary_rows,
)
from pretrain.training.flops import PRECISION_NAMES

log = get_logger(__name__)

STAGE = "report"
# Fewer validation blocks and the perplexity is a noisy figure (the same threshold as pretrain.training.kit.FEW_EVAL_BLOCKS).
FEW_EVAL_BLOCKS = 50
FIGURES = ("comparison.png", "label_budgets.png", "per_class_f1.png", "confusion_matrix.png", "pretrain_curve.png", "tapt_curve.png", "distill_curve.png", "fertility.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(names: list[str]) -> dict[str, str]:
    fixed = {"base": "#7f7f7f", "adapted": "#1f77b4", "student": "#17becf", "adapted+tapt": "#2ca02c", "base+tapt": "#9467bd"}
    others = iter(["#ff7f0e", "#d62728", "#8c564b", "#e377c2", "#bcbd22"] * 4)
    return {name: fixed.get(name) or next(others) for name in names}


def plot_curve(curve: list[dict], path: Path, title: str = "", objective: str | None = None,
               teacher_perplexity: float | None = None) -> None:  # fmt: skip
    """Training loss and validation perplexity over steps.

    `objective`: what `loss` is when it is not the masked-LM loss (distillation's weighted sum); its
    masked-LM part (`mlm_loss`) is then drawn too, comparable with pretraining's. `teacher_perplexity`:
    a reference line on the perplexity panel.
    """
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    train = [p for p in curve if "loss" in p]
    steps = [p["step"] for p in train]
    left.plot(steps, [p["loss"] for p in train], marker=".", label=objective or "masked-LM loss")
    if objective is not None and all("mlm_loss" in p for p in train):
        left.plot(steps, [p["mlm_loss"] for p in train], marker=".", color="C2", label="its masked-LM cross-entropy")
    if objective is not None:
        left.legend(fontsize=8)
    left.set(xlabel="optimizer step", ylabel="training loss", title=f"{title}training loss")
    validation = [p for p in curve if "validation_perplexity" in p]
    right.plot([p["step"] for p in validation], [p["validation_perplexity"] for p in validation], marker="o", color="C1",
               label="student" if teacher_perplexity is not None else None)  # fmt: skip
    if teacher_perplexity is not None:
        right.axhline(teacher_perplexity, color="black", linestyle="--", linewidth=1, label=f"teacher ({teacher_perplexity:,.1f})")
        right.legend(fontsize=8)
    right.set(xlabel="optimizer step", ylabel="perplexity (log scale)", title=f"{title}validation perplexity", yscale="log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def headline(results: dict) -> dict | None:
    """The adapted - base comparison on the primary metric."""
    return next((c for c in results["comparisons"] if c["model"] == "adapted" and c["metric"] == results["primary_metric"]), None)


def verdict(comparison: dict) -> str | None:
    """`helped`, `hurt` or `made no clear difference`, from the interval over seeds and test examples; None
    (no verdict) with fewer than `scoring.MIN_SEEDS_FOR_VERDICT` seeds."""
    return {"helped": "helped", "hurt": "hurt", "no clear difference": "made no clear difference", "no verdict": None}[comparison["verdict"]]


def task_description(results: dict, task: dict) -> str:
    """What the task is, for the headline: `single-label classification into 5 labels; test: 81 examples held out of
    labelled.csv by test_fraction`."""
    kind = {"single_label": "single-label classification into", "multi_label": "multi-label classification with",
            "token": "token tagging with"}.get(results["type"], results["type"])  # fmt: skip
    names = lambda key: ", ".join(public_name(str(p)) for p in task.get(key) or [])  # noqa: E731
    test = f"{results['sizes']['test']:,} examples " + (f"of {names('test_files')}" if task.get("test_files") else
                                                        f"held out of {names('train_files')} by test_fraction")  # fmt: skip
    return f"{kind} {len(results['labels'])} labels; test: {test}"


def headline_text(results: dict, label, task: dict | None = None) -> list[str]:
    """The report's first lines: the verdict (or why there is none) on the task (what it is, given the evaluate
    config's `task` section), with the difference, its interval and how it was computed."""
    c = headline(results)
    if c is None:
        return []
    what = f" ({task_description(results, task)})" if task else ""
    i = c["interval"]
    seeds = len(c["per_seed"])
    figures = (
        f"test {label(results['primary_metric'])} adapted − base **{c['difference']:+.3f}** (mean over {seeds} seed{'s' if seeds > 1 else ''}; "
        f"adapted {seed_counts(c)} of {seeds}), {i['confidence']:.0%} interval over seeds and test examples "
        f"[{i['low']:+.3f}, {i['high']:+.3f}]."
    )
    said = verdict(c)
    scope = ""
    if results.get("label_budgets"):  # the headline is the comparison at the most labels
        last = results["label_budgets"][-1]
        scope = f" with all {last['train']:,} train examples" if last["labels_per_class"] is None else f" at {last['labels_per_class']} labels per class"
    if said is None:
        first = (f"**No verdict on {results['task']}{scope}**{what} with {seeds} seed{'s' if seeds > 1 else ''} (a verdict needs at least "
                 f"{results['min_seeds_for_verdict']}: list more in `evaluate.seeds`): {figures}")  # fmt: skip
    else:
        first = f"**Domain adaptation {said} on {results['task']}{scope}**{what}: {figures}"
    lines = [first, "", results["interval_method"], ""]
    convergence = results.get("convergence")
    if convergence and convergence["not_converged"]:
        lines += [
            f"**Warning: {convergence['not_converged']} of {convergence['runs']} fine-tuning runs chose their last allowed epoch "
            f"({convergence['num_epochs']})**: they had not converged, so the comparison may measure how fast each model learns "
            "rather than how good it gets. Raise `evaluate.num_epochs` (see the notes below).",
            "",
        ]
    return lines


def plot_comparison(results: dict, path: Path) -> None:
    """Per model: every seed's test score (dots), the mean (bar) and ± one standard deviation."""
    plt = _pyplot()
    metrics = shown_metrics(results)
    names = list(results["models"])
    colors = _colors(names)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        lows = []
        for x, name in enumerate(names):
            summary = results["models"][name]["summary"][metric]
            values = summary["values"]
            offsets = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
            ax.scatter([x + o for o in offsets], values, color=colors[name], s=28, zorder=3, edgecolor="white", linewidth=0.5)
            ax.errorbar(x, summary["mean"], yerr=summary["std"], fmt="_", markersize=26, color="black", capsize=6, zorder=4, linewidth=1.5)
            lows.append(min(values) - summary["std"])
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.6, len(names) - 0.4)
        label = metric_label(metric, results["type"], results.get("tag_scheme"))
        ax.set_ylabel(f"test {label}")
        title = label
        if metric == results["primary_metric"] and (c := headline(results)):
            i = c.get("interval", c["bootstrap"])
            title = f"{label}: adapted − base {c['difference']:+.3f}\n{i['confidence']:.0%} interval over seeds and test [{i['low']:+.3f}, {i['high']:+.3f}]"
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{results['task']}: test scores, {len(results['seeds'])} seeds each (dots), mean ± std (black)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def budget_positions(results: dict) -> list[float]:
    """Where each label budget sits on the log x axis: its labels per class; `all` (no single number per class)
    right of the largest budget, at the mean examples per class of the whole train split or twice the largest budget."""
    entries = results["label_budgets"]
    numbers = [e["labels_per_class"] for e in entries if e["labels_per_class"] is not None]
    whole = entries[-1]["train_of"] / max(len(entries[-1]["class_counts"]), 1)
    return [float(e["labels_per_class"]) if e["labels_per_class"] is not None else max(whole, 2.0 * max(numbers, default=1)) for e in entries]


def plot_label_budgets(results: dict, path: Path) -> None:
    """The label-budget curve: each model's test score against labels per class (log x, mean ± std over seeds), and
    each model − base difference with its 95% interval over seeds and test examples shaded."""
    plt = _pyplot()
    primary = results["primary_metric"]
    label = metric_label(primary, results["type"], results.get("tag_scheme"))
    entries = results["label_budgets"]
    names = list(entries[0]["models"])
    colors = _colors(names)
    xs = budget_positions(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.0))
    for name in names:
        means = [e["models"][name]["summary"][primary]["mean"] for e in entries]
        stds = [e["models"][name]["summary"][primary]["std"] for e in entries]
        left.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=colors[name], label=name)
    right.axhline(0.0, color="black", linewidth=0.8)
    for name in names[1:]:
        compared = [budget_comparison(e, results, name) for e in entries]
        if any(c is None for c in compared):
            continue
        right.plot(xs, [c["difference"] for c in compared], marker="o", color=colors[name], label=f"{name} − base")
        right.fill_between(xs, [c["interval"]["low"] for c in compared], [c["interval"]["high"] for c in compared], color=colors[name], alpha=0.2)
        for x, c in zip(xs, compared):
            right.annotate(c["verdict"], (x, c["interval"]["high"]), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7,
                           color=colors[name])  # fmt: skip
    ticks = [budget_label(e).replace(" (", "\n(") for e in entries]
    right.margins(y=0.15)  # room for the verdicts above the intervals
    for ax in (left, right):
        ax.margins(x=0.08)
        ax.set_xscale("log")
        ax.set_xticks(xs, ticks)
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.set_xlabel("labelled train examples per class (log scale)")
        ax.legend(fontsize=8)
    left.set(ylabel=f"test {label}", title=f"test {label}, mean ± std over {len(results['seeds'])} seeds")
    right.set(ylabel=f"difference in test {label}", title="difference to base, 95% interval over seeds and test (shaded)")
    fig.suptitle(f"{results['task']}: where adaptation pays off (validation and test the same at every budget)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def budget_section(results: dict, label) -> list[str]:
    """The label-budget curve: its sentence, the plot, one row per budget, and where a budget was capped."""
    primary = results["primary_metric"]
    names = list(results["label_budgets"][0]["models"])
    lines = [
        "## Labels per class: where adaptation pays off",
        "",
        f"**{budget_sentence(results)}** Each budget is a subset of the train split with that many examples of each class "
        "(chosen by a hash of the text, stratified, nested: the smaller budgets' examples are among the larger ones'); every "
        "model gets the same protocol, learning rates and seeds at every budget, and validation and test are the same throughout.",
        "",
        "![label-budget curve](label_budgets.png)",
        "",
        "| labels per class | train examples | " + " | ".join(f"{n} test {label(primary)}" for n in names)
        + " | adapted − base | 95% interval over seeds and test | verdict |",
        "| --- " * (len(names) + 5) + "|",
    ]
    for entry in results["label_budgets"]:
        c = budget_comparison(entry, results)
        cells = [f"{c['difference']:+.3f}", f"[{c['interval']['low']:+.3f}, {c['interval']['high']:+.3f}]", c["verdict"]] if c else ["-"] * 3
        lines.append(f"| {entry['name']} | {entry['train']:,} | " + " | ".join(mean_std(entry["models"][n]["summary"][primary]) for n in names)
                     + " | " + " | ".join(cells) + " |")  # fmt: skip
    for entry in (e for e in results["label_budgets"] if e["capped"]):
        which = ", ".join(f"{c} ({n:,} train example{'s' if n != 1 else ''})" for c, n in entry["capped"].items())
        one = len(entry["capped"]) == 1
        lines += ["", f"At {entry['labels_per_class']} labels per class the budget was capped for {which}: "
                      f"{'it keeps all its examples' if one else 'they keep all their examples'}."]  # fmt: skip
    return lines + [""]


def class_order(results: dict, labels: list[str] | None = None) -> list[str]:
    """The classes (or `labels`) as every table and plot of the report shows them: most test examples first, then by name."""
    per_class = results["models"]["base"]["per_class"]
    return sorted(per_class if labels is None else labels, key=lambda c: (-per_class.get(c, {}).get("support", 0), c))


def plot_per_class(results: dict, path: Path, limit: int = 30) -> None:
    """Test F1 per class (mean over seeds, ± std), in `class_order` (most frequent on top)."""
    plt = _pyplot()
    names = list(results["models"])
    colors = _colors(names)
    per_class = {name: results["models"][name]["per_class"] for name in names}
    classes = class_order(results)[:limit]
    height = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.22 * len(classes) * len(names) + 0.3 * len(classes)))
    for j, name in enumerate(names):
        ys = [i + (j - (len(names) - 1) / 2) * height for i in range(len(classes))]
        means = [per_class[name][c]["f1_mean"] for c in classes]
        stds = [per_class[name][c]["f1_std"] for c in classes]
        ax.barh(ys, means, height=height, xerr=stds, color=colors[name], label=name, error_kw={"elinewidth": 0.8, "capsize": 2})
    ax.set_yticks(range(len(classes)), [f"{c} (n={per_class['base'][c]['support']:,})" for c in classes])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    unit = "entity type" if results["type"] == "token" and results.get("tag_scheme") == "BIO" else "class"
    ax.set(xlabel="test F1 (mean over seeds, ± std)", title=f"F1 per {unit}" + (f" ({limit} most frequent)" if len(per_class["base"]) > limit else ""))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)  # beside the bars, never over them
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def best_run(results: dict, name: str) -> dict:
    """The run of `name` with the best validation score (chosen without looking at test)."""
    metric = results["primary_metric"]
    runs = results["models"][name]["runs"]
    chosen = results["models"][name].get("best_run")
    if chosen is not None:
        return next(r for r in runs if r["seed"] == chosen["seed"])
    return max(runs, key=lambda r: r["validation"][metric])


def plot_confusion(results: dict, path: Path, name: str = "adapted", limit: int = 30) -> None:
    plt = _pyplot()
    run = best_run(results, name)
    confusion = run["test"]["confusion"]
    labels = confusion["labels"]
    if "per_label" in confusion:  # multi-label: one row of true positives, misses and false alarms per label
        matrix = np.array([[m[1][1], m[1][0], m[0][1]] for m in confusion["per_label"]])
        columns, xlabel = ["predicted (TP)", "missed (FN)", "false alarm (FP)"], ""
        shares = matrix / np.maximum(matrix[:, :2].sum(1, keepdims=True), 1)
        colorbar = "share of the label's test examples"
    else:
        matrix = np.array(confusion["matrix"])
        columns, xlabel = labels, "predicted"
        shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
        colorbar = "share of the true class (row)"
    per_class = results["models"]["base"]["per_class"]
    if any(label in per_class for label in labels):  # the F1 plot's order: most test examples first
        keep = np.array([labels.index(c) for c in class_order(results, labels)][:limit], dtype=int)
    else:  # tags of a token task (F1 is per entity type): their own order, the most frequent if cut
        keep = np.sort(np.argsort(-matrix.sum(1), kind="stable")[:limit])
    labels = [labels[i] for i in keep]
    matrix, shares = matrix[keep], shares[keep]
    if "per_label" not in confusion:
        matrix, shares, columns = matrix[:, keep], shares[:, keep], labels
    size = max(4.5, 0.5 * len(columns) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.2, max(3.5, 0.45 * len(labels) + 1.8)))
    image = ax.imshow(np.clip(shares, 0, 1), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if matrix[i, j]:
                ax.text(j, i, f"{matrix[i, j]:,}", ha="center", va="center", fontsize=8, color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel=xlabel, ylabel="true")
    unit = " (words)" if results["type"] == "token" else ""
    ax.set_title(f"{name}, seed {run['seed']} (best on validation): test confusion{unit}", fontsize=10)
    fig.colorbar(image, ax=ax, label=colorbar, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_fertility(vocab: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    names = [f"base tokenizer\n({vocab['base_vocab_size']:,} pieces)", f"domain WordPiece\n({vocab['domain_vocab_size']:,} pieces)"]
    values = [vocab["fertility_base"], vocab["fertility_domain"]]
    bars = ax.bar(names, values, color=["#7f7f7f", "#1f77b4"], width=0.55)
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.3f}", ha="center", va="bottom")
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set(ylabel="tokens per word (lower: fewer splits)", title="Fertility on the corpus' validation split", ylim=(0, max(values) * 1.2))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(store: ArtifactStore, ids: dict[str, str], figures: list[str], key_figures: Mapping[str, Figures]) -> str:
    manifests = {role: store.manifest(aid) for role, aid in ids.items()}
    corpus, vocab, model = (manifests[r]["metrics"] for r in ("ingest", "vocab", "pretrain"))
    hp = manifests["evaluate"]["config"]
    results = json.loads((store.local_dir(ids["evaluate"]) / "results.json").read_text())
    metrics = shown_metrics(results)
    primary = results["primary_metric"]
    label = lambda m: metric_label(m, results["type"], results.get("tag_scheme"))  # noqa: E731
    lines = ["# Domain-adaptive pretraining report", "", *headline_text(results, label, hp.get("task"))]
    if results.get("label_budgets"):
        lines += budget_section(results, label)
    if hand_over := hand_over_lines(results):
        lines += ["## Which model to hand over", "", *hand_over, ""]
    lines += [
        "## Stages",
        "",
        "| stage | artifact | key figures |",
        "| --- | --- | --- |",
        *[f"| {r['stage']} | `{r['artifact']}` | {r['key figures']} |" for r in summary_rows(store, ids, key_figures)],
        "",
        f"## Downstream: {results['task']}",
        "",
        f"{results['type'].replace('_', '-')} task, {len(results['labels'])} labels; {results['sizes']['train']:,} train, "
        f"{results['sizes']['validation']:,} validation ({results['validation_from']}), {results['sizes']['test']:,} test examples. "
        f"Every model: the same splits, seeds {results['seeds']} and settings ({_rate_setting(results, hp)}, batch "
        f"{hp['batch_size']}, at most {hp['num_epochs']} epochs, early stopping patience {hp['patience_epochs']}, "
        f"max {hp['max_seq_length']} tokens); the epoch is chosen on validation {label(primary)}, test is scored once per run.",
        "",
        "![test scores per model and seed](comparison.png)",
        "",
        "| model | " + " | ".join(f"test {label(m)}" for m in metrics) + f" | {label(primary)} per seed | best epoch per seed | learning rate |",
        "| --- " * (len(metrics) + 4) + "|",
    ]
    for name, r in results["models"].items():
        lines.append(
            f"| {name} (`{r['artifact']}`) | " + " | ".join(mean_std(r["summary"][m]) for m in metrics)
            + f" | {', '.join(f'{v:.3f}' for v in r['summary'][primary]['values'])} | {', '.join(str(x['best_epoch']) for x in r['runs'])} "
            + f"| {r['learning_rate']:g} |"
        )
    if grid_searched(results):
        lines += ["", *learning_rate_table(results, label)]
    lines += [
        "",
        "Mean ± standard deviation over seeds. Differences to the base model, paired by seed (same head initialisation "
        "and data order) and by test example. The verdict's interval resamples seeds and test examples together; "
        "the paired t-test (seeds only) and the test-only bootstrap (seeds fixed) are secondary figures:",
        "",
        "| comparison | metric | difference (mean ± std over seeds) | per seed | seeds better / tied / worse | 95% interval over seeds and test | verdict "
        "| paired t-test p (secondary) | 95% test-only bootstrap (secondary) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for comparison in sorted(results["comparisons"], key=lambda c: (c["model"] != "adapted", c["model"], metrics.index(c["metric"]) if c["metric"] in metrics else 99)):
        if comparison["metric"] in metrics:
            b, i = comparison["bootstrap"], comparison["interval"]
            lines.append(
                f"| {comparison['model']} − {comparison['baseline']} | {label(comparison['metric'])} | {comparison['difference']:+.4f} ± "
                f"{comparison['difference_std']:.4f} | {', '.join(f'{d:+.3f}' for d in comparison['per_seed'])} | "
                f"{' / '.join(map(str, seed_tally(comparison)))} | [{i['low']:+.4f}, {i['high']:+.4f}] | {comparison['verdict']} | "
                f"{format_p(comparison['t_test_p'])} | [{b['low']:+.4f}, {b['high']:+.4f}] |"
            )
    names = list(results["models"])
    unit = "entity type" if results["type"] == "token" and results.get("tag_scheme") == "BIO" else "class"
    lines += [
        "",
        f"### F1 per {unit} (test, mean over seeds)",
        "",
        "![F1 per class](per_class_f1.png)",
        "",
        f"| {unit} | support | " + " | ".join(names) + " | adapted − base |",
        "| --- " * (len(names) + 3) + "|",
    ]
    per_class = {n: results["models"][n]["per_class"] for n in names}
    for cls in class_order(results):
        delta = per_class["adapted"][cls]["f1_mean"] - per_class["base"][cls]["f1_mean"]
        lines.append(
            f"| {cls} | {per_class['base'][cls]['support']:,} | "
            + " | ".join(f"{per_class[n][cls]['f1_mean']:.3f} ± {per_class[n][cls]['f1_std']:.3f}" for n in names)
            + f" | {delta:+.3f} |"
        )
    best = best_run(results, "adapted")
    lines += [
        "",
        f"### Confusion matrix of the best adapted run (seed {best['seed']}, best validation {label(primary)})",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
    ]
    if results["notes"]:
        lines += ["### Data notes", "", *[f"- {note}" for note in results["notes"]], ""]
    lines += [
        "## Continued pretraining",
        "",
        f"Validation perplexity (same blocks and masks): **{model['validation_perplexity_before']:,.1f} → "
        f"{model['validation_perplexity_after']:,.1f}** after {model['steps']:,} steps "
        f"({model['tokens']:,} tokens, global batch {model['global_batch_size']}, {model['processes']} × {model['device']}, "
        f"{model['tokens_per_second']:,.0f} tokens/s{utilisation(model)}).",
        *(["", "The perplexity before training is that of a randomly initialised MLM head (the base checkpoint has none, or the "
           "vocabulary was replaced), not the base model's: only the perplexity after training measures the model."]
          if model.get("mlm_head_before") == "random" else []),
        "",
        "![pretraining curve](pretrain_curve.png)",
        "",
    ]
    if model.get("validation_blocks", FEW_EVAL_BLOCKS) < FEW_EVAL_BLOCKS:
        lines += [f"**Warning: the validation perplexity rests on {model['validation_blocks']} blocks of "
                  f"{manifests['pretrain']['config']['max_seq_length']} tokens** (under {FEW_EVAL_BLOCKS}): its changes say little. "
                  "Raise `ingest.validation_fraction` for a larger validation split.", ""]  # fmt: skip
    if "tapt_curve.png" in figures:
        lines += ["Task-adaptive pretraining on the task's train text:", "", "![TAPT curve](tapt_curve.png)", ""]
    if "distill" in ids:
        lines += distillation_section(manifests["distill"], results, label)
    if results.get("int8"):
        lines += int8_section(results["int8"], label)
    lines += [
        "## Corpus and vocabulary",
        "",
        f"- {corpus['documents']:,} documents ({corpus['train_documents']:,} train / {corpus['validation_documents']:,} validation), "
        f"{corpus['bytes'] / 1e6:.1f} MB, {corpus['words']:,} words; removed {corpus['duplicates_removed']:,} exact and "
        f"{corpus.get('near_duplicates_removed', 0):,} near duplicates, {corpus['empty_removed']:,} empty and {corpus['short_removed']:,} short documents.",
        f"- Decontamination: {decontamination_sentence(manifests['ingest'])}",
        *removed_section(manifests["ingest"]),
        f"- Fertility on validation (tokens per word): base tokenizer {vocab['fertility_base']:.3f}, domain WordPiece "
        f"({vocab['domain_vocab_size']:,}) {vocab['fertility_domain']:.3f}. The model trains with: `{vocab['mode']}`.",
        "",
        "![fertility](fertility.png)",
        "",
        "## Lineage",
        "",
        *[f"- {role}: `{aid}` ({manifests[role]['created']})" for role, aid in ids.items()],
        "",
        "`dapt artifacts lineage ID` prints the full chain back to the raw files.",
    ]
    return "\n".join(lines) + "\n"


def removed_section(corpus: dict) -> list[str]:
    """The documents decontamination removed, as the corpus manifest names them (the first of them), indented under its line."""
    named = removed_documents(corpus)
    if not named:
        return []
    removed = corpus["metrics"]["decontamination"]["removed"]
    more = f" (the first {len(named)} of {removed:,}, as the corpus manifest keeps them: `dapt artifacts show {corpus['id']}`)" if removed > len(named) else ""
    return [f"  Removed documents{more}:", *[f"  - {line}" for line in named]]


def _rate_setting(results: dict, hp: dict) -> str:
    if grid_searched(results):
        chosen = ", ".join(f"{name} {r['learning_rate']:g}" for name, r in results["models"].items())
        return f"learning rate chosen per model from the same grid {results['learning_rates']} on mean validation score over seeds: {chosen}"
    return f"learning rate {hp['learning_rate']:g}"


def learning_rate_table(results: dict, label) -> list[str]:
    """Mean validation score over seeds of every model at every rate of the grid; the chosen one in bold."""
    metric = results["primary_metric"]
    rates = list(next(iter(results["models"].values()))["learning_rates"])
    lines = [
        f"Learning rate per model (validation {label(metric)}, mean over seeds; the rate each model is compared at in bold; test plays no part):",
        "",
        "| model | " + " | ".join(f"lr {float(rate):g}" for rate in rates) + " |",
        "| --- " * (len(rates) + 1) + "|",
    ]
    for name, r in results["models"].items():
        cells = []
        for rate, summary in r["learning_rates"].items():
            value = f"{summary[f'validation_{metric}_mean']:.3f}"
            cells.append(f"**{value}**" if summary["chosen"] else value)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def utilisation(metrics: dict) -> str:
    """`, MFU 41.2% of ...` for a model trained where the device's peak is known; on an unknown GPU, why there is none."""
    if metrics.get("mfu") is not None:
        return (f", MFU {metrics['mfu']:.1%} of the {metrics['device_name']}'s {PRECISION_NAMES[metrics['mixed_precision']]} "
                f"dense peak of {metrics['peak_flops_per_second'] / 1e12:,.0f} TFLOP/s")  # fmt: skip
    if metrics.get("mfu_note") and metrics.get("device") != "cpu":
        return f"; {metrics['mfu_note']}"
    return ""


def int8_section(int8: dict[str, dict], label) -> list[str]:
    """fp32 vs int8 (dynamic quantization of the Linear layers) of each measured model's first-seed classifier."""
    first = next(iter(int8.values()))
    metric = first["primary_metric"]
    lines = [
        "## int8 on CPU",
        "",
        f"Each model's classifier fine-tuned with seed {first['seed']}, then quantized (`{first['method']}`) and scored on the same "
        f"{first['test_examples']:,} test examples; CPU speed timed alternately with fp32 in one process (median of "
        f"{first['speed']['rounds']} rounds, {first['speed']['threads']} threads). `dapt export MODEL --quantize int8` measures an exported model the same way.",
        "",
        f"| model | Linear share of parameters | test {label(metric)} fp32 | int8 | change | latency, batch 1 | throughput, batch 32 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, q in int8.items():
        s = q["speed"]
        lines.append(
            f"| {name} | {q['linear_parameter_share']:.0%} | {q['fp32'][metric]:.4f} | {q['int8'][metric]:.4f} | {q['delta'][metric]:+.4f} "
            f"| {s['fp32_latency_ms_batch1']:.2f} -> {s['int8_latency_ms_batch1']:.2f} ms (x{s['latency_speedup_batch1']:.2f}) "
            f"| {s['fp32_throughput_batch32']:,.0f} -> {s['int8_throughput_batch32']:,.0f}/s (x{s['throughput_speedup_batch32']:.2f}) |"
        )
    return lines + ["", "int8 shrinks and speeds up only the Linear layers: in a small model the embedding matrix dominates and the gain is small.", ""]


def distillation_section(manifest: dict, results: dict, label) -> list[str]:
    """Student vs teacher: size, validation perplexity, CPU speed, downstream score and the paired difference."""
    m, c = manifest["metrics"], manifest["config"]
    primary = results["primary_metric"]
    lines = [
        "## Distillation: student vs teacher",
        "",
        f"The adapted model (the teacher) distilled into a {m['student_layers']}-layer student initialised from its layers "
        f"{', '.join(map(str, m['initialised_from_teacher_layers']))} (embeddings and MLM head copied), trained on the same corpus "
        f"tokens for {m['steps']:,} steps ({m['tokens']:,} tokens, {m['tokens_per_second']:,.0f} tokens/s) on "
        f"{c['alpha_distill']:g} · T² · KL(teacher ‖ student) at T = {c['temperature']:g} + {c['alpha_mlm']:g} · masked-LM loss. "
        f"CPU inference: the encoders on batches of {m['cpu_batch_size']} × {m['cpu_seq_length']} tokens, fp32, "
        f"{m['cpu_threads']} threads, timed alternately (median of {c['speed_rounds']} batches each).",
        "",
        "| | teacher (`adapted`) | student | student / teacher |",
        "| --- | --- | --- | --- |",
        f"| layers | {m['teacher_layers']} | {m['student_layers']} | {m['student_layers'] / m['teacher_layers']:.2f} |",
        f"| encoder parameters | {m['teacher_parameters']:,} | {m['student_parameters']:,} | {m['parameter_ratio']:.2f} |",
        f"| validation perplexity (same blocks and masks) | {m['validation_perplexity_teacher']:,.1f} | "
        f"{m['validation_perplexity_after']:,.1f} (from {m['validation_perplexity_before']:,.1f} at initialisation) | |",
        f"| CPU sequences/s at batch {m['cpu_batch_size']} | {m['cpu_sequences_per_second_teacher']:,.1f} | "
        f"{m['cpu_sequences_per_second_student']:,.1f} | **{m['cpu_speedup']:.2f}x** |",
    ]
    models = results["models"]
    if "student" in models and "adapted" in models:
        teacher, student = models["adapted"]["summary"][primary], models["student"]["summary"][primary]
        lines.append(f"| test {label(primary)} (mean ± std over seeds) | {mean_std(teacher)} | {mean_std(student)} | |")
        comparison = next((x for x in results["comparisons"] if x["model"] == "student" and x["baseline"] == "adapted" and x["metric"] == primary), None)
        if comparison is not None:
            b, i = comparison["bootstrap"], comparison["interval"]
            lines += [
                "",
                f"Student − teacher test {label(primary)}: **{comparison['difference']:+.3f}** ± {comparison['difference_std']:.3f} over seeds "
                f"(student {seed_counts(comparison)} of {len(comparison['per_seed'])}); {i['confidence']:.0%} interval over seeds "
                f"and test examples [{i['low']:+.3f}, {i['high']:+.3f}]: {comparison['verdict']} (secondary: paired t-test "
                f"p={format_p(comparison['t_test_p'])}, {b['confidence']:.0%} test-only bootstrap [{b['low']:+.3f}, {b['high']:+.3f}]).",
            ]
    lines += ["", "![distillation curve](distill_curve.png)", ""]
    return lines


def stage_id(cfg: None, *, key_figures: Mapping[str, Figures] | None = None, **ids: str) -> str:
    # `key_figures` is code (summaries.py, part of this stage's code version), not an input.
    return artifact_id(STAGE, {}, inputs=ids)


def run(cfg: None, store: ArtifactStore, *, key_figures: Mapping[str, Figures], **ids: str) -> str:
    """Build (or find) the report artifact from the run's artifact ids, one per stage before it that ran
    (`pretrain/chain.py` lists them); `key_figures`: how each stage's row in the stage table is written."""
    started = time.time()
    aid = stage_id(cfg, **ids)
    if store.exists(aid):
        log.info("report %s: already built (cache hit)", aid)
        return aid
    results = json.loads((store.local_dir(ids["evaluate"]) / "results.json").read_text())
    with store.build(STAGE, aid, config={}, inputs=ids, started=started) as build:
        plot_comparison(results, build.dir / "comparison.png")
        if results.get("label_budgets"):
            plot_label_budgets(results, build.dir / "label_budgets.png")
        plot_per_class(results, build.dir / "per_class_f1.png")
        plot_confusion(results, build.dir / "confusion_matrix.png")
        curve = json.loads((store.local_dir(ids["pretrain"]) / "curve.json").read_text())
        plot_curve(curve, build.dir / "pretrain_curve.png", title="DAPT: ")
        if "tapt" in ids:
            curve = json.loads((store.local_dir(ids["tapt"]) / "curve.json").read_text())
            plot_curve(curve, build.dir / "tapt_curve.png", title="TAPT: ")
        if "distill" in ids:
            curve = json.loads((store.local_dir(ids["distill"]) / "curve.json").read_text())
            distill = store.manifest(ids["distill"])
            c = distill["config"]
            objective = f"objective: {c['alpha_distill']:g}·T²·KL + {c['alpha_mlm']:g}·MLM (T = {c['temperature']:g})"
            plot_curve(curve, build.dir / "distill_curve.png", title="Distillation: ", objective=objective,
                       teacher_perplexity=distill["metrics"].get("validation_perplexity_teacher"))  # fmt: skip
        plot_fertility(store.manifest(ids["vocab"])["metrics"], build.dir / "fertility.png")
        figures = sorted(p.name for p in build.dir.glob("*.png"))
        (build.dir / "report.md").write_text(render(store, ids, figures, key_figures))
        (build.dir / "comparison.txt").write_text(format_comparison(results) + "\n")
        (build.dir / "summary.json").write_text(json.dumps(summary_rows(store, ids, key_figures), indent=2))
    return aid


if __name__ == "__main__":
    from pretrain.stage_cli import main

    main(STAGE)
