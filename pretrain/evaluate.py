"""Evaluate: fine-tune base, adapted (and any other listed) model the same way on the task, over several seeds.

    python -m pretrain.evaluate --config configs/demo.yaml
    python -m pretrain.evaluate --config configs/demo.yaml --set evaluate.num_epochs=1 --set evaluate.seeds=[0]

Every compared model gets the same splits, hyperparameters and seeds (`pretrain/finetune.py` has the
recipe); the epoch is chosen on validation with early stopping, and test is scored once per seed.
Compared models: `base`, `adapted` (the pretrain stage's model), `student` when the distill stage
ran (the adapted model distilled into fewer layers, `pretrain/distill.py`), `adapted+tapt` or
`base+tapt` when `evaluate.tapt` is set (task-adaptive pretraining, `pretrain/tapt.py`), and
`evaluate.models`. Each model is then compared with the base, and the student also with its teacher
(`adapted`): the difference per seed (paired: same seed, same head initialisation and data order), a
paired t-test over seeds, and a paired bootstrap interval over test examples (`pretrain/scoring.py`).

Output (evaluation artifact `e-...`): `results.json` (per model and seed: best epoch, validation and
test scores with per-class precision/recall/F1 and the confusion matrix; mean and std over seeds; the
comparisons; data notes) and `predictions.json` (test gold and every run's test predictions).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pretrain import base as base_stage
from pretrain import quantize, scoring, tapt
from pretrain.artifacts import ArtifactStore, artifact_id
from pretrain.config import ARTIFACT_ID, BaseModelConfig, EvaluateConfig, ModelSource
from pretrain.errors import InputError
from pretrain.finetune import encode, finetune, selection_metric
from pretrain.logs import get_logger
from pretrain.tasks import read_task, task_sources
from pretrain.vocab import load_fast_tokenizer

log = get_logger(__name__)

STAGE = "evaluate"
# With `int8: true`, the models measured quantized: the ones a team would deploy.
INT8_MODELS = ("adapted", "student")


def _task_sources(cfg: EvaluateConfig) -> list[dict]:
    return task_sources(cfg.task)


def _source_id(model: ModelSource) -> str:
    """The artifact id of a listed model: given, or that of importing it as a base model (a content hash)."""
    if ARTIFACT_ID.fullmatch(model.source):
        return model.source
    return base_stage.stage_id(BaseModelConfig(source=model.source, revision=model.revision))


def _identity(cfg: EvaluateConfig, base: str, model: str, student: str | None) -> tuple[str, dict[str, str], list[dict]]:
    sources = _task_sources(cfg)
    inputs = {"base": base, "adapted": model, **({"student": student} if student else {}), **{m.name: _source_id(m) for m in cfg.models}}
    # The TAPT model is not an input here: it is built inside this stage from the inputs above and
    # cfg.tapt, so it is determined by them (its id goes into the manifest's inputs for lineage).
    return artifact_id(STAGE, cfg.model_dump(), inputs=inputs, sources=sources), inputs, sources


def stage_id(cfg: EvaluateConfig, *, base: str, model: str, student: str | None = None) -> str:
    return _identity(cfg, base, model, student)[0]


def model_dir(store: ArtifactStore, aid: str) -> Path:
    """The Hugging Face folder of a model artifact (a base-model import, a pretrained or a distilled model)."""
    stage = store.manifest(aid)["stage"]
    if stage == "base":
        return store.local_dir(aid)
    if stage in ("pretrain", "distill"):
        return store.local_dir(aid) / "model"
    raise InputError(f"artifact {aid} is a {stage} artifact, not a model; list a b-..., m-... or d-... id in evaluate.models")


def _compared_models(cfg: EvaluateConfig, store: ArtifactStore, inputs: dict[str, str]) -> dict[str, str]:
    """Name -> model artifact id for every compared model, importing or building what is missing."""
    models = {"base": inputs["base"], "adapted": inputs["adapted"]}
    if "student" in inputs:
        models["student"] = inputs["student"]
    for m in cfg.models:
        if ARTIFACT_ID.fullmatch(m.source):
            if not store.exists(m.source):
                raise InputError(f"evaluate.models ({m.name}): artifact {m.source} is not in the store {store.url}")
            models[m.name] = m.source
        else:
            models[m.name] = base_stage.run(BaseModelConfig(source=m.source, revision=m.revision), store)
    if cfg.tapt is not None:
        models[tapt.model_name(cfg.tapt)] = tapt.build(cfg.tapt, cfg.task, store, base=inputs["base"], adapted=inputs["adapted"])
    return models


def _model_config(cfg: EvaluateConfig, name: str, folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    limit = config.get("max_position_embeddings")
    if limit is not None and cfg.max_seq_length > limit:
        raise InputError(f"evaluate.max_seq_length ({cfg.max_seq_length}) exceeds the {name} model's max_position_embeddings ({limit})")
    return config


def run(cfg: EvaluateConfig, store: ArtifactStore, *, base: str, model: str, student: str | None = None) -> str:
    """Build (or find) the evaluation artifact; `student` is the distill stage's model, if any; returns its id."""
    started = time.time()
    aid, inputs, sources = _identity(cfg, base, model, student)
    if store.exists(aid):
        log.info("evaluate %s: already built (cache hit)", aid)
        return aid
    log.info("evaluate %s: config %s", aid, cfg.model_dump_json())
    data = read_task(cfg.task, cfg.validation_fraction)  # bad data fails here, before any model is loaded
    log.info(
        "evaluate: %s (%s): %d labels; %d train, %d validation (%s), %d test examples",
        cfg.task.name, data.kind, len(data.labels), len(data.train), len(data.validation), data.validation_from, len(data.test),
    )  # fmt: skip
    models = _compared_models(cfg, store, inputs)
    folders = {name: model_dir(store, artifact) for name, artifact in models.items()}
    configs = {name: _model_config(cfg, name, folder) for name, folder in folders.items()}

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    metric = selection_metric(cfg)
    results: dict[str, dict] = {}
    predictions: dict[str, dict[str, object]] = {}
    notes = list(data.notes)
    int8: dict[str, dict] = {}
    with store.build(STAGE, aid, config=cfg.model_dump(), inputs={**inputs, **models}, sources=sources, started=started) as build:
        for name, folder in folders.items():
            tokenizer = load_fast_tokenizer(folder)
            segments = configs[name].get("type_vocab_size", 1) > 1  # BERT: yes; RoBERTa, DistilBERT: no
            encoded = {split: encode(tokenizer, data, split, cfg.max_seq_length, segments) for split in ("train", "validation", "test")}
            if data.kind == "token":
                notes += _lost_words(cfg, name, encoded)
            runs = []
            predictions[name] = {}
            for seed in cfg.seeds:
                record, predicted, trained = finetune(folder, data, encoded, cfg, seed, tokenizer.pad_token_id or 0, device)
                if cfg.int8 and name in INT8_MODELS and seed == cfg.seeds[0]:
                    int8[name] = quantize.measure_trained(trained, data, encoded["test"], cfg, tokenizer.pad_token_id or 0, seed)
                del trained
                runs.append(record)
                predictions[name][str(seed)] = predicted
                log.info(
                    "evaluate: %s seed %d: best epoch %d of %d; test accuracy %.4f macro-F1 %.4f micro-F1 %.4f (%.0f s)",
                    name, seed, record["best_epoch"], record["epochs_trained"], record["test"]["accuracy"],
                    record["test"]["macro_f1"], record["test"]["micro_f1"], record["seconds"],
                )  # fmt: skip
            results[name] = {"artifact": models[name], "runs": runs, "summary": summarise(runs), "per_class": per_class_summary(runs)}

        comparisons = compare(cfg, data, predictions, results)
        output = {
            "task": cfg.task.name,
            "type": data.kind,
            "tag_scheme": cfg.task.tag_scheme if data.kind == "token" else None,
            "labels": data.labels,
            "primary_metric": metric,
            "seeds": cfg.seeds,
            "sizes": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)},
            "validation_from": data.validation_from,
            "notes": notes,
            "models": results,
            "comparisons": comparisons,
            **({"int8": int8} if int8 else {}),
        }
        (build.dir / "results.json").write_text(json.dumps(output, indent=1))
        gold = data.gold("test")
        (build.dir / "predictions.json").write_text(
            json.dumps({"labels": data.labels, "gold": _plain(gold), "models": {n: {s: _plain(p) for s, p in runs.items()} for n, runs in predictions.items()}})
        )
        build.metrics.update(task=cfg.task.name, type=data.kind, primary_metric=metric, seeds=len(cfg.seeds), **output["sizes"])
        for name, r in results.items():
            for m in ("accuracy", metric):
                build.metrics[f"{name}_{m}_mean"] = round(r["summary"][m]["mean"], 4)
                build.metrics[f"{name}_{m}_std"] = round(r["summary"][m]["std"], 4)
        for name, q in int8.items():
            build.metrics[f"{name}_int8_{metric}_delta"] = q["delta"][metric]
            build.metrics[f"{name}_int8_throughput_speedup_batch32"] = q["speed"]["throughput_speedup_batch32"]
        headline = next((c for c in comparisons if c["model"] == "adapted" and c["metric"] == metric), None)
        if headline is not None:
            build.metrics["adapted_minus_base"] = round(headline["difference"], 6)
            build.metrics["adapted_minus_base_low"] = round(headline["bootstrap"]["low"], 6)
            build.metrics["adapted_minus_base_high"] = round(headline["bootstrap"]["high"], 6)
        student = next((c for c in comparisons if c["model"] == "student" and c["baseline"] == "adapted" and c["metric"] == metric), None)
        if student is not None:
            build.metrics["student_minus_adapted"] = round(student["difference"], 6)
            build.metrics["student_minus_adapted_low"] = round(student["bootstrap"]["low"], 6)
            build.metrics["student_minus_adapted_high"] = round(student["bootstrap"]["high"], 6)
    return aid


def _lost_words(cfg: EvaluateConfig, name: str, encoded: dict) -> list[str]:
    """Words beyond max_seq_length (or that tokenise to nothing): counted, and scored as a miss, never dropped."""
    notes = []
    fallback = "O" if cfg.task.tag_scheme == "BIO" else "the most frequent train tag"
    for split, e in encoded.items():
        if e.unplaced_words:
            fate = "are not trained on" if split == "train" else f"are predicted {fallback} and scored"
            notes.append(f"{name}: {e.unplaced_words:,} {split} words have no sub-token within max_seq_length={cfg.max_seq_length}; they {fate}")
            log.warning("evaluate: %s", notes[-1])
    return notes


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Mean, standard deviation (n-1) and per-seed values of every test metric."""
    out = {}
    for metric in scoring.METRICS:
        values = [r["test"][metric] for r in runs]
        out[metric] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
    return out


def per_class_summary(runs: list[dict]) -> dict[str, dict]:
    classes = runs[0]["test"].get("per_class", {})
    out = {}
    for name in classes:
        values = [r["test"]["per_class"].get(name, {"f1": 0.0})["f1"] for r in runs]
        out[name] = {"f1_mean": statistics.fmean(values), "f1_std": statistics.stdev(values) if len(values) > 1 else 0.0,
                     "support": classes[name]["support"]}  # fmt: skip
    return out


def compare(cfg: EvaluateConfig, data, predictions: dict[str, dict], results: dict[str, dict]) -> list[dict]:
    """Every model against the base (and the student against its teacher), paired by seed and by test example, on each metric."""
    gold = data.gold("test")
    counts = {
        name: [scoring.example_counts(data.kind, gold, runs[str(s)], data.labels, cfg.task.tag_scheme) for s in cfg.seeds]
        for name, runs in predictions.items()
    }
    pairs = [(name, "base") for name in results if name != "base"]
    if "student" in results:
        pairs.append(("student", "adapted"))  # what distillation cost: the student against its teacher
    comparisons = []
    for name, baseline in pairs:
        for metric in scoring.METRICS:
            comparison = scoring.paired_comparison(
                counts[name], counts[baseline], results[name]["summary"][metric]["values"], results[baseline]["summary"][metric]["values"],
                metric, cfg.bootstrap_samples,
            )  # fmt: skip
            comparisons.append({"model": name, "baseline": baseline, **comparison})
    return comparisons


def _plain(value):
    if isinstance(value, np.ndarray):
        if value.dtype == bool:  # multi-label: the label ids of each example
            return [np.flatnonzero(row).tolist() for row in value]
        return value.tolist()
    return value


if __name__ == "__main__":
    from pretrain.pipeline import stage_main

    stage_main(STAGE)
