"""What a run and its stages did, as tables and text: key figures per artifact, the stage table of one
stage's artifact, and the comparison of models.

Everything here is read from artifacts (manifests, `results.json`), so the same summaries come out of
the `dapt` CLI, the Prefect flows (their artifacts in the UI) and the report stage. Which key figures a
stage shows is part of the stage table (`pretrain/chain.py`, `Stage.figures`); the functions that
write them are here, one per kind of artifact, and the tables take them as an argument.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Callable, Mapping

from pretrain.core.artifacts import ArtifactStore

# A manifest -> one line of its key figures.
Figures = Callable[[dict], str]

METRIC_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "micro_f1": "micro-F1"}
# Token tasks with BIO tags are scored per entity; accuracy is per word.
ENTITY_LABELS = {"accuracy": "word accuracy", "macro_f1": "entity macro-F1", "micro_f1": "entity F1"}


# --- key figures: one line per artifact, by what it is (`pretrain/chain.py` names each stage's) -------


def base_figures(manifest: dict) -> str:
    """An imported base model: its shape and vocabulary."""
    m = manifest["metrics"]
    line = f"{m.get('model_type')}, {m.get('num_hidden_layers')} layers x {m.get('hidden_size')}, vocab {m.get('vocab_size'):,}"
    return line + ("; no MLM head in the checkpoint: a new one, randomly initialised" if m.get("mlm_head", "").startswith("new") else "")


def corpus_figures(manifest: dict) -> str:
    """A corpus (ingest): its size, what was removed, and the split."""
    m = manifest["metrics"]
    share = 100 * m["train_documents"] / m["documents"]
    near = m.get("near_duplicates_removed", 0)
    overlap = ""
    if "decontamination" in m:
        details = manifest["decontamination"]
        overlap = f"{m['decontamination']['removed']:,} overlapping {details['against']} removed, "
        if any(f.get("held_out_by") for f in details["files"]):  # the long description does not fit a table cell
            splits = [s for s in ("test", "validation") if any(f["key"] == f"{s}_files" for f in details["files"])]
            parts = [f"{f['documents_removed']:,} {f['key'].removesuffix('_files')}" + (f" held out of {public_name(f['path'])}" if f.get("held_out_by") else "")
                     for f in details["files"]]  # fmt: skip
            overlap = (f"{m['decontamination']['removed']:,} overlapping the {details['task']} {' and '.join(splits)} set"
                       f"{'s' if len(splits) > 1 else ''} removed ({', '.join(parts)}), ")  # fmt: skip
    return (
        f"{m['documents']:,} docs, {m['bytes'] / 1e6:.1f} MB; removed {m['duplicates_removed']:,} exact and {near:,} near duplicates, "
        f"{overlap}{m['empty_removed'] + m['short_removed']:,} filtered; {share:.0f}/{100 - share:.0f} train/validation"
    )


def vocab_figures(manifest: dict) -> str:
    """A vocabulary: what the model trains with first, then the domain vocabulary's fit (short enough for a table cell)."""
    m = manifest["metrics"]
    domain = f"domain WordPiece {m['domain_vocab_size']:,}: {m['fertility_domain']:.2f}"
    if m["mode"] != "keep" and "fertility_model" in m:
        added = f" (+{m['added_tokens']:,})" if "added_tokens" in m else ""
        return (
            f"{m['mode']}: {m['model_vocab_size']:,} tokens{added}, {m['fertility_model']:.2f} tokens/word, "
            f"{m['sequence_saving_percent']:.1f}% shorter (base {m['fertility_base']:.2f}; {domain})"
        )
    return f"{m['mode']}: base {m['base_vocab_size']:,} tokens, {m['fertility_base']:.2f} tokens/word ({domain})"


def tokens_figures(manifest: dict) -> str:
    """A tokenised corpus: tokens per split."""
    m = manifest["metrics"]
    return f"{m['train_tokens']:,} train / {m['validation_tokens']:,} validation tokens, {m['bytes_per_token']} bytes/token"


def assessment_figures(manifest: dict) -> str:
    """An assessment (`dapt assess`): the domain shift, the share of words split into 3+ pieces, and the estimate."""
    m = manifest["metrics"]
    shift = f"domain shift x{m['domain_shift']:,.2f}, " if "domain_shift" in m else "no masked-LM head: no perplexity signals, "
    return f"{shift}{100 * m['split3_share_corpus']:.1f}% of words in 3+ pieces; estimate: {m['estimate']}"


def model_figures(manifest: dict) -> str:
    """A pretrained model (DAPT or TAPT): validation perplexity before and after, per token and per word."""
    m = manifest["metrics"]
    random = " (a random MLM head's, not the base model's)" if m.get("mlm_head_before") == "random" else ""
    return (
        f"validation perplexity {m['validation_perplexity_before']:,.1f}{random} -> {m['validation_perplexity_after']:,.1f} "
        f"(steps {m['steps']:,}, {m['tokens_per_second']:,.0f} tok/s)"
    ) + (
        f"; per word {m['validation_word_perplexity_before']:,.1f} -> {m['validation_word_perplexity_after']:,.1f}"
        if "validation_word_perplexity_after" in m
        else ""
    )


def student_figures(manifest: dict) -> str:
    """A distilled student: its size and perplexity against the teacher's, and its CPU speed-up."""
    m = manifest["metrics"]
    return (
        f"student {m['student_layers']} of {m['teacher_layers']} layers, {m['student_parameters'] / 1e6:.2f}M vs "
        f"{m['teacher_parameters'] / 1e6:.2f}M parameters; validation perplexity {m['validation_perplexity_after']:,.1f} "
        f"(teacher {m['validation_perplexity_teacher']:,.1f}); {m['cpu_speedup']:.2f}x CPU throughput at batch {m['cpu_batch_size']}"
    )


def evaluation_figures(manifest: dict) -> str:
    """An evaluation: base and adapted on the test set, their difference and its verdict, the student's cost."""
    m = manifest["metrics"]
    metric = m["primary_metric"]
    label = metric_label(metric, m.get("type"))
    line = (
        f"{m['task']} test {label} over {m['seeds']} seeds: base {m[f'base_{metric}_mean']:.3f} ± {m[f'base_{metric}_std']:.3f}, "
        f"adapted {m[f'adapted_{metric}_mean']:.3f} ± {m[f'adapted_{metric}_std']:.3f}"
    )
    if "adapted_minus_base" in m:
        line += f"; difference {m['adapted_minus_base']:+.3f} [{m['adapted_minus_base_low']:+.3f}, {m['adapted_minus_base_high']:+.3f}]"
        if "adapted_minus_base_verdict" in m:
            line += f" over seeds and test: {m['adapted_minus_base_verdict']}"
    if "student_minus_adapted" in m:
        line += (
            f"; student {m[f'student_{metric}_mean']:.3f} ± {m[f'student_{metric}_std']:.3f}, "
            f"{m['student_minus_adapted']:+.3f} [{m['student_minus_adapted_low']:+.3f}, {m['student_minus_adapted_high']:+.3f}] vs adapted"
        )
    if "label_budgets" in m:
        line += "; adapted − base by labels per class: " + ", ".join(budget_figure(name, b) for name, b in m["label_budgets"].items())
    if m.get("runs_not_converged"):
        line += f"; {m['runs_not_converged']} of {m['finetune_runs']} runs not converged"
    return line


def budget_figure(name: str, figures: dict) -> str:
    """One label budget of an evaluation, as the stage table shows it: `10: +0.050 [+0.008, +0.092] helped`."""
    if "adapted_minus_base" not in figures:
        return f"{name}: -"
    return (f"{name}: {figures['adapted_minus_base']:+.3f} [{figures['adapted_minus_base_low']:+.3f}, {figures['adapted_minus_base_high']:+.3f}] "
            f"{figures['adapted_minus_base_verdict']}")  # fmt: skip


def decontamination_sentence(manifest: dict) -> str:
    """What decontamination did to a corpus, as the report says it: 'Removed 37 documents overlapping the R8
    test set (12 exact copies, 5 near duplicates, 20 containing a test text); 30 of its 2,133 texts were
    found in the corpus.'"""
    m, details = manifest["metrics"].get("decontamination"), manifest.get("decontamination")
    if not m or not details:
        return "The corpus was not checked against the task's test texts (`ingest.decontaminate.enabled: false`)."
    noun = "document" if m["removed"] == 1 else "documents"
    kinds = f" ({m['exact']:,} exact copies, {m['near']:,} near duplicates, {m['contained']:,} containing a task text)" if m["removed"] else ""
    sentence = (
        f"Removed {m['removed']:,} {noun} overlapping {details['against']}{kinds}; {m['task_texts_found']:,} of its "
        f"{m['task_texts']:,} texts were found in the corpus."
    )
    if len(details["files"]) > 1 or any(f.get("held_out_by") for f in details["files"]):
        sentence += " By set: " + "; ".join(
            f"{f['documents_removed']:,} matching {set_name(f)}, {f['texts_found']:,} of its {f['texts']:,} texts found" for f in details["files"]
        ) + "."
    return sentence


def set_name(entry: dict) -> str:
    """A set of task texts as reports name it, by file name only: `test (r8_test.jsonl.gz)`,
    `test (held out of labelled.csv by test_fraction)`."""
    split, name = entry.get("key", entry.get("set", "?")).removesuffix("_files"), public_name(entry.get("path", "?"))
    return f"{split} (held out of {name} by {entry['held_out_by']})" if entry.get("held_out_by") else f"{split} ({name})"


def removed_documents(manifest: dict, limit: int = 20) -> list[str]:
    """The removed documents the corpus manifest names (its examples), one line each: the corpus file (relative to
    its input), the kind of overlap and the task text it matched, with its set."""
    details = manifest.get("decontamination") or {}
    roots = [i for i in manifest.get("config", {}).get("inputs", []) if isinstance(i, str)]
    lines = []
    for e in details.get("examples", [])[:limit]:
        where, _, line = e["task_text"].rpartition(":")
        text = f"{public_name(where)}:{line}" if where else e["task_text"]
        matched = set_name({"key": e["set"], "path": where, "held_out_by": e.get("held_out_by")}) if "set" in e else "a task text"
        what = {"exact": "an exact copy of", "near": f"a near duplicate (similarity {e['score']:.2f}) of", "contained": "contains"}[e["kind"]]
        lines.append(f"`{public_name(e['corpus_file'], roots)}`: {what} {text}, {matched}")
    return lines


def public_name(path: str, roots: list[str] | tuple[str, ...] = ()) -> str:
    """A file as a document meant for others may name it, never with the folders of this machine: relative to
    the input folder (or glob) it was found under, that folder's own name kept (`docs/a.txt`); else an
    absolute local path is cut to its file name; relative paths, URLs and datasets stay as they are."""
    text = str(path)
    for root in sorted((r for r in roots if isinstance(r, str)), key=len, reverse=True):
        base = re.split(r"[*?\[]", root, maxsplit=1)[0].rstrip("/")
        if base and (text == base or text.startswith(base + "/")):
            return text[len(base.rpartition("/")[0]) + 1 :] if "/" in base else text
    return text.rsplit("/", 1)[-1] if text.startswith("/") else text


def sources_summary(sources: list[dict], roots: list[str] | tuple[str, ...] = (), examples: int = 3) -> dict[str, Any]:
    """Input files in short, for a card or a hand-off manifest: how many, their bytes, a hash of their contents
    (sha256 of their sorted sha256s: the same files give the same hash wherever they sit and whatever their
    names), and the first few, named by `public_name`. The full list stays in the artifact's manifest."""
    digests = sorted(s.get("sha256", "") for s in sources)
    return {
        "files": len(sources),
        "bytes": sum(s.get("size", 0) for s in sources),
        "content_sha256": hashlib.sha256("\n".join(digests).encode()).hexdigest(),
        "examples": [{"name": public_name(s["path"], roots), "size": s.get("size"), "sha256": s.get("sha256")} for s in sources[:examples]],
    }


def seed_tally(comparison: dict) -> tuple[int, int, int]:
    """How many seeds the model scored above, the same as, and below its baseline (a tie is an equal score, not a loss)."""
    differences = comparison["per_seed"]
    better, worse = sum(d > 0 for d in differences), sum(d < 0 for d in differences)
    return better, len(differences) - better - worse, worse


def seed_counts(comparison: dict) -> str:
    """`better in 1, tied in 2, worse in 0`."""
    return "better in {}, tied in {}, worse in {}".format(*seed_tally(comparison))


def headline_comparison(results: dict) -> dict | None:
    """adapted − base on the primary metric."""
    return next((c for c in results.get("comparisons", []) if c["model"] == "adapted" and c["baseline"] == "base"
                 and c["metric"] == results.get("primary_metric")), None)  # fmt: skip


def hand_over_lines(results: dict, this: str | None = None) -> list[str]:
    """Which task model to hand over (`results.json` `best`, chosen on validation) and, when adaptation did not
    clearly help, that the base model's best run is as good a choice, named. `this`: the run the card is about."""
    best = results.get("best")
    if not best:
        return []
    metric = results["primary_metric"]
    said = "this model" if best["finetune"] == this else f"`{best['finetune']}`"
    lines = [
        f"- Hand over {said}: `{best['model']}` seed {best['seed']}, learning rate {best['learning_rate']:g} "
        f"(validation {METRIC_LABELS.get(metric, metric)} {best['validation_' + metric]:.4f}), chosen on validation, never on test: "
        f"{best['why']}. `dapt export best` (or `dapt export {best['finetune']}`) exports it.",
    ]
    c = headline_comparison(results)
    base = results["models"].get("base", {}).get("best_run")
    if c is not None and c["verdict"] != "helped" and base:
        why = {"hurt": "adaptation hurt on test", "no clear difference": "adaptation made no clear difference on test",
               "no verdict": "there are too few seeds for a verdict"}.get(c["verdict"], c["verdict"])  # fmt: skip
        if best["model"] == "base":
            lines.append(f"- That is the base model's own task model: {why}, so the adapted encoder buys nothing here.")
        else:
            lines.append(
                f"- {why[0].upper() + why[1:]} ({c['difference']:+.3f}): the base model's task model `{base['finetune']}` "
                f"(`base` seed {base['seed']}, its best on validation) is as good a choice, and needs no adapted encoder."
            )
    elif c is not None and c["verdict"] == "helped" and best["model"] == "base":
        adapted = results["models"]["adapted"]["best_run"]
        lines.append(f"- On test, adaptation helped ({c['difference']:+.3f}); the adapted model's best run on validation is `{adapted['finetune']}`.")
    return lines


def metric_label(metric: str, kind: str | None, tag_scheme: str | None = "BIO") -> str:
    """How a metric is named for a task type (per entity for BIO-tagged token tasks)."""
    labels = ENTITY_LABELS if kind == "token" and tag_scheme == "BIO" else METRIC_LABELS
    return labels[metric]


def summary_rows(store: ArtifactStore, ids: dict[str, str], figures: Mapping[str, Figures], cached: dict[str, bool] | None = None) -> list[dict]:
    """One row per stage: its artifact and key figures (`figures[stage]`; and whether it was a cache hit, given `cached`)."""
    rows = []
    for role, aid in ids.items():
        manifest = store.manifest(aid)
        row = {"stage": role, "artifact": aid, "key figures": figures[role](manifest) if role in figures else ""}
        if cached is not None:
            row["cached"] = "yes" if cached.get(role) else "no"
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Rows as a plain-text table with aligned columns, as `dapt run` prints it."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


# --- the comparison of models -----------------------------------------------------------------------


def shown_metrics(results: dict) -> list[str]:
    """The primary metric first; micro-F1 is left out for single-label tasks, where it equals accuracy."""
    primary = results["primary_metric"]
    rest = [m for m in ("accuracy", "macro_f1", "micro_f1") if m != primary]
    if results["type"] == "single_label":
        rest = [m for m in rest if m != "micro_f1"]
    return [primary, *rest]


def mean_std(summary: dict) -> str:
    """`mean ± std` of a score over seeds."""
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def format_p(value: float | None) -> str:
    """A p-value to 3 significant digits; n/a when there was none (a single seed)."""
    return "n/a" if value is None else f"{value:.3g}"


def grid_searched(results: dict) -> bool:
    """Whether each model chose its learning rate from a grid (`evaluate.learning_rates`)."""
    return len(results.get("learning_rates", [])) > 1


def format_comparison(results: dict) -> str:
    """The comparison as plain text: mean ± std per model, each seed, and every model minus base with its verdict."""
    metrics = shown_metrics(results)
    primary = results["primary_metric"]
    label = lambda m: metric_label(m, results["type"], results.get("tag_scheme"))  # noqa: E731
    grid = grid_searched(results)
    rows = [["model", *[label(m) for m in metrics], f"{label(primary)} per seed", "best epochs", *(["learning rate"] if grid else [])]]
    for name, r in results["models"].items():
        rows.append([
            name,
            *[mean_std(r["summary"][m]) for m in metrics],
            " ".join(f"{v:.3f}" for v in r["summary"][primary]["values"]),
            " ".join(str(run["best_epoch"]) for run in r["runs"]),
            *([f"{r['learning_rate']:g}"] if grid else []),
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rates = f"learning rate chosen per model on mean validation {label(primary)} from {results['learning_rates']}; " if grid else ""
    lines = [
        f"{results['task']}: {results['sizes']['test']:,} test examples, {len(results['labels'])} labels, seeds {results['seeds']}; "
        f"{rates}epoch chosen on validation {label(primary)}",
        *["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows],
    ]
    for c in sorted(results["comparisons"], key=lambda c: metrics.index(c["metric"]) if c["metric"] in metrics else 99):
        if c["metric"] not in metrics[:2]:
            continue
        b = c["bootstrap"]
        line = f"{c['model']} − {c['baseline']} {label(c['metric'])}: {c['difference']:+.3f} ± {c['difference_std']:.3f} over seeds ({seed_counts(c)} of {len(c['per_seed'])})"
        if "interval" in c:  # evaluations from before the seed-aware interval have only the secondary figures
            i = c["interval"]
            line += f"; {i['confidence']:.0%} interval over seeds and test [{i['low']:+.3f}, {i['high']:+.3f}]: {c['verdict']}; secondary"
        lines.append(f"{line}: paired t-test p={format_p(c['t_test_p'])}, {b['confidence']:.0%} test-only bootstrap CI [{b['low']:+.3f}, {b['high']:+.3f}]")
    if best := results.get("best"):
        line = (f"hand over: {best['finetune']} ({best['model']} seed {best['seed']}, lr {best['learning_rate']:g}; chosen on validation, "
                "not on test): `dapt export best --to DIR`")  # fmt: skip
        headline = next((c for c in results["comparisons"] if c["model"] == "adapted" and c["metric"] == primary), None)
        base = results["models"].get("base", {}).get("best_run")
        if headline is not None and headline["verdict"] != "helped" and best["model"] != "base" and base:
            line += f"; adaptation did not clearly help, so base's {base['finetune']} (seed {base['seed']}) is as good a choice"
        lines.append(line)
    if results.get("label_budgets"):
        lines += ["", *format_budgets(results)]
    convergence = results.get("convergence")
    if convergence and convergence["not_converged"]:
        lines.append(
            f"warning: {convergence['not_converged']} of {convergence['runs']} fine-tuning runs chose their last allowed epoch "
            f"({convergence['num_epochs']}): not converged; raise evaluate.num_epochs"
        )
    return "\n".join(lines)

VERDICT_WORDS = {"helped": "helped", "hurt": "hurt", "no clear difference": "made no clear difference", "no verdict": "gave no verdict"}


def budget_label(entry: dict) -> str:
    """A label budget as tables show it: `10`, or `all (5,006)`."""
    return entry["name"] if entry["labels_per_class"] is not None else f"all ({entry['train']:,})"


def budget_comparison(entry: dict, results: dict, model: str = "adapted") -> dict | None:
    """`model` − base on the primary metric at one label budget."""
    return next((c for c in entry["comparisons"] if c["model"] == model and c["baseline"] == "base" and c["metric"] == results["primary_metric"]), None)


def budget_sentence(results: dict) -> str:
    """Where adaptation paid off along the label-budget curve, in one sentence: "Adaptation helped up to 50 labels
    per class and made no clear difference from 200 labels per class on." (consecutive budgets with one verdict
    are one stretch)."""
    entries = [e for e in results["label_budgets"] if budget_comparison(e, results) is not None]
    if not entries:
        return ""
    stretches: list[tuple[str, list[dict]]] = []
    for entry in entries:
        said = VERDICT_WORDS[budget_comparison(entry, results)["verdict"]]
        if stretches and stretches[-1][0] == said:
            stretches[-1][1].append(entry)
        else:
            stretches.append((said, [entry]))
    at = lambda e: f"{e['labels_per_class']} labels per class" if e["labels_per_class"] is not None else f"all {e['train']:,} labels"  # noqa: E731
    if len(stretches) == 1:
        said, group = stretches[0]
        return f"Adaptation {said} at every label budget measured ({', '.join(budget_label(e) for e in group)})."
    parts = []
    for i, (said, group) in enumerate(stretches):
        first, last = group[0], group[-1]
        if len(group) == 1:
            parts.append(f"{said} {'with' if first['labels_per_class'] is None else 'at'} {at(first)}")
        elif i == 0:
            parts.append(f"{said} up to {at(last)}")
        elif i == len(stretches) - 1 and last["labels_per_class"] is None:
            parts.append(f"{said} from {at(first)} on")
        else:
            parts.append(f"{said} from {first['labels_per_class']} to {at(last)}")
    return f"Adaptation {', '.join(parts[:-1])} and {parts[-1]}."


def format_budgets(results: dict) -> list[str]:
    """The label-budget curve as plain text: per budget, train examples, each model's mean, adapted − base and the verdict."""
    primary = results["primary_metric"]
    label = metric_label(primary, results["type"], results.get("tag_scheme"))
    names = list(results["label_budgets"][0]["models"])
    rows = [["labels/class", "train", *names, "adapted − base, 95% interval", "verdict"]]
    for entry in results["label_budgets"]:
        c = budget_comparison(entry, results)
        cells = [f"{c['difference']:+.3f} [{c['interval']['low']:+.3f}, {c['interval']['high']:+.3f}]", c["verdict"]] if c else ["-", "-"]
        rows.append([entry["name"], f"{entry['train']:,}", *[mean_std(entry["models"][n]["summary"][primary]) for n in names], *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"test {label} by label budget (labels per class; validation and test the same for every budget):"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return lines + [budget_sentence(results)]


# --- one stage's artifact ----------------------------------------------------------------------------


def stage_table(manifest: dict, cached: bool, seconds: float, figures: Figures | None) -> list[dict]:
    """One stage's artifact as rows of (field, value): id, cache hit, seconds, inputs, outputs, key
    figures (`figures`, none for a stage without), then every scalar metric."""
    files = manifest["files"]
    size = sum(f["size"] for f in files.values())
    inputs = manifest.get("inputs", {})
    rows = [
        {"field": "artifact", "value": manifest["id"]},
        {"field": "cache hit", "value": "yes" if cached else "no"},
        {"field": "seconds in this run", "value": round(seconds, 2)},
        {"field": "seconds to build", "value": manifest.get("duration_s")},
        {"field": "inputs", "value": ", ".join(f"{role}: {i}" for role, i in inputs.items()) or "-"},
        {"field": "raw files read", "value": len(manifest.get("sources", []))},
        {"field": "outputs", "value": f"{len(files)} files, {size / 1e6:.2f} MB"},
        {"field": "key figures", "value": figures(manifest) if figures else ""},
    ]
    return rows + [{"field": name, "value": value} for name, value in scalar_metrics(manifest).items()]


def scalar_metrics(manifest: dict) -> dict[str, Any]:
    """The manifest's metrics with nested names flattened (`a.b`), scalars only."""
    return {k: v for k, v in _flatten(manifest.get("metrics", {})).items() if isinstance(v, (int, float, str, bool))}


def _flatten(value: dict, prefix: str = "") -> dict:
    flat = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict):
            flat.update(_flatten(item, name + "."))
        elif not isinstance(item, list):
            flat[name] = item
    return flat


# --- a pipeline run ----------------------------------------------------------------------------------


def run_summary(rows: list[dict], comparison: str, cached: dict[str, bool], seconds: float, report: str) -> str:
    """What `dapt run` prints at the end: the stage table, the comparison, cache hits and the report's path."""
    return "\n".join([
        "",
        format_table(rows),
        "",
        comparison,
        "",
        f"{sum(cached.values())}/{len(cached)} stages were cache hits; {seconds:.0f} s in the pipeline",
        f"report: {report}",
    ])  # fmt: skip
