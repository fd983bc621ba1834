"""Export: hand a model artifact over as a standalone Hugging Face folder with a model card.

    dapt export production --to exported/reuters-bert
    dapt export m-722717eccb734486a6b7 --to exported/int8 --quantize int8
    dapt export production --to exported/reuters-bert --push-to-hub my-org/reuters-bert

The folder holds `config.json`, `model.safetensors` and the tokenizer files, copied byte for byte from
the (verified) artifact, so `AutoModel.from_pretrained(folder)` and
`AutoModelForSequenceClassification.from_pretrained(folder)` load it with no project code; plus
`README.md` (the model card: base model, corpus, vocabulary, pretraining budget, downstream results
against the base model, intended use and limits, the full lineage) and `dapt_export.json` (the same
facts for machines). With `--quantize int8` the int8 model is measured on the downstream task and the
figures go into the card and `quantization.json` (see `pretrain/quantize.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

from pretrain import registry
from pretrain.artifacts import ArtifactStore, environment, file_digest, format_lineage, respect_umask
from pretrain.errors import InputError, UserError
from pretrain.logs import get_logger

log = get_logger(__name__)

MODEL_STAGES = ("base", "pretrain", "distill")
CARD = "README.md"
FACTS = "dapt_export.json"
QUANTIZATION = "quantization.json"


def model_folder(store: ArtifactStore, aid: str) -> Path:
    """The Hugging Face folder inside a model artifact."""
    stage = store.manifest(aid)["stage"]
    if stage not in MODEL_STAGES:
        raise InputError(
            f"artifact {aid} is a {stage} artifact, not a model; export a pretrain (m-…), distill (d-…) or base (b-…) artifact or an alias of one"
        )
    folder = store.local_dir(aid)
    return folder if stage == "base" else folder / "model"


def _ancestors(store: ArtifactStore, aid: str) -> dict[str, dict]:
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


def evaluation_of(store: ArtifactStore, aid: str) -> dict | None:
    """The newest evaluation artifact that fine-tuned `aid` (as the adapted model, the base, or a listed model)."""
    found = None
    for other in store.ids():  # oldest first: the last match is the newest
        manifest = store.manifest(other)
        if manifest["stage"] == "evaluate" and aid in manifest.get("inputs", {}).values():
            found = manifest
    return found


def _role_in(evaluation: dict, aid: str) -> str:
    inputs = evaluation["inputs"]
    return "adapted" if inputs.get("adapted") == aid else next(role for role, value in inputs.items() if value == aid)


def export(
    store: ArtifactStore,
    name: str,
    to: str | os.PathLike,
    quantize: str | None = None,
    push_to_hub: str | None = None,
    private: bool = True,
    hf_api_factory: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Write the export folder for artifact or alias `name`; returns the export facts (dapt_export.json)."""
    if quantize not in (None, "int8"):
        raise UserError(f"--quantize {quantize}: only int8 is supported")
    target = Path(to)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} already exists and is not an empty folder; choose another --to or remove it")
    aid = registry.resolve(store, name)
    folder = model_folder(store, aid)
    problems = registry.verify(store, aid)
    if problems:
        raise InputError(f"artifact {aid} fails verification, not exporting it:\n  " + "\n  ".join(problems))
    log.info("export %s (%s) -> %s", aid, name, target)

    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name != "manifest.json":
                shutil.copy2(path, staging / path.name)
        evaluation = evaluation_of(store, aid)
        results = json.loads((store.local_dir(evaluation["id"]) / "results.json").read_text()) if evaluation else None
        quantization = None
        if quantize == "int8":
            if evaluation is None:
                raise InputError(
                    f"--quantize int8 measures the int8 model on the downstream task of an evaluation of {aid}, and the store "
                    f"{store.url} has none; run the evaluate stage on this model first (`dapt run CONFIG`)"
                )
            from pretrain.quantize import measure

            quantization = {"evaluation": evaluation["id"], **measure(staging, evaluation["config"])}
            (staging / QUANTIZATION).write_text(json.dumps(quantization, indent=1) + "\n")
        facts = _facts(store, aid, name, staging, evaluation, quantization)
        (staging / CARD).write_text(model_card(store, aid, name, evaluation, results, quantization))
        (staging / FACTS).write_text(json.dumps(facts, indent=1, default=str) + "\n")
        if target.exists():
            target.rmdir()  # empty (checked above)
        respect_umask(staging)  # copies keep the mode of files written 0600 before artifacts followed the umask
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if push_to_hub:
        facts["hub_url"] = push(target, push_to_hub, aid, private=private, api_factory=hf_api_factory)
    return facts


def _facts(store: ArtifactStore, aid: str, name: str, folder: Path, evaluation: dict | None, quantization: dict | None) -> dict[str, Any]:
    return {
        "artifact": aid,
        "requested_as": name,
        "store": store.url,
        "stage": store.manifest(aid)["stage"],
        "files": {p.name: file_digest(p) for p in sorted(folder.iterdir()) if p.is_file()},
        "evaluation": evaluation["id"] if evaluation else None,
        "quantization": quantization,
        "lineage": store.lineage(aid),
        "exported_with": {"git": environment()["git"], "packages": environment()["packages"]},
    }


# --- the model card ----------------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def model_card(store: ArtifactStore, aid: str, name: str, evaluation: dict | None, results: dict | None, quantization: dict | None) -> str:
    """README.md for the export folder, from the manifests in the artifact's lineage."""
    chain = _ancestors(store, aid)
    manifest = chain[model_stage := store.manifest(aid)["stage"]]
    base = chain.get("base")
    corpus, vocab, tokens = chain.get("ingest"), chain.get("vocab"), chain.get("tokens")
    origin = (base or {}).get("origin") or {}
    base_name = origin.get("source", "unknown")
    config = json.loads((model_folder(store, aid) / "config.json").read_text())
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
            f"with dapt, starting from `{base_name}`."
            if model_stage == "pretrain"
            else f"A {config.get('num_hidden_layers')}-layer student (hidden size {config.get('hidden_size')}, vocabulary "
            f"{config.get('vocab_size'):,}) distilled by dapt from the domain-adapted `{manifest['inputs'].get('teacher', '?')}` "
            f"(itself continued from `{base_name}`), DistilBERT-style: soft masked-LM targets of the teacher plus the masked-LM loss."
            if model_stage == "distill"
            else f"The base model `{base_name}` as imported by dapt ({config.get('num_hidden_layers')} layers x {config.get('hidden_size')}); not adapted."
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
        f"- `{base_name}`" + (f" (revision {origin['revision']})" if origin.get("revision") else "") + (f", imported as `{base['id']}`" if base else ""),
        f"- resolved from: {origin.get('resolved', 'n/a')}",
        "",
    ]
    if corpus:
        m = corpus["metrics"]
        lines += [
            "## Domain corpus",
            "",
            f"- artifact `{corpus['id']}`: {m['documents']:,} documents ({m['train_documents']:,} train / {m['validation_documents']:,} validation), "
            f"{_mb(m['bytes'])}, {m['words']:,} words; removed {m['duplicates_removed']:,} exact duplicates"
            + (f", {m['near_duplicates_removed']:,} near duplicates" if "near_duplicates_removed" in m else "")
            + f", {m.get('empty_removed', 0) + m.get('short_removed', 0):,} empty or short documents",
            "- source files (sha256):",
            *[f"  - `{s['path']}` {s['size']:,} bytes, `{s['sha256']}`" for s in corpus.get("sources", [])],
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
            f"- hardware: {m['processes']} x {m['device']} on host `{env.get('host', '?')}`, mixed precision `{c['mixed_precision']}`; "
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
    lines += _downstream(aid, evaluation, results)
    if quantization:
        lines += quantization_section(quantization)
    lines += [
        "## Intended use and limits",
        "",
        "- Intended: a starting point for fine-tuning on tasks from the same domain as the corpus above (classification, "
        "token tagging, sentence pairs), and for domain text embeddings (`last_hidden_state`, CLS or mean pooled).",
        "- Not a classifier as is: `AutoModelForSequenceClassification` adds a freshly initialised head that must be fine-tuned.",
        "- Its knowledge is that of the base model plus the corpus above: text from other domains, languages or periods may "
        "do no better than the base model; biases of the corpus (one news agency, one year, one region for the demo) carry over.",
        f"- Inputs longer than {config.get('max_position_embeddings', 512)} tokens must be truncated or split.",
        "- The downstream figures hold for the task and test set named above only; measure on yours before relying on it.",
        "",
        "## Lineage",
        "",
        "Every artifact this model was built from, back to the raw files (`dapt artifacts lineage ID` prints it from the store):",
        "",
        "```",
        format_lineage(store.lineage(aid)),
        "```",
        "",
    ]
    return "\n".join(lines)


def _downstream(aid: str, evaluation: dict | None, results: dict | None) -> list[str]:
    if evaluation is None or results is None:
        return ["## Downstream results", "", "No evaluation of this model is in the store.", ""]
    if "primary_metric" not in results:
        return ["## Downstream results", "", f"The evaluation `{evaluation['id']}` was written by an older dapt whose results are not quoted here.", ""]
    role = _role_in(evaluation, aid)
    metrics = [results["primary_metric"]] + [m for m in ("accuracy", "macro_f1") if m != results["primary_metric"]]
    label = {"accuracy": "accuracy", "macro_f1": "macro-F1", "micro_f1": "micro-F1"}
    lines = [
        "## Downstream results",
        "",
        f"{results['task']} ({results['type'].replace('_', '-')}, {len(results['labels'])} labels; {results['sizes']['train']:,} train, "
        f"{results['sizes']['test']:,} test examples), evaluation artifact `{evaluation['id']}`: every model fine-tuned the same way with "
        f"seeds {results['seeds']}, epoch chosen on validation; test mean ± std over seeds. This model is `{role}`.",
        "",
        "| model | artifact | " + " | ".join(f"test {label[m]}" for m in metrics) + " |",
        "| --- | --- | " + "--- | " * len(metrics),
    ]
    for model, r in results["models"].items():
        cells = [f"{r['summary'][m]['mean']:.3f} ± {r['summary'][m]['std']:.3f}" for m in metrics]
        lines.append(f"| {model}{' (this model)' if r['artifact'] == aid else ''} | `{r['artifact']}` | " + " | ".join(cells) + " |")
    seed_aware = all("interval" in c for c in results["comparisons"])  # evaluations before it have the test-only interval alone
    method = "95% interval from a paired bootstrap over seeds and test examples, and its verdict" if seed_aware else "95% paired-bootstrap interval over test examples"
    lines += ["", f"Differences to the base model (paired by seed; {method}):", ""]
    for c in results["comparisons"]:
        if c["metric"] in metrics:
            i = c["interval"] if seed_aware else c["bootstrap"]
            lines.append(
                f"- {c['model']} − {c['baseline']}, {label[c['metric']]}: {c['difference']:+.3f} ± {c['difference_std']:.3f} "
                f"(better in {c['better_in_seeds']}/{len(c['per_seed'])} seeds), CI [{i['low']:+.3f}, {i['high']:+.3f}]"
                + (f": {c['verdict']}" if seed_aware else "")
            )
    return lines + [""]


def quantization_section(q: dict) -> list[str]:
    s = q["speed"]
    metrics = list(q["fp32"])
    label = {"accuracy": "accuracy", "macro_f1": "macro-F1", "micro_f1": "micro-F1"}
    return [
        "## int8 (CPU)",
        "",
        f"Dynamic int8 quantization of every Linear layer ({q['linear_parameter_share']:.0%} of the parameters): `{q['method']}`. "
        "It is a pure function of the fp32 weights in this folder, so apply it after loading:",
        "",
        "```python",
        "import torch",
        "from transformers import AutoModelForSequenceClassification",
        'model = AutoModelForSequenceClassification.from_pretrained("FINE_TUNED_FOLDER").eval()',
        "int8 = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)",
        "```",
        "",
        f"Measured on {q['task']} ({q['test_examples']:,} test examples), with this model fine-tuned once (seed {q['seed']}, the "
        f"evaluation `{q['evaluation']}`'s settings) and then quantized:",
        "",
        "| | " + " | ".join(f"test {label[m]}" for m in metrics) + " | latency, batch 1 (ms/example) | throughput, batch 32 (examples/s) |",
        "| --- | " + "--- | " * (len(metrics) + 2),
        "| fp32 | " + " | ".join(f"{q['fp32'][m]:.4f}" for m in metrics) + f" | {s['fp32_latency_ms_batch1']:.2f} | {s['fp32_throughput_batch32']:,.0f} |",
        "| int8 | " + " | ".join(f"{q['int8'][m]:.4f}" for m in metrics) + f" | {s['int8_latency_ms_batch1']:.2f} | {s['int8_throughput_batch32']:,.0f} |",
        "| int8 vs fp32 | " + " | ".join(f"{q['delta'][m]:+.4f}" for m in metrics)
        + f" | x{s['latency_speedup_batch1']:.2f} speed-up | x{s['throughput_speedup_batch32']:.2f} |",
        "",
        f"CPU, {s['threads']} threads, max {q['max_seq_length']} tokens; fp32 and int8 timed alternately in one process, median of "
        f"{s['rounds']} rounds (batch-32 ratio per round: {', '.join(f'{r:.2f}' for r in s['throughput_speedup_batch32_per_round'])}).",
        "",
    ]


# --- Hugging Face Hub --------------------------------------------------------------------------------


def push(folder: Path, repo: str, aid: str, private: bool = True, api_factory: Callable[..., Any] | None = None) -> str:
    """Upload the export folder to a Hub model repo; the token comes from HF_TOKEN or `hf auth login`, and goes nowhere else."""
    import huggingface_hub

    token = huggingface_hub.get_token()
    if not token:
        raise UserError("--push-to-hub needs a Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = (api_factory or huggingface_hub.HfApi)(token=token)
    try:
        url = api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model", commit_message=f"dapt export of {aid}")
    except (OSError, ValueError) as e:  # HfHubHTTPError is an OSError subclass; no network is a ConnectionError
        raise UserError(f"--push-to-hub {repo}: {type(e).__name__}: {_without(str(e), token)}") from None
    log.info("export %s: pushed to %s", aid, repo)
    return str(url)


def _without(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text
