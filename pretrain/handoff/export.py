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
`--quantize int8` `model.int8.onnx`, measured on the task's test set (`pretrain/handoff/quantize.py`): the
figures go into the card and `onnx.json`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pretrain.core import registry
from pretrain.core.artifacts import MANIFEST, STAGING, ArtifactStore, environment, file_digest, respect_umask
from pretrain.core.errors import InputError, UserError, os_error_line, unreachable
from pretrain.core.logs import get_logger
from pretrain.handoff import cards

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
            "distill (d-…) or base (b-…) artifact, an evaluation (e-…: its best task model), `best`, or an alias of one"
        )
    return cards.model_folder_of(store, aid)


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


def run_names(store: ArtifactStore) -> dict[str, tuple[str, str, bool]]:
    """Fine-tuning run id -> (the newest evaluation naming it, the model's name there, whether that evaluation chose it
    to hand over), for listings: an `f-…` id alone says neither which model nor which seed it is."""
    names: dict[str, tuple[str, str, bool]] = {}
    for other in store.ids():  # oldest first: a newer evaluation's names win
        if store.manifest(other)["stage"] != "evaluate":
            continue
        results = json.loads((store.local_dir(other) / "results.json").read_text())
        chosen = (results.get("best") or {}).get("finetune")
        for name, entry in results.get("models", {}).items():
            for fid in [r.get("finetune") for r in entry.get("runs", [])] + [f for rate in entry.get("learning_rates", {}).values() for f in rate.get("finetune", [])]:
                if fid:
                    names[fid] = (other, name, fid == chosen)
    return names


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


def resolve_model(store: ArtifactStore, name: str) -> tuple[str, str | None]:
    """(the artifact to export, how `name` led to it): an id, alias or start of an id as `registry.resolve` reads
    them; `best`, when no alias has that name, the run the newest evaluation chose to hand over (`best` in its
    results.json, chosen on validation); an evaluation artifact (`e-…`), its chosen run."""
    if name == "best" and name not in registry.aliases(store):
        evaluations = [aid for aid in store.ids() if store.manifest(aid)["stage"] == "evaluate"]
        if not evaluations:
            raise InputError(
                f"best: no evaluation in the store {store.url} to take the best task model from; run the pipeline (`dapt run CONFIG`), "
                f"or name a task model (`dapt artifacts list --stage finetune --store {store.url}`)"
            )
        aid = evaluations[-1]  # oldest first: the newest evaluation
    else:
        aid = registry.resolve(store, name)
    if store.manifest(aid)["stage"] != "evaluate":
        return aid, None
    results = json.loads((store.local_dir(aid) / "results.json").read_text())
    best = results.get("best")
    if not isinstance(best, dict) or not best.get("finetune"):
        raise InputError(
            f"{name}: evaluation {aid} names no best run (its results.json is from a dapt before `best`); export one of its "
            f"task models by id (`dapt artifacts list --stage finetune --store {store.url}`)"
        )
    if not store.exists(best["finetune"]):
        raise InputError(f"{name}: evaluation {aid} chose {best['finetune']}, which is no longer in the store {store.url} (deleted?)")
    how = f"the best task model of evaluation {aid} ({best['model']}, seed {best['seed']}, chosen on validation)"
    return best["finetune"], how


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
    test: str | os.PathLike | None = None,
    speed_rounds: int = 5,
) -> dict[str, Any]:
    """Write the export folder for artifact or alias `name` (or `best`, or an evaluation: its chosen run); returns
    the export facts (dapt_export.json).

    `format="onnx"` (task models) adds model.onnx, `quantize="int8"` model.int8.onnx, both measured on the test
    examples the run was scored on, or on the labelled file `test`; `overwrite` replaces a previous export at `to`
    (once the new one is complete), and nothing else (`check_replaceable`). `speed_rounds`: timed passes per engine
    and batch size in the CPU speed measurement (more rounds, a steadier figure; 1 when only parity and
    agreement matter).
    """
    if quantize not in (None, "int8"):
        raise UserError(f"--quantize {quantize}: only int8 is supported")
    if format not in (None, *FORMATS):
        raise UserError(f"--format {format}: only {', '.join(FORMATS)} is supported")
    if test is not None and format is None:
        raise UserError(f"--test {test}: only the ONNX measurement reads a test set; add --format onnx, or leave out --test")
    target = Path(os.path.abspath(Path(to).expanduser()))
    if target.is_symlink():
        raise UserError(f"--to {target}: is a symbolic link (to {os.path.realpath(target)}); give a real folder as --to")
    if target.exists() and not target.is_dir():
        raise UserError(f"--to {target}: exists and is a file, not a folder; choose another --to")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise UserError(f"--to {target}: the folder exists and is not empty; choose another --to, or pass --overwrite to replace it")
    if target.exists():
        check_replaceable(target, store)
    aid, how = resolve_model(store, name)
    if how:
        log.info("export %s: %s", name, how)
    stage = store.manifest(aid)["stage"]
    _check_request(store, aid, stage, format, quantize)
    folder = model_folder(store, aid)
    run = json.loads((store.local_dir(aid) / "run.json").read_text()) if stage == TASK_STAGE else None
    scored = test_set(aid, run, test) if format is not None else None  # read now: a missing file fails before the copy
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
                assert scored is not None
                measured = measure_onnx(staging, aid, run, int8=quantize == "int8", test=scored, speed_rounds=speed_rounds)
                (staging / MEASUREMENTS).write_text(json.dumps(measured, indent=1) + "\n")
            evaluation = named[0] if named else None
            card = cards.task_model_card(store, aid, name, run, named, measured, measurement_table)
        else:
            evaluation = evaluation_of(store, aid)
            results = json.loads((store.local_dir(evaluation["id"]) / "results.json").read_text()) if evaluation else None
            card = cards.model_card(store, aid, name, evaluation, results)
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


@dataclass
class TestSet:
    """The labelled examples an ONNX export is measured on, and how the card names them."""

    split: Any  # tasks.Split
    source: str


def test_set(aid: str, run: dict, test: str | os.PathLike | None) -> TestSet:
    """The examples the task model `aid` was scored on, read again (`tasks.recorded_test_split`), or those of the
    labelled file `test` (`--test`). A file that is gone or changed is an error naming it and offering --test."""
    from pretrain.core.config import TaskConfig
    from pretrain.core.summaries import public_name
    from pretrain.data.tasks import read_split, recorded_test_split

    task = TaskConfig.model_validate(run["task"])
    if test is not None:
        if not Path(test).is_file():
            raise UserError(f"--test {test}: no such file; give a labelled file with the task's fields ({_fields(task)})")
        try:
            split = read_split(task, [str(test)], "test_files", notes=[])
        except InputError as e:
            raise InputError(f"--test {test}: {e} (the file needs the task's fields: {_fields(task)})") from None
        return TestSet(split, f"`{public_name(str(test))}` (given with --test, {len(split):,} examples; not the run's own test set)")
    record = run.get("test_examples")
    try:
        split = recorded_test_split(task, record)
    except InputError as e:
        raise InputError(
            f"{aid} ({task.name}): {e}; the ONNX export is measured on those test examples: restore the file, measure on another "
            f"labelled file with --test FILE (the task's fields: {_fields(task)}), or export without --format"
        ) from None
    where = f"held out of {', '.join(public_name(str(p)) for p in task.train_files)} by test_fraction" if not task.test_files else \
        f"of {', '.join(public_name(str(p)) for p in task.test_files)}"
    return TestSet(split, f"the {len(split):,} test examples {aid} was scored on ({where})")


def _fields(task) -> str:
    pair = f", second text {task.text_pair_field!r}" if task.text_pair_field else ""
    delimiter = f", {task.csv_delimiter!r}-separated" if task.csv_delimiter else ""
    return f"text {task.text_field!r}{pair}, label {task.label_field!r}{delimiter}"


def measure_onnx(folder: Path, aid: str, run: dict, int8: bool, test: TestSet, speed_rounds: int = 5) -> dict[str, Any]:
    """Write model.onnx (and model.int8.onnx) for the classifier in `folder`; measure them on `test`
    (`speed_rounds` timed passes per engine and batch size)."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from pretrain.core.config import TaskConfig
    from pretrain.data.tasks import Split, TaskData
    from pretrain.finetuning.finetune import encode
    from pretrain.handoff import quantize
    from pretrain.models.modelfiles import load_model
    from pretrain.models.fast_tokenizers import load_fast_tokenizer

    task = TaskConfig.model_validate(run["task"])
    config = json.loads((folder / "config.json").read_text())
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    unknown = sorted({label for row in test.split.labels for label in (row if isinstance(row, list) else [row])} - set(labels))
    if unknown:
        raise InputError(f"{test.source}: labels {unknown[:10]} are not among the model's labels {labels[:20]}; is this the task {aid} was fine-tuned on?")
    data = TaskData(task.type, labels, Split(), Split(), test.split, "n/a")
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
                  test_source=test.source, run_test={m: run["test"][m] for m in ("accuracy", metric) if m in run.get("test", {})})  # fmt: skip
    return result


def measurement_table(q: dict) -> list[str]:
    """The ONNX measurement as Markdown lines: parity, then scores and CPU speed of each engine side by side."""
    from pretrain.handoff.quantize import ENGINES

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
    """dapt_export.json: the card's facts for machines. It travels with the model, so it names no folder of this
    machine (no store path; source files summarised, `cards.public_lineage`); the store keeps the full manifests."""
    return {
        "dapt_export": EXPORT_MARKER,  # the marker --overwrite looks for: only a folder carrying it is ever replaced
        "artifact": aid,
        "requested_as": name,
        "stage": store.manifest(aid)["stage"],
        "files": {p.name: file_digest(p) for p in sorted(folder.iterdir()) if p.is_file()},
        "evaluation": evaluation["id"] if evaluation else None,
        "run": cards.public_run(run, store.manifest(aid)) if run is not None else None,
        "onnx": measured,
        "lineage": cards.public_lineage(store, aid),
        "exported_with": {"git": environment()["git"], "packages": environment()["packages"]},
    }


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
