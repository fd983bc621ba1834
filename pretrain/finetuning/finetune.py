"""Fine-tune one model with one learning rate and seed on a task, and keep the result as a `finetune` artifact.

The recipe (the same for every compared model): a fresh task head on the pretrained encoder, AdamW
(no decay on biases and LayerNorm) with linear warmup and linear decay over `num_epochs`, gradient
clipping, attention masks, dynamic padding and length-grouped batches. Losses: cross-entropy
(single-label; token tasks on the first sub-token of every word only), binary cross-entropy on
sigmoid outputs (multi-label). After every epoch the validation score (`selection_metric`) decides:
the best epoch's weights are kept, and training stops after `patience_epochs` epochs without a
better one. A run whose best epoch is its last allowed one (`num_epochs`) has not converged: it is
flagged (`converged: false`) and warned about. Test is scored once, with the best epoch's weights
(and, multi-label, the per-label thresholds tuned on validation at that epoch).

The seed fixes the head's initialisation, the data order and dropout: the same seed gives the same
numbers on the same hardware.

Each run is an artifact of its own (`f-...`, built by the evaluate stage through `build`), keyed by
the model artifact, the task files' content, the settings that change one run (`RUN_SETTINGS`), its
learning rate and seed, and this module's code; so any later comparison that fine-tunes the same
model the same way reuses it. It holds:
- `model/`: a Hugging Face folder (config with `id2label`/`label2id`, `model.safetensors` with the best
  epoch's weights, the tokenizer files) that `AutoModelForSequenceClassification` (or
  `AutoModelForTokenClassification`) loads as it is, with no code of this project;
- `run.json`: the run record (seed, learning rate, best epoch, epochs trained, convergence, validation
  and test scores with per-class detail, history per epoch, multi-label thresholds, the token-task
  fallback tag, seconds);
- `predictions.json`: test gold and predictions (`scoring.to_plain`; `scoring.from_plain` reads them back).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import EvaluateConfig
from pretrain.core.errors import UserError
from pretrain.core.ids import artifact_id
from pretrain.core.logs import get_logger
from pretrain.core.progress import Progress, progress
from pretrain.data.tasks import TaskData, test_record
from pretrain.finetuning import scoring
from pretrain.models.modelfiles import load_model
from pretrain.training.machine import precision_problem
from pretrain.training.precision import resolve as resolve_precision

log = get_logger(__name__)

STAGE = "finetune"
IGNORE = -100  # cross-entropy's ignore_index: sub-tokens after the first, special tokens, padding
# The evaluate settings that change what one run computes, and so its id. Not the seed list, the
# compared models, TAPT, int8, the bootstrap or the learning-rate grid: a run has one rate and one seed.
# `mixed_precision` is here: a bf16 run is another run (its scores differ slightly).
RUN_SETTINGS = ("task", "validation_fraction", "max_seq_length", "num_epochs", "patience_epochs", "selection_metric",
                "batch_size", "weight_decay", "warmup_ratio", "max_grad_norm", "mixed_precision")  # fmt: skip


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


def format_rate(rate: float) -> str:
    """A learning rate as people write it: 5e-4, 2e-5, 1.5e-3."""
    mantissa, exponent = f"{rate:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


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


def prediction_batches(data: Encoded, batch_size: int) -> int:
    """How many batches `predict` runs on `data` (it predicts twice `batch_size` at a time)."""
    return math.ceil(len(data.input_ids) / (batch_size * 2))


@torch.no_grad()
def predict(model, kind: str, data: Encoded, labels: list[str], fallback_tag: str, batch_size: int, pad_id: int, device: torch.device,
            bar: Progress | None = None):  # fmt: skip
    """Class ids, label probabilities (multi-label), or one tag per word (token tasks); `bar` counts its batches."""
    model.eval()
    n = len(data.input_ids)
    out: object = np.empty(n, dtype=np.int64) if kind == "single_label" else (np.empty((n, len(labels)), np.float32) if kind == "multi_label" else [None] * n)
    for batch in length_grouped_batches([len(x) for x in data.input_ids], batch_size * 2, rng=None):
        logits = model(**collate(data, batch, pad_id, device, with_targets=False)).logits.float()
        if bar is not None:
            bar.update(1)
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
            **extra,
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model.to(device)


def mixed_precision(precision: str, device: torch.device) -> tuple[torch.autocast, torch.amp.GradScaler]:
    """The autocast context of `evaluate.mixed_precision` and its gradient scaler (active for fp16 only)."""
    if problem := precision_problem("evaluate.mixed_precision", precision):
        raise UserError(problem)
    precision, _ = resolve_precision(precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    return autocast, torch.amp.GradScaler(device.type, enabled=precision == "fp16")


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


def run_batches(encoded: dict[str, Encoded], cfg: EvaluateConfig) -> int:
    """The most batches one run takes: training and validation every epoch, then test once."""
    per_epoch = math.ceil(len(encoded["train"].input_ids) / cfg.batch_size) + prediction_batches(encoded["validation"], cfg.batch_size)
    return per_epoch * cfg.num_epochs + prediction_batches(encoded["test"], cfg.batch_size)


def train(
    model_dir: Path, data: TaskData, encoded: dict[str, Encoded], cfg: EvaluateConfig, seed: int, pad_id: int, device: torch.device,
    learning_rate: float | None = None, desc: str | None = None, bar: Progress | None = None,
) -> Trained:  # fmt: skip
    """Fine-tune one model with one seed and keep the best validation epoch's weights (test is not looked at).

    `learning_rate`: the AdamW peak (default `cfg.learning_rate`). `desc` names the run in log lines;
    `bar` (a `progress` display) counts training and validation batches, else the run shows its own.
    """
    kind, labels, metric = data.kind, data.labels, selection_metric(cfg)
    learning_rate = cfg.learning_rate if learning_rate is None else learning_rate
    desc = desc or f"fine-tune seed {seed} lr {format_rate(learning_rate)}"
    autocast, scaler = mixed_precision(cfg.mixed_precision, device)
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
        lr=learning_rate,
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
    own = bar is None
    if own:
        bar = progress(total + prediction_batches(encoded["validation"], cfg.batch_size) * cfg.num_epochs, desc, unit="batch")
    try:
        for epoch in range(1, cfg.num_epochs + 1):
            model.train()
            running, batches = torch.zeros((), dtype=torch.float64, device=device), 0
            for batch in length_grouped_batches(lengths, cfg.batch_size, rng):
                inputs = collate(train, batch, pad_id, device, with_targets=True)
                targets = inputs.pop("labels")
                with autocast:
                    loss = loss_fn(kind, model(**inputs).logits, targets)
                scaler.scale(loss).backward()
                if cfg.max_grad_norm is not None:
                    scaler.unscale_(optimizer)  # clip the true gradients (a no-op unless fp16)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                running += loss.detach()  # read once per epoch: no host sync per step
                batches += 1
                bar.update(1)
            running = running.item()
            outputs = predict(model, kind, encoded["validation"], labels, fallback, cfg.batch_size, pad_id, device, bar)
            epoch_thresholds = scoring.tune_thresholds(outputs, gold_validation) if kind == "multi_label" else None
            decided = outputs >= epoch_thresholds if kind == "multi_label" else outputs
            validation = scoring.scores(kind, gold_validation, decided, labels, cfg.task.tag_scheme)
            history.append({"epoch": epoch, "train_loss": round(running / max(batches, 1), 5), **{f"validation_{k}": round(v, 5) for k, v in validation.items()}})
            log.info("%s: epoch %d: train loss %.4f, validation %s %.4f", desc, epoch, history[-1]["train_loss"], metric, validation[metric])
            bar.set_postfix(epoch=epoch, **{f"validation {metric}": f"{validation[metric]:.4f}"})
            if validation[metric] > best["score"]:
                best = {"score": validation[metric], "epoch": epoch, "validation": validation}
                # Copy, not reference: the optimizer keeps updating the live tensors.
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                thresholds = epoch_thresholds
            elif cfg.patience_epochs is not None and epoch - best["epoch"] >= cfg.patience_epochs:
                log.info("%s: no better validation %s for %d epochs; stopping", desc, metric, cfg.patience_epochs)
                break
    finally:
        if own:
            bar.close()
    model.load_state_dict(best_state)
    return Trained(model, best["epoch"], len(history), best["validation"], history, thresholds, fallback, round(time.perf_counter() - started, 1))


def decide(trained: Trained, model, data: TaskData, encoded: Encoded, cfg: EvaluateConfig, pad_id: int, device: torch.device,
           bar: Progress | None = None):  # fmt: skip
    """`model`'s decisions on `encoded` (a trained model, or a transformed copy of it such as int8)."""
    outputs = predict(model, data.kind, encoded, data.labels, trained.fallback_tag, cfg.batch_size, pad_id, device, bar)
    return outputs >= trained.thresholds if data.kind == "multi_label" else outputs


def finetune(
    model_dir: Path, data: TaskData, encoded: dict[str, Encoded], cfg: EvaluateConfig, seed: int, pad_id: int, device: torch.device,
    learning_rate: float | None = None, desc: str | None = None,
) -> tuple[dict, object, Trained]:  # fmt: skip
    """Train one model with one seed; returns (the run's record, its test predictions, the trained model).

    One progress display per run (`desc`, e.g. `evaluate adapted seed 1 lr 5e-4`) counts its batches:
    training, validation after every epoch, and test.
    """
    learning_rate = cfg.learning_rate if learning_rate is None else learning_rate
    desc = desc or f"fine-tune seed {seed} lr {format_rate(learning_rate)}"
    with progress(run_batches(encoded, cfg), desc, unit="batch") as bar:
        trained = train(model_dir, data, encoded, cfg, seed, pad_id, device, learning_rate, desc, bar)
        predicted = decide(trained, trained.model, data, encoded["test"], cfg, pad_id, device, bar)
    test = scoring.scores(data.kind, data.gold("test"), predicted, data.labels, cfg.task.tag_scheme, detail=True)
    record = {
        "seed": seed,
        "learning_rate": learning_rate,
        "best_epoch": trained.best_epoch,
        "epochs_trained": trained.epochs_trained,
        "converged": converged(trained.best_epoch, cfg),
        "validation": trained.validation,
        "test": test,
        "history": trained.history,
        "seconds": trained.seconds,
    }
    if trained.thresholds is not None:
        record["thresholds"] = {label: float(t) for label, t in zip(data.labels, trained.thresholds)}
    return record, predicted, trained


def converged(best_epoch: int, cfg: EvaluateConfig) -> bool:
    """Whether a run's best epoch came before its last allowed one: if not, more epochs might have done better."""
    return best_epoch < cfg.num_epochs


# --- the finetune artifact ---------------------------------------------------------------------------


def run_config(cfg: EvaluateConfig, learning_rate: float, seed: int, train_subset: dict | None = None) -> dict:
    """The settings of one run: what its artifact id hashes and its manifest records.

    `train_subset`: the label budget's subset of the train split (`budgets.Budget.run_key`), only when
    one applies: a run on the whole train split has the id it always had.
    """
    subset = {"train_subset": train_subset} if train_subset is not None else {}
    return {**cfg.model_dump(include=set(RUN_SETTINGS)), "learning_rate": learning_rate, "seed": seed, **subset}


def stage_id(cfg: EvaluateConfig, *, model: str, learning_rate: float, seed: int, sources: list[dict], train_subset: dict | None = None) -> str:
    """The id of fine-tuning model artifact `model` with these settings, rate and seed on the task whose files are `sources`
    (on the subset `train_subset` of its train split, when a label budget applies)."""
    return artifact_id(STAGE, run_config(cfg, learning_rate, seed, train_subset), inputs={"model": model}, sources=sources)


def build(
    cfg: EvaluateConfig, store: ArtifactStore, *, model: str, model_dir: Path, learning_rate: float, seed: int, data: TaskData,
    encoded: dict[str, Encoded], tokenizer, sources: list[dict], device: torch.device, name: str = "model",
    train_subset: dict | None = None,
) -> tuple[str, bool]:  # fmt: skip
    """Find or build the run's `f-` artifact; returns (its id, whether it was built now).

    `data`, `encoded` and `tokenizer` are the task read (`tasks.read_task`) and encoded (`encode`) for
    the model at `model_dir` (artifact `model`); `sources` the task files' digests; `name` is the
    model's name in the comparison, for log lines. With a label budget, `data` and `encoded` hold its
    subset of the train split and `train_subset` says which (`budgets.Budget.run_key`).
    """
    fid = stage_id(cfg, model=model, learning_rate=learning_rate, seed=seed, sources=sources, train_subset=train_subset)
    budget = f" labels/class {train_subset['labels_per_class']}" if train_subset is not None else ""
    desc = f"evaluate {name} seed {seed} lr {format_rate(learning_rate)}{budget}"
    if store.exists(fid):
        log.info("%s: fine-tune %s already built (cache hit)", desc, fid)
        return fid, False
    log.info("%s: fine-tuning %s into %s", desc, model, fid)
    metric = selection_metric(cfg)
    config = run_config(cfg, learning_rate, seed, train_subset)
    with store.build(STAGE, fid, config=config, inputs={"model": model}, sources=sources) as out:
        record, predicted, trained = finetune(model_dir, data, encoded, cfg, seed, tokenizer.pad_token_id or 0, device, learning_rate, desc)
        folder = out.dir / "model"
        trained.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        # The task section and input settings too: `dapt export` and `dapt predict` re-read the test files with them.
        description = {"model": model, "task": cfg.task.model_dump(mode="json"), "type": data.kind, "labels": data.labels,
                       "selection_metric": metric, "fallback_tag": trained.fallback_tag, "max_seq_length": cfg.max_seq_length,
                       "batch_size": cfg.batch_size, "test_examples": test_record(cfg.task, data)}  # fmt: skip
        (out.dir / "run.json").write_text(json.dumps({**description, **record}, indent=1))
        gold = data.gold("test")
        (out.dir / "predictions.json").write_text(json.dumps({
            "type": data.kind, "labels": data.labels, "gold": scoring.to_plain(data.kind, gold), "predicted": scoring.to_plain(data.kind, predicted),
        }))  # fmt: skip
        out.metrics.update(
            task=cfg.task.name, type=data.kind, seed=seed, learning_rate=learning_rate, best_epoch=record["best_epoch"], train_examples=len(data.train),
            **({"labels_per_class": train_subset["labels_per_class"]} if train_subset is not None else {}),
            epochs_trained=record["epochs_trained"], converged=record["converged"], selection_metric=metric,
            **{f"validation_{metric}": round(record["validation"][metric], 6), "test_accuracy": round(record["test"]["accuracy"], 6),
               f"test_{metric}": round(record["test"][metric], 6)},
        )  # fmt: skip
    return fid, True


def load_run(store: ArtifactStore, fid: str) -> tuple[dict, object]:
    """A finetune artifact's run record and its test predictions (in the form `scoring` takes)."""
    folder = store.local_dir(fid)
    record = json.loads((folder / "run.json").read_text())
    saved = json.loads((folder / "predictions.json").read_text())
    return record, scoring.from_plain(saved["type"], saved["predicted"], len(saved["labels"]))


def load_trained(store: ArtifactStore, fid: str, device: torch.device) -> Trained:
    """A finetune artifact's classifier, as `train` returned it (for measuring it further, e.g. int8)."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    folder = store.local_dir(fid)
    record = json.loads((folder / "run.json").read_text())
    auto = AutoModelForTokenClassification if record["type"] == "token" else AutoModelForSequenceClassification
    model = load_model(auto, folder / "model", f"fine-tuned model {fid}").to(device)
    thresholds = np.array([record["thresholds"][label] for label in record["labels"]]) if "thresholds" in record else None
    return Trained(model, record["best_epoch"], record["epochs_trained"], record["validation"], record["history"], thresholds,
                   record["fallback_tag"], record["seconds"])  # fmt: skip
