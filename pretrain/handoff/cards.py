"""Model cards and hand-off facts: what `dapt export` writes beside the weights, built from the manifests.

A card goes wherever the model goes (a team's share, the Hugging Face Hub), so it names no folder of this
machine: corpus files are summarised (how many, their bytes, a hash of their contents, a few names relative
to the input folder they were found under, `summaries.public_name`), the task's files are named by file name
and sha256, the base model by the name it was given (never the folder it resolved to), and the full list
of files stays in the artifacts' manifests in the store. Each section appears once, and a card stays short
(under about 150 lines) however many files the corpus has.

`task_model_card` is the card of a fine-tuned classifier (`f-…`, what a team deploys), `model_card` that of
an encoder (`m-…`, `d-…`, `b-…`); `public_lineage` and `public_run` are the same facts for
`dapt_export.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pretrain.core.artifacts import ArtifactStore
from pretrain.core.summaries import decontamination_sentence, hand_over_lines, public_name, seed_counts, sources_summary
from pretrain.models.families import max_sequence_length

LABEL = {"accuracy": "accuracy", "macro_f1": "macro-F1", "micro_f1": "micro-F1"}
# Source files listed by name in a lineage node before they are summarised.
LISTED_SOURCES = 3


def model_folder_of(store: ArtifactStore, aid: str) -> Path:
    stage = store.manifest(aid)["stage"]
    return store.local_dir(aid) if stage == "base" else store.local_dir(aid) / "model"


def ancestors(store: ArtifactStore, aid: str) -> dict[str, dict]:
    """Every artifact in the lineage of `aid` (itself included), by stage; the nearest one wins."""
    found: dict[str, dict] = {}
    queue, seen = [aid], {aid}
    while queue:
        manifest = store.manifest(queue.pop(0))
        found.setdefault(manifest["stage"], manifest)
        children = [child for child in manifest.get("inputs", {}).values() if child not in seen]  # a tampered store may loop
        seen.update(children)
        queue += children
    return found


def base_name(origin: dict | None) -> str:
    """The base model as it was named (`bert-base-uncased`, `pkg:cognition/model`); a local folder by its own name only."""
    source = str((origin or {}).get("source") or "unknown")
    return public_name(source) if source.startswith("/") else source


# --- lineage and run facts, without local paths ---------------------------------------------------------


def public_lineage(store: ArtifactStore, aid: str) -> dict[str, Any]:
    """`store.lineage(aid)` as it may leave this machine: each artifact's id, stage and creation time, the base
    model by name, and its source files summarised (`summaries.sources_summary`: count, bytes, content hash,
    the first few by name relative to their input folder)."""

    def node(tree: dict) -> dict[str, Any]:
        manifest = store.manifest(tree["id"])
        roots = [i for i in (manifest.get("config") or {}).get("inputs", []) if isinstance(i, str)]
        out: dict[str, Any] = {"id": tree["id"], "stage": tree["stage"], "created": tree["created"]}
        if tree.get("origin"):
            out["origin"] = {"source": base_name(tree["origin"]), "revision": tree["origin"].get("revision")}
        if tree["sources"]:
            out["sources"] = sources_summary(tree["sources"], roots, examples=LISTED_SOURCES)
        out["inputs"] = {role: node(child) for role, child in tree["inputs"].items()}
        return out

    return node(store.lineage(aid))


def format_public_lineage(tree: dict[str, Any], indent: str = "", seen: set[str] | None = None) -> list[str]:
    """A public lineage as indented lines: one per artifact, one per source summary; shared ancestors once."""
    seen = set() if seen is None else seen
    if tree["id"] in seen:
        return [f"{indent}{tree['id']}  {tree['stage']}  (shown above)"]
    seen.add(tree["id"])
    lines = [f"{indent}{tree['id']}  {tree['stage']}  {tree['created']}"]
    if tree.get("origin"):
        lines.append(f"{indent}  <- from {tree['origin']['source']}" + (f" (revision {tree['origin']['revision']})" if tree["origin"].get("revision") else ""))
    if tree.get("sources"):
        lines.append(f"{indent}  <- {describe_sources(tree['sources'])}")
    for role, child in tree["inputs"].items():
        lines.append(f"{indent}  <- {role}:")
        lines += format_public_lineage(child, indent + "     ", seen)
    return lines


def describe_sources(summary: dict[str, Any]) -> str:
    """`500 files, 2.1 MB, contents sha256:4f1c…: docs/a.txt, docs/b.txt, docs/c.txt and 497 more`."""
    names = ", ".join(f"`{e['name']}`" for e in summary["examples"])
    more = f" and {summary['files'] - len(summary['examples']):,} more" if summary["files"] > len(summary["examples"]) else ""
    noun = "file" if summary["files"] == 1 else "files"
    return f"{summary['files']:,} {noun}, {_size(summary['bytes'])}, contents sha256:{summary['content_sha256'][:16]}: {names}{more}"


def public_run(run: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """A task model's run record for dapt_export.json: the task's files by name and sha256 (not where they sit),
    the test examples by count and hash (not every example's hash)."""
    task = dict(run["task"])
    for key in ("train_files", "validation_files", "test_files"):
        task[key] = [public_name(p) if isinstance(p, str) else p for p in task.get(key, [])]
    task["files"] = [{"name": public_name(s["path"]), "size": s.get("size"), "sha256": s.get("sha256")} for s in manifest.get("sources", [])]
    out = {**run, "task": task}
    if isinstance(run.get("test_examples"), dict):
        out["test_examples"] = {k: v for k, v in run["test_examples"].items() if k != "keys"}
    return out


def lineage_section(store: ArtifactStore, aid: str) -> list[str]:
    """The card's lineage: every artifact the model was built from, back to the raw files (summarised)."""
    return [
        "## Lineage",
        "",
        "Every artifact this model was built from, back to the raw files (`dapt artifacts lineage ID` lists every file from the store):",
        "",
        "```",
        *format_public_lineage(public_lineage(store, aid)),
        "```",
        "",
    ]


def _size(n: float) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n:,.0f} bytes"


# --- the comparison, the verdict and which model to hand over --------------------------------------------


def comparison_lines(results: dict, evaluation_id: str, this_model: str | None = None) -> list[str]:
    """The evaluation as a card shows it, once: how every model was fine-tuned, mean ± std per model, the
    differences to base with their verdict (seeds better, tied and worse), and which model to hand over."""
    if "primary_metric" not in results:
        return [f"The evaluation `{evaluation_id}` was written by an older dapt whose results are not quoted here.", ""]
    primary = results["primary_metric"]
    metrics = [primary] + [m for m in ("accuracy", "macro_f1") if m != primary]
    lines = [
        f"Evaluation `{evaluation_id}`: {results['task']} ({results['type'].replace('_', '-')}, "
        f"{len(results['labels'])} labels; {results['sizes']['train']:,} train, {results['sizes']['validation']:,} validation, "
        f"{results['sizes']['test']:,} test examples); every model fine-tuned the same way with seeds {results['seeds']}, the epoch "
        "chosen on validation; test mean ± std over seeds.",
        "",
        "| model | artifact | " + " | ".join(f"test {LABEL[m]}" for m in metrics) + " |",
        "| --- | --- | " + "--- | " * len(metrics),
    ]
    for model, r in results["models"].items():
        cells = [f"{r['summary'][m]['mean']:.3f} ± {r['summary'][m]['std']:.3f}" for m in metrics]
        lines.append(f"| {model}{' (this model)' if model == this_model else ''} | `{r['artifact']}` | " + " | ".join(cells) + " |")
    seed_aware = all("interval" in c for c in results["comparisons"])  # evaluations before it have the test-only interval alone
    # The evaluation says how its interval was computed (older ones: a bootstrap over seeds and test examples; now a t-interval).
    how = next((c["interval"].get("method") for c in results["comparisons"] if seed_aware), None)
    method = f"95% interval over seeds and test examples ({how}), and its verdict" if seed_aware else "95% paired-bootstrap interval over test examples"
    lines += ["", f"Differences to the base model (and the student's to its teacher; paired by seed; {method}):" if "student" in results["models"]
              else f"Differences to the base model (paired by seed; {method}):", ""]  # fmt: skip
    for c in results["comparisons"]:
        if c["metric"] in metrics:
            i = c["interval"] if seed_aware else c["bootstrap"]
            lines.append(
                f"- {c['model']} − {c['baseline']}, {LABEL[c['metric']]}: {c['difference']:+.3f} ± {c['difference_std']:.3f} "
                f"({seed_counts(c)} of {len(c['per_seed'])} seeds), CI [{i['low']:+.3f}, {i['high']:+.3f}]" + (f": {c['verdict']}" if seed_aware else "")
            )
    return lines + [""]


def _role_in(evaluation: dict, aid: str) -> str:
    inputs = evaluation["inputs"]
    return "adapted" if inputs.get("adapted") == aid else next(role for role, value in inputs.items() if value == aid)


def pooler_section(folder: Path, task_model: bool) -> list[str]:
    """What `pooler_output` of this model is: trained (and by what), or absent."""
    from safetensors import safe_open

    config = json.loads((folder / "config.json").read_text())
    with safe_open(folder / "model.safetensors", "pt") as f:
        has_pooler = any(".pooler." in f".{key}" for key in f.keys())
    classifier = task_model and "ForSequenceClassification" in " ".join(config.get("architectures", []))
    if has_pooler and classifier:
        what = ("`pooler_output` is the `[CLS]` state through a dense layer and tanh, trained with the classifier in fine-tuning: "
                "it is exactly what the classification head reads. `AutoModel` loads the encoder and this pooler (the head is left out).")  # fmt: skip
    elif has_pooler:
        what = ("`pooler_output` is the `[CLS]` state through a dense layer and tanh, with the pooler weights in this checkpoint "
                "(from the base model's pretraining, not updated by masked-LM adaptation, which does not use it). "
                "For embeddings prefer `last_hidden_state` (CLS or mean pooled).")  # fmt: skip
    else:
        what = ("This checkpoint has no pooler weights (masked-LM training does not use one): `AutoModel` adds a randomly initialised "
                "pooler and lists it as MISSING in its load report, so `pooler_output` means nothing; use `last_hidden_state` "
                "(CLS or mean pooled). A sequence classifier fine-tuned from this model trains its pooler with its head.")  # fmt: skip
    return ["## The pooler", "", what, ""]


# --- the encoder's card -------------------------------------------------------------------------------


def model_card(store: ArtifactStore, aid: str, name: str, evaluation: dict | None, results: dict | None) -> str:
    """README.md for an encoder's export folder, from the manifests in the artifact's lineage."""
    chain = ancestors(store, aid)
    manifest = chain[model_stage := store.manifest(aid)["stage"]]
    base = chain.get("base")
    corpus, vocab, tokens = chain.get("ingest"), chain.get("vocab"), chain.get("tokens")
    origin = (base or {}).get("origin") or {}
    base_model = base_name(origin)
    config = json.loads((model_folder_of(store, aid) / "config.json").read_text())
    lines = [
        "---",
        "library_name: transformers",
        "tags: [bert, fill-mask, domain-adaptation, dapt]",
        "---",
        "",
        f"# {aid}" + (f" ({name})" if name != aid else ""),
        "",
        (
            f"A {config.get('model_type', 'transformer')} encoder ({config.get('num_hidden_layers')} layers x {config.get('hidden_size')}, "
            f"vocabulary {config.get('vocab_size'):,}) adapted to a domain corpus by continued masked-language-model pretraining "
            f"with dapt, starting from `{base_model}`."
            if model_stage == "pretrain"
            else f"A {config.get('num_hidden_layers')}-layer student (hidden size {config.get('hidden_size')}, vocabulary "
            f"{config.get('vocab_size'):,}) distilled by dapt from the domain-adapted `{manifest['inputs'].get('teacher', '?')}` "
            f"(itself continued from `{base_model}`), DistilBERT-style: soft masked-LM targets of the teacher plus the masked-LM loss."
            if model_stage == "distill"
            else f"The base model `{base_model}` as imported by dapt ({config.get('num_hidden_layers')} layers x {config.get('hidden_size')}); not adapted."
        ),
        "",
        "```python",
        "from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer",
        'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")',
        'encoder = AutoModel.from_pretrained("THIS_FOLDER")                      # embeddings: last_hidden_state',
        'classifier = AutoModelForSequenceClassification.from_pretrained("THIS_FOLDER", num_labels=8)  # new head: fine-tune it',
        "```",
        "",
        "## Base model",
        "",
        f"- `{base_model}`" + (f" (revision {origin['revision']})" if origin.get("revision") else "") + (f", imported as `{base['id']}`" if base else ""),
        "",
    ]
    if corpus:
        m = corpus["metrics"]
        roots = [i for i in corpus.get("config", {}).get("inputs", []) if isinstance(i, str)]
        summary = sources_summary(corpus.get("sources", []), roots, examples=LISTED_SOURCES)
        lines += [
            "## Domain corpus",
            "",
            f"- artifact `{corpus['id']}`: {m['documents']:,} documents ({m['train_documents']:,} train / {m['validation_documents']:,} validation), "
            f"{_size(m['bytes'])}, {m['words']:,} words; removed {m['duplicates_removed']:,} exact duplicates"
            + (f", {m['near_duplicates_removed']:,} near duplicates" if "near_duplicates_removed" in m else "")
            + f", {m.get('empty_removed', 0) + m.get('short_removed', 0):,} empty or short documents",
            f"- source files: {summary['files']:,}, {_size(summary['bytes'])}, contents sha256 `{summary['content_sha256']}` (of their "
            "sorted sha256s); " + ", ".join(f"`{e['name']}` (sha256 `{e['sha256']}`)" for e in summary["examples"])
            + (f" and {summary['files'] - len(summary['examples']):,} more" if summary["files"] > len(summary["examples"]) else "")
            + " (every file with its sha256 is in the corpus artifact's manifest)",
            f"- decontamination: {decontamination_sentence(corpus)}",
            "",
        ]
    if vocab:
        m = vocab["metrics"]
        added = m.get("added_tokens", 0 if m["mode"] == "keep" else None)
        lines += [
            "## Vocabulary",
            "",
            f"- mode `{m['mode']}` (artifact `{vocab['id']}`): base vocabulary {m['base_vocab_size']:,} -> model vocabulary "
            f"{m.get('model_vocab_size', m['base_vocab_size']):,}; added tokens: {added if added is not None else 'n/a'}",
            f"- fertility on the corpus' validation split (tokens per word): base {m['fertility_base']:.3f}, domain WordPiece "
            f"{m['fertility_domain']:.3f}" + (f", model {m['fertility_model']:.3f}" if "fertility_model" in m else ""),
            "",
        ]
    if model_stage == "pretrain":
        m, c = manifest["metrics"], manifest["config"]
        env = manifest.get("environment", {})
        hours = m.get("train_seconds", 0) / 3600
        lines += [
            "## Pretraining budget",
            "",
            f"- {m['steps']:,} optimizer steps, {m['tokens']:,} tokens (global batch {m['global_batch_size']} x {c['max_seq_length']} tokens), "
            f"peak learning rate {c['learning_rate']:g}, masking {c['mlm_probability']:g}"
            + (f", {tokens['metrics']['train_tokens']:,} tokens in the train split" if tokens else ""),
            f"- hardware: {m['processes']} x {m['device']}, mixed precision `{c['mixed_precision']}`; "
            f"{m.get('train_seconds', 0):,.0f} s of training ({hours:.2f} h), {m['tokens_per_second']:,.0f} tokens/s",
            f"- validation perplexity {m['validation_perplexity_before']:,.1f} -> {m['validation_perplexity_after']:,.1f}",
            f"- software: {', '.join(f'{k} {v}' for k, v in env.get('packages', {}).items() if k in ('torch', 'transformers', 'accelerate'))}; "
            f"dapt commit {(env.get('git') or {}).get('commit', 'unknown')}",
            "",
        ]
    if model_stage == "distill":
        m = manifest["metrics"]
        lines += [
            "## Distillation",
            "",
            f"- teacher `{manifest['inputs'].get('teacher', '?')}` ({m['teacher_layers']} layers, {m['teacher_parameters']:,} encoder parameters) "
            f"-> student {m['student_layers']} layers, {m['student_parameters']:,} parameters ({m['parameter_ratio']:.0%}), "
            f"initialised from teacher layers {m['initialised_from_teacher_layers']}",
            f"- {m['steps']:,} steps, {m['tokens']:,} tokens; validation perplexity teacher {m['validation_perplexity_teacher']:,.1f}, "
            f"student {m['validation_perplexity_before']:,.1f} -> {m['validation_perplexity_after']:,.1f}",
            f"- CPU throughput at batch {m['cpu_batch_size']}: {m['cpu_speedup']:.2f}x the teacher's",
            "",
        ]
    lines += ["## Downstream results", ""]
    if evaluation is None or results is None:
        lines += ["No evaluation of this model is in the store.", ""]
    else:
        role = _role_in(evaluation, aid)
        lines += [f"This model is `{role}`.", "", *comparison_lines(results, evaluation["id"], this_model=role)]
        if hand_over := hand_over_lines(results):
            lines += ["Task models of this evaluation:", "", *hand_over, ""]
    lines += pooler_section(model_folder_of(store, aid), task_model=False)
    lines += [
        "## Intended use and limits",
        "",
        "- Intended: a starting point for fine-tuning on tasks from the same domain as the corpus above (classification, "
        "token tagging, sentence pairs), and for domain text embeddings (`last_hidden_state`, CLS or mean pooled).",
        "- Not a classifier as is: `AutoModelForSequenceClassification` adds a freshly initialised head that must be fine-tuned.",
        "- Its knowledge is that of the base model plus the corpus above: text from other domains, languages or periods may "
        "do no better than the base model; biases of the corpus (one news agency, one year, one region for the demo) carry over.",
        f"- Inputs longer than {max_sequence_length(config) or 512} tokens must be truncated or split.",
        "- The downstream figures hold for the task and test set named above only; measure on yours before relying on it.",
        "",
        *lineage_section(store, aid),
    ]
    return "\n".join(lines)


# --- the task model's card ---------------------------------------------------------------------------


def test_split_sentence(run: dict, manifest: dict) -> str:
    """Where the run's test and validation examples came from, by file name."""
    task = run["task"]
    record = run.get("test_examples") or {}
    names = lambda key: ", ".join(public_name(p) if isinstance(p, str) else str(p) for p in task.get(key, []))  # noqa: E731
    count = f"{record['examples']:,} examples" if "examples" in record else "examples"
    if task.get("test_files"):
        test = f"test: {count} of {names('test_files')}"
    else:
        test = (f"test: {count} held out of {names('train_files')} by test_fraction {task.get('test_fraction')} (stratified by label, "
                "by a hash of the text: the same examples every time; never trained on)")  # fmt: skip
    fraction = manifest.get("config", {}).get("validation_fraction")
    validation = (f"validation: {names('validation_files')}" if task.get("validation_files")
                  else f"validation: {fraction:.0%} of the rest of {names('train_files')}, held out to choose the epoch" if fraction
                  else "validation: held out of the train files")  # fmt: skip
    return f"{test}; {validation}"


def task_model_card(store: ArtifactStore, aid: str, name: str, run: dict, named: tuple[dict, dict, str] | None, measured: dict | None,
                    measurement_table=None) -> str:  # fmt: skip
    """README.md for a task model's export folder: the task, its scores, the comparison, ONNX figures, lineage.
    `measurement_table`: how the ONNX figures are written (export's table), with `measured`."""
    manifest = store.manifest(aid)
    encoder = manifest["inputs"]["model"]
    chain = ancestors(store, aid)
    base_model = base_name((chain.get("base") or {}).get("origin"))
    folder = store.local_dir(aid) / "model"
    config = json.loads((folder / "config.json").read_text())
    task = run["task"]
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    token = task["type"] == "token"
    auto = "AutoModelForTokenClassification" if token else "AutoModelForSequenceClassification"
    metric = run.get("selection_metric") or ("micro_f1" if token else "macro_f1")
    encoder_stage = store.manifest(encoder)["stage"]
    kind = {"pretrain": "domain-adapted encoder", "distill": "distilled student", "base": "base model"}.get(encoder_stage, encoder_stage)
    files = ", ".join(f"`{public_name(s['path'])}` (sha256 `{s['sha256'][:16]}…`)" for s in manifest.get("sources", [])[:6])
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {'token-classification' if token else 'text-classification'}",
        "tags: [bert, domain-adaptation, dapt]",
        "---",
        "",
        f"# {aid}" + (f" ({name})" if name != aid else ""),
        "",
        f"A {task['type'].replace('_', '-')} {'tagger' if token else 'classifier'} for {task['name']} ({len(labels)} labels: "
        f"{', '.join(labels[:20])}{', ...' if len(labels) > 20 else ''}), fine-tuned by dapt from the {kind} `{encoder}` (itself from "
        f"`{base_model}`), seed {run['seed']}, the epoch chosen on validation {LABEL.get(metric, metric)}.",
        "",
        "```python",
        f"from transformers import {auto}, AutoTokenizer",
        'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")',
        f'model = {auto}.from_pretrained("THIS_FOLDER").eval()',
        f"batch = tokenizer(texts, truncation=True, max_length={run['max_seq_length']}, padding=True, return_tensors=\"pt\")",
        "labels = [model.config.id2label[i] for i in model(**batch).logits.argmax(-1).tolist()]",
        "```",
        "",
        "`dapt predict THIS_FOLDER --input FILE --out OUT.jsonl` does the same over a file (JSONL, CSV, Parquet, text) and keeps its id column.",
        "",
        "## Task and training",
        "",
        f"- task `{task['name']}` ({task['type']}): text field `{task['text_field']}`, label field `{task['label_field']}`; files {files}",
        f"- {test_split_sentence(run, manifest)}",
        f"- fine-tuned with seed {run['seed']}, learning rate {run['learning_rate']:g}, best epoch {run['best_epoch']}"
        + (f" of {run['epochs_trained']} trained" if "epochs_trained" in run else "") + f", inputs up to {run['max_seq_length']} tokens",
        "",
        "## Test scores",
        "",
        "This model (one seed): " + ", ".join(f"{LABEL.get(m, m)} {v:.4f}" for m, v in run["test"].items() if isinstance(v, (int, float)))
        + "; validation " + ", ".join(f"{LABEL.get(m, m)} {v:.4f}" for m, v in run["validation"].items() if m in LABEL) + ".",
        "",
    ]
    if named is None:
        lines += ["No evaluation in the store names this run, so there is no mean over seeds or comparison with the base model here.", ""]
    else:
        evaluation, results, model_name = named
        entry = results["models"][model_name]
        best = (entry.get("best_run") or {}).get("finetune") if isinstance(entry.get("best_run"), dict) else entry.get("best_run")
        where = (" and the best of its seeds on validation." if best == aid else f"; the best of its seeds on validation is `{best}`." if best else ".")
        lines += [f"This run is `{model_name}` seed {run['seed']}{where}", "", *comparison_lines(results, evaluation["id"], this_model=model_name)]
        if hand_over := hand_over_lines(results, this=aid):
            lines += ["## Which model to hand over", "", *hand_over, ""]
    lines += pooler_section(folder, task_model=True)
    if measured and measurement_table is not None:
        on = measured.get("test_source", "the task's test set")
        lines += ["## ONNX and int8 (CPU)", "",
                  f"`model.onnx` is the fp32 graph ({measured['exporter']})"
                  + (f"; `model.int8.onnx` its ONNX Runtime dynamic int8 quantization (`{measured['method']}`)." if "int8" in measured else "."),
                  f"Measured at export on {on}:", "", *measurement_table(measured), "",
                  "```python", "import onnxruntime as ort",
                  'session = ort.InferenceSession("THIS_FOLDER/model.int8.onnx")  # or model.onnx',
                  f"logits = session.run([\"logits\"], dict(tokenizer(texts, truncation=True, max_length={run['max_seq_length']}, padding=True, return_tensors=\"np\")))[0]",
                  "```", ""]  # fmt: skip
    lines += [
        "## Intended use and limits",
        "",
        f"- Intended: {'tagging words of' if token else 'labelling'} texts like those of the task above ({task['name']}) with its "
        f"{len(labels)} labels; anything else is outside what it was trained and measured on.",
        "- The test scores hold for the test set named above only; run `dapt predict` on a labelled sample of your own data before relying on it.",
        f"- Inputs longer than {run['max_seq_length']} tokens are truncated (as in training and testing).",
        "- Biases of the domain corpus and of the task's labelling carry over.",
        "",
        *lineage_section(store, aid),
    ]
    return "\n".join(lines)
