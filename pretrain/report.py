"""Report: one Markdown page (and a loss-curve PNG) summarising a pipeline run from its artifacts.

    python -m pretrain.report --config configs/demo.yaml

Output (report artifact `r-...`): `report.md`, `pretrain_curve.png`, `summary.json` (the stage table).
Everything in it is read from the manifests and files of the input artifacts, so the report of an
old run can be rebuilt from the store alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pretrain.artifacts import ArtifactStore, artifact_id

log = logging.getLogger(__name__)

STAGE = "report"
ROLES = ("base", "ingest", "vocab", "tokens", "pretrain", "evaluate")


def key_figures(manifest: dict) -> str:
    """One line of the figures that matter for an artifact, as the summary table shows them."""
    m = manifest["metrics"]
    stage = manifest["stage"]
    if stage == "base":
        return f"{m.get('model_type')}, {m.get('num_hidden_layers')} layers x {m.get('hidden_size')}, vocab {m.get('vocab_size'):,}"
    if stage == "ingest":
        share = 100 * m["train_documents"] / m["documents"]
        return (
            f"{m['documents']:,} docs, {m['bytes'] / 1e6:.1f} MB, {m['duplicates_removed']:,} exact duplicates removed, "
            f"{m['empty_removed'] + m['short_removed']:,} filtered, {share:.0f}/{100 - share:.0f} train/validation"
        )
    if stage == "vocab":
        return (
            f"{m['base_vocab_size']:,} -> domain WordPiece {m['domain_vocab_size']:,}; fertility base "
            f"{m['fertility_base']:.2f} -> domain {m['fertility_domain']:.2f} tokens/word (mode {m['mode']})"
        )
    if stage == "tokens":
        return f"{m['train_tokens']:,} train / {m['validation_tokens']:,} validation tokens, {m['bytes_per_token']} bytes/token"
    if stage == "pretrain":
        return (
            f"validation perplexity {m['validation_perplexity_before']:,.1f} -> {m['validation_perplexity_after']:,.1f} "
            f"(steps {m['steps']:,}, {m['tokens_per_second']:,.0f} tok/s)"
        )
    if stage == "evaluate":
        return (
            f"{m['task']} test  base: acc {m['base_accuracy']:.3f} macro-F1 {m['base_macro_f1']:.3f}   "
            f"adapted: acc {m['adapted_accuracy']:.3f} macro-F1 {m['adapted_macro_f1']:.3f}"
        )
    return ""


def summary_rows(store: ArtifactStore, ids: dict[str, str], cached: dict[str, bool] | None = None) -> list[dict]:
    rows = []
    for role, aid in ids.items():
        manifest = store.manifest(aid)
        row = {"stage": role, "artifact": aid, "key figures": key_figures(manifest)}
        if cached is not None:
            row["cached"] = "yes" if cached.get(role) else "no"
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def plot_curve(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    train = [p for p in curve if "loss" in p]
    left.plot([p["step"] for p in train], [p["loss"] for p in train], marker=".")
    left.set(xlabel="optimizer step", ylabel="training MLM loss", title="Training loss")
    validation = [p for p in curve if "validation_perplexity" in p]
    right.plot([p["step"] for p in validation], [p["validation_perplexity"] for p in validation], marker="o", color="C1")
    right.set(xlabel="optimizer step", ylabel="perplexity (log scale)", title="Validation perplexity", yscale="log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(store: ArtifactStore, ids: dict[str, str]) -> str:
    manifests = {role: store.manifest(aid) for role, aid in ids.items()}
    corpus, vocab, model, evaluation = (manifests[r]["metrics"] for r in ("ingest", "vocab", "pretrain", "evaluate"))
    results = json.loads((store.local_dir(ids["evaluate"]) / "results.json").read_text())
    lines = [
        "# Domain-adaptive pretraining report",
        "",
        "## Stages",
        "",
        "| stage | artifact | key figures |",
        "| --- | --- | --- |",
        *[f"| {r['stage']} | `{r['artifact']}` | {r['key figures']} |" for r in summary_rows(store, ids)],
        "",
        f"## Downstream: {results['task']} ({results['test_size']:,} test documents, {len(results['labels'])} labels)",
        "",
        "Same head, hyperparameters, seeds and data order for both models; epoch chosen on validation macro-F1.",
        "",
        "| model | test accuracy | test macro-F1 | seeds |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in results["models"].items():
        lines.append(
            f"| {name} (`{r['artifact']}`) | {r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f} "
            f"| {r['test_macro_f1_mean']:.4f} ± {r['test_macro_f1_std']:.4f} | {len(r['runs'])} |"
        )
    delta = evaluation["adapted_macro_f1"] - evaluation["base_macro_f1"]
    lines += [
        "",
        f"Adapted − base macro-F1: **{delta:+.4f}**.",
        "",
        "## Continued pretraining",
        "",
        f"Validation perplexity (same blocks and masks): **{model['validation_perplexity_before']:,.1f} → "
        f"{model['validation_perplexity_after']:,.1f}** after {model['steps']:,} steps "
        f"({model['tokens']:,} tokens, global batch {model['global_batch_size']}, {model['processes']} × {model['device']}, "
        f"{model['tokens_per_second']:,.0f} tokens/s).",
        "",
        "![pretraining curve](pretrain_curve.png)",
        "",
        "## Corpus and vocabulary",
        "",
        f"- {corpus['documents']:,} documents ({corpus['train_documents']:,} train / {corpus['validation_documents']:,} validation), "
        f"{corpus['bytes'] / 1e6:.1f} MB, {corpus['words']:,} words; removed {corpus['duplicates_removed']:,} exact duplicates, "
        f"{corpus['empty_removed']:,} empty and {corpus['short_removed']:,} short documents.",
        f"- Fertility on validation (tokens per word): base tokenizer {vocab['fertility_base']:.3f}, domain WordPiece "
        f"({vocab['domain_vocab_size']:,}) {vocab['fertility_domain']:.3f}. The model trains with: `{vocab['mode']}`.",
        "",
        "## Lineage",
        "",
        *[f"- {role}: `{aid}` ({manifests[role]['created']})" for role, aid in ids.items()],
        "",
        "`dapt artifacts lineage ID` prints the full chain back to the raw files.",
    ]
    return "\n".join(lines) + "\n"


def stage_id(cfg: None, **ids: str) -> str:
    return artifact_id(STAGE, {}, inputs={role: ids[role] for role in ROLES})


def run(cfg: None, store: ArtifactStore, **ids: str) -> str:
    """Build (or find) the report artifact from the run's artifact ids, one per role in ROLES."""
    ids = {role: ids[role] for role in ROLES}
    aid = stage_id(cfg, **ids)
    if store.exists(aid):
        log.info("report %s: already built (cache hit)", aid)
        return aid
    with store.build(STAGE, aid, config={}, inputs=ids) as build:
        curve = json.loads((store.local_dir(ids["pretrain"]) / "curve.json").read_text())
        plot_curve(curve, build.dir / "pretrain_curve.png")
        (build.dir / "report.md").write_text(render(store, ids))
        (build.dir / "summary.json").write_text(json.dumps(summary_rows(store, ids), indent=2))
    return aid


if __name__ == "__main__":
    from pretrain.pipeline import stage_main

    stage_main(STAGE)
