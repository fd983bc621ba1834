"""Evaluate: fine-tune the base and the adapted model the same way on the task, compare on its test split.

    python -m pretrain.evaluate --config configs/demo.yaml
    python -m pretrain.evaluate --config configs/demo.yaml --set evaluate.num_epochs=1

For each model and each seed: the same classification head, hyperparameters and data order;
cross-entropy, AdamW with linear warmup/decay, attention masks, dynamic padding with length-grouped
batches; the epoch with the best validation macro-F1 (validation held out of train, stratified) is
evaluated once on test. Output (evaluation artifact `e-...`): `results.json` with accuracy and
macro-F1 per model and seed, their means, and the label set.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from pretrain.artifacts import ArtifactStore, artifact_id, describe_sources
from pretrain.config import EvaluateConfig, TaskConfig, expand_inputs
from pretrain.errors import InputError
from pretrain.io import field_text, read_records
from pretrain.vocab import load_fast_tokenizer

log = logging.getLogger(__name__)

STAGE = "evaluate"
MODELS = ("base", "adapted")


def load_task_split(cfg: TaskConfig, patterns: list[str], key: str) -> tuple[list[str], list[str]]:
    """Texts and labels of one split; empty-text rows are dropped and counted, missing fields are errors."""
    texts, labels, empty = [], [], 0
    for path in expand_inputs(patterns):
        for location, record in read_records(path):
            text = field_text(record, cfg.text_field, location, key="evaluate.task.text_field")
            label = field_text(record, cfg.label_field, location, key="evaluate.task.label_field", numbers_ok=True)
            if label is None or label == "":
                raise InputError(f"{location}: empty label in {cfg.label_field!r}")
            if not text or not text.strip():
                empty += 1
                continue
            texts.append(text)
            labels.append(label)
    if empty:
        log.warning("evaluate: %s: dropped %d rows with empty text", key, empty)
    if not texts:
        raise InputError(f"evaluate.task.{key}: no labelled rows in {patterns}")
    return texts, labels


def _batches(lengths: list[int], batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Length-grouped batches: shuffle, sort within chunks of 50 batches by length, shuffle the batches."""
    order = rng.permutation(len(lengths)) if rng is not None else np.arange(len(lengths))
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort([-lengths[i] for i in part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _collate(encoded: list[list[int]], indices: np.ndarray, pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    # Dynamic padding: to the longest sequence of this batch only.
    width = max(len(encoded[i]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
        mask[row, : len(encoded[i])] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def _predict(model, encoded: list[list[int]], batch_size: int, pad_id: int, device: torch.device) -> np.ndarray:
    model.eval()
    predictions = np.empty(len(encoded), dtype=np.int64)
    for batch in _batches([len(e) for e in encoded], batch_size * 2, rng=None):
        logits = model(**_collate(encoded, batch, pad_id, device)).logits
        predictions[batch] = logits.argmax(-1).cpu().numpy()
    return predictions


def _scores(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=list(range(n_labels)), zero_division=0)),
    }


def finetune(model_dir: Path, cfg: EvaluateConfig, seed: int, data: dict, labels: list[str], device: torch.device) -> dict:
    """Fine-tune one model with one seed; select the epoch on validation; score test once."""
    import transformers
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the "newly initialised classifier" notice is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            attn_implementation="sdpa",
        ).to(device)
    finally:
        transformers.logging.set_verbosity(verbosity)
    pad_id = data["pad_id"]
    train_x, train_y = data["train"]
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
    total = steps_per_epoch * cfg.num_epochs
    warmup = int(cfg.warmup_ratio * total)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
        foreach=device.type != "cuda",
        fused=device.type == "cuda" or None,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    rng = np.random.default_rng(seed)
    targets = torch.tensor(train_y)
    best = {"validation_macro_f1": -1.0}
    best_state = None
    started = time.perf_counter()
    for epoch in range(1, cfg.num_epochs + 1):
        model.train()
        for batch in _batches([len(x) for x in train_x], cfg.batch_size, rng):
            logits = model(**_collate(train_x, batch, pad_id, device)).logits
            loss = F.cross_entropy(logits.float(), targets[batch].to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        val_x, val_y = data["validation"]
        scores = _scores(np.asarray(val_y), _predict(model, val_x, cfg.batch_size, pad_id, device), len(labels))
        log.info("evaluate: seed %d epoch %d: validation accuracy %.4f macro-F1 %.4f", seed, epoch, scores["accuracy"], scores["macro_f1"])
        if scores["macro_f1"] > best["validation_macro_f1"]:
            best = {"epoch": epoch, "validation_accuracy": scores["accuracy"], "validation_macro_f1": scores["macro_f1"]}
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
    model.load_state_dict(best_state)
    test_x, test_y = data["test"]
    test = _scores(np.asarray(test_y), _predict(model, test_x, cfg.batch_size, pad_id, device), len(labels))
    return {"seed": seed, **best, **{f"test_{k}": v for k, v in test.items()}, "seconds": round(time.perf_counter() - started, 1)}


def _encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def _task_sources(cfg: EvaluateConfig) -> list[dict]:
    return describe_sources(expand_inputs(cfg.task.train_files) + expand_inputs(cfg.task.test_files))


def stage_id(cfg: EvaluateConfig, *, base: str, model: str) -> str:
    return artifact_id(STAGE, cfg.model_dump(), inputs={"base": base, "adapted": model}, sources=_task_sources(cfg))


def run(cfg: EvaluateConfig, store: ArtifactStore, *, base: str, model: str) -> str:
    """Build (or find) the evaluation artifact; returns its id."""
    sources = _task_sources(cfg)
    inputs = {"base": base, "adapted": model}
    aid = artifact_id(STAGE, cfg.model_dump(), inputs=inputs, sources=sources)
    if store.exists(aid):
        log.info("evaluate %s: already built (cache hit)", aid)
        return aid
    log.info("evaluate %s: config %s", aid, cfg.model_dump_json())

    train_texts, train_labels = load_task_split(cfg.task, cfg.task.train_files, "train_files")
    test_texts, test_labels = load_task_split(cfg.task, cfg.task.test_files, "test_files")
    labels = sorted(set(train_labels))
    unseen = sorted(set(test_labels) - set(labels))
    if unseen:
        raise InputError(f"evaluate: test labels {unseen} never occur in the train files {cfg.task.train_files}; a model cannot learn them")
    if len(labels) < 2:
        raise InputError(f"evaluate: the train files have a single label ({labels[0]!r}); classification needs at least two")
    label_ids = {label: i for i, label in enumerate(labels)}
    y = [label_ids[label] for label in train_labels]
    counts = np.bincount(y, minlength=len(labels))
    stratify = y if counts.min() >= 2 else None
    if stratify is None:
        rare = [labels[i] for i in np.flatnonzero(counts < 2)]
        log.warning("evaluate: labels %s have a single train example; the validation split is not stratified", rare)
    # The validation split is the same for every model and seed.
    train_idx, val_idx = train_test_split(np.arange(len(y)), test_size=cfg.validation_fraction, random_state=0, stratify=stratify)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict[str, dict] = {}
    with store.build(STAGE, aid, config=cfg.model_dump(), inputs=inputs, sources=sources) as build:
        for name, artifact in (("base", base), ("adapted", model)):
            model_dir = store.local_dir(artifact) / ("model" if name == "adapted" else "")
            tokenizer = load_fast_tokenizer(model_dir)
            encoded = _encode(tokenizer, train_texts, cfg.max_seq_length)
            data = {
                "pad_id": tokenizer.pad_token_id or 0,
                "train": ([encoded[i] for i in train_idx], [y[i] for i in train_idx]),
                "validation": ([encoded[i] for i in val_idx], [y[i] for i in val_idx]),
                "test": (_encode(tokenizer, test_texts, cfg.max_seq_length), [label_ids[label] for label in test_labels]),
            }
            runs = []
            for seed in cfg.seeds:
                runs.append(finetune(model_dir, cfg, seed, data, labels, device))
                log.info("evaluate: %s seed %d: test accuracy %.4f macro-F1 %.4f", name, seed, runs[-1]["test_accuracy"], runs[-1]["test_macro_f1"])
            results[name] = {"artifact": artifact, "runs": runs, **_summary(runs)}
        (build.dir / "results.json").write_text(
            json.dumps({"task": cfg.task.name, "labels": labels, "test_size": len(test_texts), "models": results}, indent=2)
        )
        for name in MODELS:
            for metric in ("accuracy", "macro_f1"):
                build.metrics[f"{name}_{metric}"] = round(results[name][f"test_{metric}_mean"], 4)
        build.metrics.update(task=cfg.task.name, seeds=len(cfg.seeds), train_size=len(train_idx), validation_size=len(val_idx), test_size=len(test_texts))
    return aid


def _summary(runs: list[dict]) -> dict[str, float]:
    out = {}
    for metric in ("test_accuracy", "test_macro_f1"):
        values = [r[metric] for r in runs]
        out[f"{metric}_mean"] = statistics.fmean(values)
        out[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


if __name__ == "__main__":
    from pretrain.pipeline import stage_main

    stage_main(STAGE)
