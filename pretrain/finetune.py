"""Fine-tune one model with one seed on a task: encode, train with early stopping, score test once.

The recipe (the same for every compared model): a fresh task head on the pretrained encoder, AdamW
(no decay on biases and LayerNorm) with linear warmup and linear decay over `num_epochs`, gradient
clipping, attention masks, dynamic padding and length-grouped batches. Losses: cross-entropy
(single-label; token tasks on the first sub-token of every word only), binary cross-entropy on
sigmoid outputs (multi-label). After every epoch the validation score (`selection_metric`) decides:
the best epoch's weights are kept, and training stops after `patience_epochs` epochs without a
better one. Test is scored once, with those weights (and, multi-label, the per-label thresholds
tuned on validation at that epoch).

The seed fixes the head's initialisation, the data order and dropout: the same seed gives the same
numbers on the same hardware.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pretrain import scoring
from pretrain.config import EvaluateConfig
from pretrain.logs import get_logger
from pretrain.modelfiles import load_model
from pretrain.tasks import TaskData

log = get_logger(__name__)

IGNORE = -100  # cross-entropy's ignore_index: sub-tokens after the first, special tokens, padding


@dataclass
class Encoded:
    """One split tokenised for one model."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    targets: object  # class ids (n,), label indicator matrix (n, labels), or per-position tag ids (token tasks)
    word_positions: list[list[int]] | None = None  # token tasks: each word's first sub-token (-1: none, e.g. truncated)

    @property
    def unplaced_words(self) -> int:
        return sum(p < 0 for positions in self.word_positions or [] for p in positions)


def selection_metric(cfg: EvaluateConfig) -> str:
    return cfg.selection_metric or ("micro_f1" if cfg.task.type == "token" else "macro_f1")


def encode(tokenizer, data: TaskData, split: str, max_length: int, segments: bool = True) -> Encoded:
    """Tokenise a split; token tasks label the first sub-token of each word and ignore the rest.

    Sentence pairs are truncated longest-first to `max_length`; with `segments` (models with token
    type embeddings, such as BERT) the second text gets segment id 1.
    """
    rows = getattr(data, split)
    ids = {label: i for i, label in enumerate(data.labels)}
    if data.kind != "token":
        pairs = rows.pairs is not None and segments
        batch = tokenizer(rows.texts, rows.pairs, truncation=True, max_length=max_length, return_token_type_ids=pairs)
        types = batch["token_type_ids"] if pairs else None
        gold = data.gold(split)
        return Encoded(batch["input_ids"], types, gold.astype(np.float32) if data.kind == "multi_label" else gold)
    batch = tokenizer(rows.texts, is_split_into_words=True, truncation=True, max_length=max_length)
    targets, positions = [], []
    for i, tags in enumerate(rows.labels):
        word_ids = batch.word_ids(i)
        first: dict[int, int] = {}
        for position, word in enumerate(word_ids):
            if word is not None and word not in first:
                first[word] = position
        labels = [IGNORE] * len(word_ids)
        for word, position in first.items():
            labels[position] = ids[tags[word]]
        targets.append(labels)
        positions.append([first.get(word, -1) for word in range(len(tags))])
    return Encoded(batch["input_ids"], None, targets, positions)


def length_grouped_batches(lengths: list[int], batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Shuffle, sort by length within chunks of 50 batches, shuffle the batches (less padding, still random)."""
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


def collate(data: Encoded, indices: np.ndarray, pad_id: int, device: torch.device, with_targets: bool) -> dict[str, torch.Tensor]:
    """Dynamic padding: to the longest sequence of this batch only."""
    width = max(len(data.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    types = torch.zeros((len(indices), width), dtype=torch.long) if data.token_type_ids is not None else None
    labels = torch.full((len(indices), width), IGNORE, dtype=torch.long) if with_targets and data.word_positions is not None else None
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[row, :n] = torch.tensor(data.input_ids[i])
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(data.token_type_ids[i])
        if labels is not None:
            labels[row, :n] = torch.tensor(data.targets[i])
    batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if types is not None:
        batch["token_type_ids"] = types.to(device)
    if with_targets:
        if labels is not None:
            batch["labels"] = labels.to(device)
        else:
            batch["labels"] = torch.as_tensor(data.targets[indices]).to(device)
    return batch


def loss_fn(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if kind == "multi_label":
        return F.binary_cross_entropy_with_logits(logits, labels)
    if kind == "token":
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)
    return F.cross_entropy(logits, labels)


@torch.no_grad()
def predict(model, kind: str, data: Encoded, labels: list[str], fallback_tag: str, batch_size: int, pad_id: int, device: torch.device):
    """Class ids, label probabilities (multi-label), or one tag per word (token tasks)."""
    model.eval()
    n = len(data.input_ids)
    out: object = np.empty(n, dtype=np.int64) if kind == "single_label" else (np.empty((n, len(labels)), np.float32) if kind == "multi_label" else [None] * n)
    for batch in length_grouped_batches([len(x) for x in data.input_ids], batch_size * 2, rng=None):
        logits = model(**collate(data, batch, pad_id, device, with_targets=False)).logits.float()
        if kind == "single_label":
            out[batch] = logits.argmax(-1).cpu().numpy()
        elif kind == "multi_label":
            out[batch] = torch.sigmoid(logits).cpu().numpy()
        else:
            best = logits.argmax(-1).cpu().numpy()
            for row, i in enumerate(batch):
                # A word cut off by max_seq_length (or that tokenises to nothing) gets the fallback tag:
                # scored against its gold tag, never silently dropped.
                out[i] = [labels[best[row, p]] if p >= 0 else fallback_tag for p in data.word_positions[i]]
    return out


def _load_model(model_dir: Path, kind: str, labels: list[str], device: torch.device):
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    auto = AutoModelForTokenClassification if kind == "token" else AutoModelForSequenceClassification
    extra = {"problem_type": "multi_label_classification"} if kind == "multi_label" else {}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the "newly initialised head" notice is expected here
    try:
        model = load_model(
            auto,
            model_dir,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            attn_implementation="sdpa",
            **extra,
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model.to(device)


@dataclass
class Trained:
    """A fine-tuned model holding its best epoch's weights, with how it got there."""

    model: torch.nn.Module
    best_epoch: int
    epochs_trained: int
    validation: dict
    history: list[dict]
    thresholds: np.ndarray | None  # multi-label: per-label decision thresholds tuned on validation
    fallback_tag: str
    seconds: float


def train(
    model_dir: Path, data: TaskData, encoded: dict[str, Encoded], cfg: EvaluateConfig, seed: int, pad_id: int, device: torch.device
) -> Trained:
    """Fine-tune one model with one seed and keep the best validation epoch's weights (test is not looked at)."""
    kind, labels, metric = data.kind, data.labels, selection_metric(cfg)
    torch.manual_seed(seed)  # the head's initialisation and dropout
    model = _load_model(model_dir, kind, labels, device)
    fallback = "O" if cfg.task.tag_scheme == "BIO" else Counter(t for tags in data.train.labels for t in tags).most_common(1)[0][0]
    train = encoded["train"]
    steps_per_epoch = math.ceil(len(train.input_ids) / cfg.batch_size)
    total = steps_per_epoch * cfg.num_epochs
    warmup = int(cfg.warmup_ratio * total)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]  # biases, LayerNorm
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
        **({"fused": True} if device.type == "cuda" else {"foreach": True}),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    rng = np.random.default_rng(seed)  # data order
    gold_validation = data.gold("validation")
    best: dict = {"score": -1.0}
    best_state, thresholds, history = None, None, []
    started = time.perf_counter()
    lengths = [len(x) for x in train.input_ids]
    for epoch in range(1, cfg.num_epochs + 1):
        model.train()
        running, batches = 0.0, 0
        for batch in length_grouped_batches(lengths, cfg.batch_size, rng):
            inputs = collate(train, batch, pad_id, device, with_targets=True)
            targets = inputs.pop("labels")
            loss = loss_fn(kind, model(**inputs).logits, targets)
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            running += loss.item()
            batches += 1
        outputs = predict(model, kind, encoded["validation"], labels, fallback, cfg.batch_size, pad_id, device)
        epoch_thresholds = scoring.tune_thresholds(outputs, gold_validation) if kind == "multi_label" else None
        decided = outputs >= epoch_thresholds if kind == "multi_label" else outputs
        validation = scoring.scores(kind, gold_validation, decided, labels, cfg.task.tag_scheme)
        history.append({"epoch": epoch, "train_loss": round(running / max(batches, 1), 5), **{f"validation_{k}": round(v, 5) for k, v in validation.items()}})
        log.info("evaluate: seed %d epoch %d: train loss %.4f, validation %s %.4f", seed, epoch, history[-1]["train_loss"], metric, validation[metric])
        if validation[metric] > best["score"]:
            best = {"score": validation[metric], "epoch": epoch, "validation": validation}
            # Copy, not reference: the optimizer keeps updating the live tensors.
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            thresholds = epoch_thresholds
        elif cfg.patience_epochs is not None and epoch - best["epoch"] >= cfg.patience_epochs:
            log.info("evaluate: seed %d: no better validation %s for %d epochs; stopping", seed, metric, cfg.patience_epochs)
            break
    model.load_state_dict(best_state)
    return Trained(model, best["epoch"], len(history), best["validation"], history, thresholds, fallback, round(time.perf_counter() - started, 1))


def decide(trained: Trained, model, data: TaskData, encoded: Encoded, cfg: EvaluateConfig, pad_id: int, device: torch.device):
    """`model`'s decisions on `encoded` (a trained model, or a transformed copy of it such as int8)."""
    outputs = predict(model, data.kind, encoded, data.labels, trained.fallback_tag, cfg.batch_size, pad_id, device)
    return outputs >= trained.thresholds if data.kind == "multi_label" else outputs


def finetune(
    model_dir: Path, data: TaskData, encoded: dict[str, Encoded], cfg: EvaluateConfig, seed: int, pad_id: int, device: torch.device
) -> tuple[dict, object, Trained]:
    """Train one model with one seed; returns (the run's record, its test predictions, the trained model)."""
    trained = train(model_dir, data, encoded, cfg, seed, pad_id, device)
    predicted = decide(trained, trained.model, data, encoded["test"], cfg, pad_id, device)
    test = scoring.scores(data.kind, data.gold("test"), predicted, data.labels, cfg.task.tag_scheme, detail=True)
    record = {
        "seed": seed,
        "best_epoch": trained.best_epoch,
        "epochs_trained": trained.epochs_trained,
        "validation": trained.validation,
        "test": test,
        "history": trained.history,
        "seconds": trained.seconds,
    }
    if trained.thresholds is not None:
        record["thresholds"] = {label: float(t) for label, t in zip(data.labels, trained.thresholds)}
    return record, predicted, trained
