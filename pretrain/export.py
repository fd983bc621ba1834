"""Export: hand a model artifact over as a standalone Hugging Face folder with a model card.

    dapt export production --to exported/reuters-classifier                     # a task model (f-…) or an encoder
    dapt export f-154b8b6a876cce9423e0 --to exported/onnx --format onnx --quantize int8
    dapt export m-722717eccb734486a6b7 --to exported/encoder --push-to-hub my-org/reuters-bert

A task model (finetune artifact, `f-…`: a classifier fine-tuned on the evaluation's task) is what a
team deploys: its folder loads with `AutoModelForSequenceClassification` (or `...ForTokenClassification`)
with its label names set. An encoder (`m-…`, `d-…`, `b-…`) is a starting point for fine-tuning.
Either way the folder holds `config.json`, `model.safetensors` and the tokenizer files, copied byte
for byte from the (verified) artifact, so plain `transformers` loads it with no project code; plus
`README.md` (the model card: task and scores, or corpus, vocabulary and pretraining budget; the
comparison with the base model; intended use and limits; the full lineage) and `dapt_export.json`
(the same facts for machines). With `--format onnx` a task model also gets `model.onnx`, and with
`--quantize int8` `model.int8.onnx`, measured on the task's test set (`pretrain/quantize.py`): the
figures go into the card and `onnx.json`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pretrain import registry
from pretrain.artifacts import MANIFEST, STAGING, ArtifactStore, environment, file_digest, format_lineage, respect_umask
from pretrain.errors import InputError, UserError, os_error_line, unreachable
from pretrain.families import max_sequence_length
from pretrain.logs import get_logger

log = get_logger(__name__)

MODEL_STAGES = ("base", "pretrain", "distill")  # encoders
TASK_STAGE = "finetune"  # a classifier or tagger fine-tuned on the task: what a team deploys
CARD = "README.md"
FACTS = "dapt_export.json"
MEASUREMENTS = "onnx.json"
FORMATS = ("onnx",)
WRITE_ERRORS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM)  # a --to that cannot take the export
EXPORT_MARKER = 1  # `dapt_export` in dapt_export.json: the folder is an export (the format's version)
# What only a store (or an artifact in one) holds: a folder with any of these is never replaced.
STORE_FOLDERS = (registry.ALIASES, registry.RUNS, STAGING, ".work", ".shards")


def model_folder(store: ArtifactStore, aid: str) -> Path:
    """The Hugging Face folder inside a model artifact (an encoder, or a task model's classifier)."""
    stage = store.manifest(aid)["stage"]
    if stage not in (*MODEL_STAGES, TASK_STAGE):
        raise InputError(
            f"artifact {aid} is a {stage} artifact, not a model; export a task model (f-…), a pretrain (m-…), "
            "distill (d-…) or base (b-…) artifact or an alias of one"
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


def _mentions(value: Any, aid: str) -> bool:
    if isinstance(value, dict):
        return any(_mentions(v, aid) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, aid) for v in value)
    return value == aid


def best_run_id(entry: dict) -> str | None:
    """The f- id of the run an evaluation chose for a model on validation (`best_run` in its results)."""
    best = entry.get("best_run")
    return best.get("finetune") if isinstance(best, dict) else best


def evaluation_naming(store: ArtifactStore, run_id: str) -> tuple[dict, dict, str] | None:
    """The newest evaluation whose results name the fine-tuning run `run_id`: (manifest, results, the model's name there)."""
    found = None
    for other in store.ids():  # oldest first: the last match is the newest
        manifest = store.manifest(other)
        if manifest["stage"] != "evaluate":
            continue
        results = json.loads((store.local_dir(other) / "results.json").read_text())
        for name, entry in results.get("models", {}).items():
            if _mentions(entry.get("runs", []), run_id) or best_run_id(entry) == run_id:
                found = (manifest, results, name)
    return found


def _role_in(evaluation: dict, aid: str) -> str:
    inputs = evaluation["inputs"]
    return "adapted" if inputs.get("adapted") == aid else next(role for role, value in inputs.items() if value == aid)


def _check_request(store: ArtifactStore, aid: str, stage: str, fmt: str | None, quantize: str | None) -> None:
    """Refuse what cannot be exported, before anything is copied or loaded."""
    model_folder(store, aid)  # not a model at all: says so
    if fmt is not None and stage != TASK_STAGE:
        raise UserError(
            f"--format {fmt}: artifact {aid} is an encoder ({stage}), with no task head to run; export one of its task models "
            f"(finetune artifacts, f-…: `dapt artifacts list --stage finetune --store {store.url}`), or leave out --format"
        )
    if quantize is not None and fmt != "onnx":
        raise UserError(
            f"--quantize {quantize} quantizes the ONNX export (model.int8.onnx by ONNX Runtime): add --format onnx, "
            f"e.g. `dapt export {aid} --to DIR --format onnx --quantize {quantize}`"
        )


def export(
    store: ArtifactStore,
    name: str,
    to: str | os.PathLike,
    quantize: str | None = None,
    push_to_hub: str | None = None,
    private: bool = True,
    hf_api_factory: Callable[..., Any] | None = None,
    format: str | None = None,
    overwrite: bool = False,
    speed_rounds: int = 5,
) -> dict[str, Any]:
    """Write the export folder for artifact or alias `name`; returns the export facts (dapt_export.json).

    `format="onnx"` (task models) adds model.onnx, `quantize="int8"` model.int8.onnx, both measured on
    the task's test set; `overwrite` replaces a previous export at `to` (once the new one is complete), and
    nothing else (`check_replaceable`). `speed_rounds`: timed passes per engine and batch size in the CPU
    speed measurement (more rounds, a steadier figure; 1 when only parity and agreement matter).
    """
    if quantize not in (None, "int8"):
        raise UserError(f"--quantize {quantize}: only int8 is supported")
    if format not in (None, *FORMATS):
        raise UserError(f"--format {format}: only {', '.join(FORMATS)} is supported")
    target = Path(os.path.abspath(Path(to).expanduser()))
    if target.is_symlink():
        raise UserError(f"--to {target}: is a symbolic link (to {os.path.realpath(target)}); give a real folder as --to")
    if target.exists() and not target.is_dir():
        raise UserError(f"--to {target}: exists and is a file, not a folder; choose another --to")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise UserError(f"--to {target}: the folder exists and is not empty; choose another --to, or pass --overwrite to replace it")
    if target.exists():
        check_replaceable(target, store)
    aid = registry.resolve(store, name)
    stage = store.manifest(aid)["stage"]
    _check_request(store, aid, stage, format, quantize)
    folder = model_folder(store, aid)
    run = json.loads((store.local_dir(aid) / "run.json").read_text()) if stage == TASK_STAGE else None
    if format is not None:
        task_test_files(aid, run)  # the measurement needs them: fail now, not after the copy
    problems = registry.verify(store, aid)
    if problems:
        raise InputError(f"artifact {aid} fails verification, not exporting it:\n  " + "\n  ".join(problems))
    log.info("export %s (%s) -> %s", aid, name, target)

    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    try:
        staging.mkdir(parents=True)
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name != "manifest.json":
                shutil.copy2(path, staging / path.name)
        measured = None
        if stage == TASK_STAGE:
            named = evaluation_naming(store, aid)
            if format == "onnx":
                measured = measure_onnx(staging, aid, run, int8=quantize == "int8", speed_rounds=speed_rounds)
                (staging / MEASUREMENTS).write_text(json.dumps(measured, indent=1) + "\n")
            evaluation = named[0] if named else None
            card = task_model_card(store, aid, name, run, named, measured)
        else:
            evaluation = evaluation_of(store, aid)
            results = json.loads((store.local_dir(evaluation["id"]) / "results.json").read_text()) if evaluation else None
            card = model_card(store, aid, name, evaluation, results)
        facts = _facts(store, aid, name, staging, evaluation, measured, run)
        (staging / CARD).write_text(card)
        (staging / FACTS).write_text(json.dumps(facts, indent=1, default=str) + "\n")
        respect_umask(staging)  # copies keep the mode of files written 0600 before artifacts followed the umask
        _replace(staging, target)
    except OSError as e:
        if e.errno not in WRITE_ERRORS:
            raise
        raise UserError(f"--to {target}: cannot write the export there: {os_error_line(e)}; nothing was left behind") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if push_to_hub:
        facts["hub_url"] = push(target, push_to_hub, aid, private=private, api_factory=hf_api_factory)
    return facts


def check_replaceable(target: Path, store: ArtifactStore) -> None:
    """Refuse, in one line naming the folder and why, to replace `target` unless it is a previous export.

    `--overwrite` deletes the old folder once the new export is in place, so it may only ever delete what
    an export wrote: a folder whose `dapt_export.json` is an export's marker and which holds nothing that
    marker does not list. Never the store, a folder holding it (or the home or current folder), or `/`.
    """
    real = target.resolve()
    why = f"--to {target}: not replacing it with --overwrite"
    protected = [("the root folder /", Path("/")), ("your home folder", Path.home()), ("the current folder", Path.cwd())]
    if store.is_local:
        protected.insert(0, (f"the artifact store {store.url}", Path(store.root)))
    protected = [(name, folder.resolve()) for name, folder in protected]
    for name, folder in protected:
        if real == folder:
            raise UserError(f"{why}: it is {name}; choose a new or empty folder for the export")
    for name, folder in protected:
        if real in folder.parents:
            raise UserError(f"{why}: it holds {name} ({folder}); choose a new or empty folder for the export")
    entries = {entry.name: entry for entry in real.iterdir()}
    if not entries:
        return  # an empty folder the user made for the export: nothing in it to lose
    store_like = sorted(n for n in entries if n in STORE_FOLDERS or n == MANIFEST or (entries[n] / MANIFEST).is_file())
    if store_like:
        raise UserError(f"{why}: it holds an artifact store or artifacts ({', '.join(store_like[:3])}); choose another --to")
    listed = export_files(real)
    if listed is None:
        raise UserError(
            f"{why}: it is not a previous dapt export (no valid {FACTS} marker in it), and --overwrite replaces only those; "
            "choose a new or empty folder, or empty this one yourself"
        )
    foreign = sorted(set(entries) - listed)
    if foreign:
        raise UserError(
            f"{why}: it holds files the export did not write ({', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''}), "
            "which --overwrite would delete; move them out, or choose another --to"
        )


def export_files(folder: Path) -> set[str] | None:
    """The names a previous export wrote into `folder` (per its dapt_export.json marker); None if it is not an export."""
    try:
        facts = json.loads((folder / FACTS).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(facts, dict) or not isinstance(facts.get("files"), dict):
        return None
    if facts.get("dapt_export") != EXPORT_MARKER and not {"artifact", "lineage", "exported_with"} <= facts.keys():  # before the marker
        return None
    return {str(name) for name in facts["files"]} | {CARD, FACTS}


def _replace(staging: Path, target: Path) -> None:
    """Put the complete `staging` folder at `target`; an old `target` goes only once the new one is in place."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old.{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old)


def task_test_files(aid: str, run: dict) -> list[Path]:
    """The test files named in a task model's run (`run.json` task section); a clear error if they are gone."""
    from pretrain.io import expand_inputs

    patterns = run["task"]["test_files"]
    files = expand_inputs(patterns)
    if not files:
        raise InputError(
            f"the test files of {aid}'s task ({run['task']['name']}: task.test_files {patterns} in its run.json) are gone; "
            "the ONNX export is measured on them: restore them, or export without --format"
        )
    return files


def measure_onnx(folder: Path, aid: str, run: dict, int8: bool, speed_rounds: int = 5) -> dict[str, Any]:
    """Write model.onnx (and model.int8.onnx) for the classifier in `folder`; measure them on its task's test set."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from pretrain import quantize
    from pretrain.config import TaskConfig
    from pretrain.finetune import encode
    from pretrain.modelfiles import load_model
    from pretrain.tasks import Split, TaskData, read_split
    from pretrain.vocab import load_fast_tokenizer

    task = TaskConfig.model_validate(run["task"])
    config = json.loads((folder / "config.json").read_text())
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    notes: list[str] = []
    test = read_split(task, task.test_files, "test_files", notes)
    unknown = sorted({label for row in test.labels for label in (row if isinstance(row, list) else [row])} - set(labels))
    if unknown:
        raise InputError(f"{task.test_files}: labels {unknown} are not among the model's labels {labels}; is this the task {aid} was fine-tuned on?")
    data = TaskData(task.type, labels, Split(), Split(), test, "n/a")
    tokenizer = load_fast_tokenizer(folder)
    encoded = encode(tokenizer, data, "test", run["max_seq_length"], config.get("type_vocab_size", 1) > 1)
    auto = AutoModelForTokenClassification if task.type == "token" else AutoModelForSequenceClassification
    model = load_model(auto, folder, f"task model {aid}").eval()
    # Sentence pairs were fine-tuned with segment ids: the graph takes them even if the tokenizer's defaults leave them out.
    inputs = list(tokenizer.model_input_names) + (["token_type_ids"] if task.text_pair_field else [])
    quantize.export_onnx(model, folder / quantize.ONNX_FILE, inputs)
    if int8:
        quantize.quantize_int8(folder / quantize.ONNX_FILE, folder / quantize.INT8_FILE)
    thresholds = run.get("thresholds")
    result = quantize.compare(
        model, folder, data, encoded, thresholds=np.array([thresholds[label] for label in labels]) if thresholds else None,
        fallback_tag=run.get("fallback_tag", "O"), tag_scheme=task.tag_scheme, batch_size=run.get("batch_size", 32),
        pad_id=tokenizer.pad_token_id or 0, rounds=speed_rounds,
    )  # fmt: skip
    parity = result["parity"]
    if not parity["within_tolerance"]:
        raise UserError(
            f"export {aid}: the ONNX model's logits differ from PyTorch's by up to {parity['max_abs_logit_diff']:.2e} "
            f"(tolerance {parity['tolerance']:g}) on {task.name} test; not writing an ONNX model that disagrees "
            "(export without --format onnx, and report this with the model's config.json)"
        )
    metric = run.get("selection_metric") or ("micro_f1" if task.type == "token" else "macro_f1")
    result.update(artifact=aid, task=task.name, seed=run.get("seed"), primary_metric=metric, max_seq_length=run["max_seq_length"],
                  run_test={m: run["test"][m] for m in ("accuracy", metric) if m in run.get("test", {})})  # fmt: skip
    return result


def measurement_table(q: dict) -> list[str]:
    """The ONNX measurement as Markdown lines: parity, then scores and CPU speed of each engine side by side."""
    from pretrain.quantize import ENGINES

    metric, s = q["primary_metric"], q["speed"]
    engines = [e for e in ENGINES if e in q]
    label = {"accuracy": "accuracy", "macro_f1": "macro-F1", "micro_f1": "micro-F1"}
    metrics = [metric] + [m for m in ("accuracy",) if m != metric]
    lines = [
        f"ONNX fp32 vs PyTorch fp32, max |logit difference| over the {q['test_examples']:,} test examples: "
        f"{q['parity']['max_abs_logit_diff']:.2e} (tolerance {q['parity']['tolerance']:g})",
    ]
    if "agreement" in q:
        lines.append(f"ORT int8 vs PyTorch fp32: the same prediction on {100 * q['agreement']['int8_vs_fp32']:.2f}% of the test examples; "
                     f"{label[metric]} {q['delta'][metric]:+.4f}, accuracy {q['delta']['accuracy']:+.4f}")  # fmt: skip
    lines += [
        "",
        "| engine | file | " + " | ".join(f"test {label[m]}" for m in metrics) + " | latency, batch 1 (ms/example) | throughput, batch 32 (examples/s) | vs PyTorch fp32 |",
        "| --- | --- | " + "--- | " * (len(metrics) + 3),
    ]
    files = {"fp32": "model.safetensors", "onnx_fp32": "model.onnx", "int8": "model.int8.onnx"}
    for e in engines:
        ratio = s[f"{e}_throughput_batch32"] / s["fp32_throughput_batch32"]
        lines.append(
            f"| {ENGINES[e]} | {files[e]} | " + " | ".join(f"{q[e][m]:.4f}" for m in metrics)
            + f" | {s[f'{e}_latency_ms_batch1']:.2f} | {s[f'{e}_throughput_batch32']:,.1f} | x{ratio:.2f} throughput, "
            f"x{s['fp32_latency_ms_batch1'] / s[f'{e}_latency_ms_batch1']:.2f} latency |"
        )
    lines += [
        "",
        f"CPU, {s['threads']} threads, up to {q['max_seq_length']} tokens; the engines timed alternately in one process, median of "
        f"{s['rounds']} rounds; batch 1 over {s['batch1_examples']} test examples, batch 32 over {s['batch32_examples']}.",
    ]
    return lines


def _facts(store: ArtifactStore, aid: str, name: str, folder: Path, evaluation: dict | None, measured: dict | None, run: dict | None) -> dict[str, Any]:
    return {
        "dapt_export": EXPORT_MARKER,  # the marker --overwrite looks for: only a folder carrying it is ever replaced
        "artifact": aid,
        "requested_as": name,
        "store": store.url,
        "stage": store.manifest(aid)["stage"],
        "files": {p.name: file_digest(p) for p in sorted(folder.iterdir()) if p.is_file()},
        "evaluation": evaluation["id"] if evaluation else None,
        "run": run,
        "onnx": measured,
        "lineage": store.lineage(aid),
        "exported_with": {"git": environment()["git"], "packages": environment()["packages"]},
    }


# --- the model card ----------------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def model_card(store: ArtifactStore, aid: str, name: str, evaluation: dict | None, results: dict | None) -> str:
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
    lines += pooler_section(model_folder(store, aid), task_model=False)
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


def lineage_section(store: ArtifactStore, aid: str) -> list[str]:
    """The model card's lineage: every artifact the model was built from, back to the raw files."""
    return [
        "## Lineage",
        "",
        "Every artifact this model was built from, back to the raw files (`dapt artifacts lineage ID` prints it from the store):",
        "",
        "```",
        format_lineage(store.lineage(aid)),
        "```",
        "",
    ]


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


def task_model_card(store: ArtifactStore, aid: str, name: str, run: dict, named: tuple[dict, dict, str] | None, measured: dict | None) -> str:
    """README.md for a task model's export folder: the task, its scores, the comparison, ONNX figures, lineage."""
    manifest = store.manifest(aid)
    encoder = manifest["inputs"]["model"]
    chain = _ancestors(store, aid)
    base = chain.get("base")
    base_name = ((base or {}).get("origin") or {}).get("source", "unknown")
    folder = store.local_dir(aid) / "model"
    config = json.loads((folder / "config.json").read_text())
    task = run["task"]
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    token = task["type"] == "token"
    auto = "AutoModelForTokenClassification" if token else "AutoModelForSequenceClassification"
    metric = run.get("selection_metric") or ("micro_f1" if token else "macro_f1")
    label = {"accuracy": "accuracy", "macro_f1": "macro-F1", "micro_f1": "micro-F1"}
    encoder_stage = store.manifest(encoder)["stage"]
    kind = {"pretrain": "domain-adapted encoder", "distill": "distilled student", "base": "base model"}.get(encoder_stage, encoder_stage)
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
        f"{', '.join(labels)}), fine-tuned by dapt from the {kind} `{encoder}` (itself from `{base_name}`), seed {run['seed']}, "
        f"the epoch chosen on validation {label.get(metric, metric)}.",
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
        f"- task `{task['name']}` ({task['type']}): text field `{task['text_field']}`, label field `{task['label_field']}`; "
        f"train files {task['train_files']}, test files {task['test_files']}",
        f"- fine-tuned with seed {run['seed']}, learning rate {run['learning_rate']:g}, best epoch {run['best_epoch']}"
        + (f" of {run['epochs_trained']} trained" if "epochs_trained" in run else "") + f", inputs up to {run['max_seq_length']} tokens",
        "",
        "## Test scores",
        "",
        "This model (one seed): " + ", ".join(f"{label.get(m, m)} {v:.4f}" for m, v in run["test"].items() if isinstance(v, (int, float)))
        + "; validation " + ", ".join(f"{label.get(m, m)} {v:.4f}" for m, v in run["validation"].items() if m in label) + ".",
        "",
    ]
    if named is None:
        lines += ["No evaluation in the store names this run, so there is no mean over seeds or comparison with the base model here.", ""]
    else:
        evaluation, results, model_name = named
        entry = results["models"][model_name]
        best = best_run_id(entry)
        lines += [
            f"Evaluation `{evaluation['id']}` fine-tuned every compared model the same way with seeds {results['seeds']}; this run is "
            f"`{model_name}` seed {run['seed']}" + (" and the best of its seeds on validation (what is handed over)." if best == aid else
                                                   f"; the best of its seeds on validation is `{best}`." if best else "."),
            "",
        ]
        lines += _downstream(entry["artifact"], evaluation, results)[2:]
    lines += pooler_section(folder, task_model=True)
    if measured:
        lines += ["## ONNX and int8 (CPU)", "",
                  f"`model.onnx` is the fp32 graph ({measured['exporter']})"
                  + (f"; `model.int8.onnx` its ONNX Runtime dynamic int8 quantization (`{measured['method']}`)." if "int8" in measured else "."),
                  "Measured at export on the task's test set:", "", *measurement_table(measured), "",
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
        why = unreachable(e) or f"{type(e).__name__}: {e}"
        raise UserError(f"--push-to-hub {repo}: {_without(why, token)}; the export in {folder} is complete, push it again later") from None
    except Exception as e:  # huggingface_hub's client raises httpx errors for a network out of reach
        if (why := unreachable(e)) is None:
            raise
        raise UserError(f"--push-to-hub {repo}: cannot reach the Hub: {_without(why, token)}; the export in {folder} is complete, push it again later") from None
    log.info("export %s: pushed to %s", aid, repo)
    return str(url)


def _without(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text
