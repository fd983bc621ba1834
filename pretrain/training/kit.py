"""The masked-LM training kit of the pretrain and distill stages: data, optimisation, checkpoints, the loop.

A stage (`pretrain/pretrain.py`, `pretrain/distill.py`) builds its model and the module Accelerate
trains, then uses these pieces in order: `setup`, `check_fits`, `make_masking`, `training_blocks`,
`eval_batches`, `prepare`, `start_or_resume`, `train_loop`, `write_model`, all inside `build_artifact`.
Every piece that can fail or log takes `section`, the config section its settings came from
(`pretrain`, `distill`, ...), so a message names the key to change.

Data: the token streams of the tokens stage are memory-mapped and cut into blocks of `max_seq_length`
([CLS] + text + [SEP]). Micro-batch g of a run is fully determined by (seed, g): which blocks (a
per-epoch permutation) and which tokens are masked. So data never depends on how many processes run
it or where a run resumed: the same global batch on 1 or N devices, and resuming seeks to the step
instead of replaying data. Checkpoints go to the store's work folder for the artifact id; re-running
the same command resumes from the last complete one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import safetensors.torch
import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from pretrain.core.logs import get_logger
from accelerate.utils import DistributedType, broadcast, parse_flag_from_env, set_seed
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from pretrain.core.artifacts import ArtifactStore, file_digest, respect_umask
from pretrain.core.config import PretrainConfig
from pretrain.core.errors import InputError, UserError
from pretrain.core.progress import progress as show_progress
from pretrain.data.formats import TokenStream, load_meta
from pretrain.models.families import max_sequence_length
from pretrain.training import flops
from pretrain.training.machine import compile_problem, precision_problem
from pretrain.training.mlm import Masking
from pretrain.training.precision import resolve as resolve_precision

log = get_logger(__name__)

# Where and how the job runs, and what runs before it (`assess`: the go/no-go estimate), not what it
# computes: left out of the artifact id. Checkpoints are where a run can resume from, not part of what
# it computes (the loss curve does not depend on them either): a run whose only change is how often it
# checkpoints resumes from the checkpoints it has.
EXECUTION_ONLY = {"launcher", "num_workers", "checkpoint_every_steps", "keep_checkpoints", "assess"}


class TrainingError(UserError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


# --- data --------------------------------------------------------------------------------------------


class Blocks:
    """Fixed-length blocks [CLS] + tokens + [SEP] cut from the token stream of a split of the tokens stage."""

    def __init__(self, tokens_dir: Path, split: str, seq_length: int):
        meta = load_meta(tokens_dir)
        self.stream = TokenStream(tokens_dir, split)  # memory-maps its shards lazily, once per (worker) process
        self.body = seq_length - 2
        self.cls_id, self.sep_id = meta["special_ids"]["cls"], meta["special_ids"]["sep"]
        self.count = len(self.stream) // self.body

    def __len__(self) -> int:
        return self.count

    def get(self, indices: np.ndarray) -> torch.Tensor:
        """Token ids of the blocks, shape (len(indices), seq_length)."""
        rows = np.stack([self.stream.ids(i * self.body, (i + 1) * self.body) for i in indices]).astype(np.int64)
        out = np.empty((len(indices), self.body + 2), dtype=np.int64)
        out[:, 0], out[:, 1:-1], out[:, -1] = self.cls_id, rows, self.sep_id
        return torch.from_numpy(out)

    def word_starts(self, indices: np.ndarray) -> torch.Tensor:
        """Whether each token of the blocks starts a word ([CLS] and the closing [SEP] do)."""
        out = np.ones((len(indices), self.body + 2), dtype=bool)
        for row, i in enumerate(indices):
            out[row, 1:-1] = self.stream.word_starts(i * self.body, (i + 1) * self.body)
        return torch.from_numpy(out)

    def masked(self, indices: np.ndarray, masking: Masking, generator: torch.Generator) -> dict[str, torch.Tensor]:
        starts = self.word_starts(indices) if masking.whole_word else None
        return masking(self.get(indices), generator, word_starts=starts)


def _mix(*numbers: int) -> int:
    """A well-spread 63-bit seed from several integers (np.random.SeedSequence hashing)."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(1, dtype=np.uint64)[0] >> 1)


class MicroBatches(Dataset):
    """This process's micro-batches from optimizer step `start_step` on, each a pure function of (seed, g)."""

    def __init__(self, blocks: Blocks, masking: Masking, micro_batch_size: int, seed: int,
                 accumulation_steps: int, world_size: int, rank: int, start_step: int, total_steps: int):  # fmt: skip
        self.blocks, self.masking, self.micro = blocks, masking, micro_batch_size
        self.seed, self.accum, self.world, self.rank = seed, accumulation_steps, world_size, rank
        self.start_step, self.total_steps = start_step, total_steps
        self.per_epoch = len(blocks) // micro_batch_size
        self._epoch: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.accum

    def global_index(self, k: int) -> int:
        step, a = divmod(k, self.accum)
        return ((self.start_step + step) * self.accum + a) * self.world + self.rank

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        g = self.global_index(k)
        epoch, j = divmod(g, self.per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, np.random.default_rng(_mix(self.seed, epoch)).permutation(len(self.blocks)))
        indices = self._epoch[1][j * self.micro : (j + 1) * self.micro]
        return self.blocks.masked(indices, self.masking, torch.Generator().manual_seed(_mix(self.seed, 1, g)))


def eval_batches(blocks: Blocks, masking: Masking, max_blocks: int, batch_size: int, seed: int) -> list[tuple[dict, int]]:
    """The same validation blocks and masks every time token perplexity is measured; (batch, tokens)."""
    n = min(max_blocks, len(blocks))
    batches = []
    for start in range(0, n, batch_size):
        indices = np.arange(start, min(start + batch_size, n))
        batch = blocks.masked(indices, masking, torch.Generator().manual_seed(_mix(seed, 2, start)))
        batches.append((batch, len(batch["masked_labels"])))
    return batches


def word_eval_batches(tokens_dir: Path, seq_length: int, max_words: int, batch_size: int, seed: int,
                      probability: float = 0.15) -> list[tuple[dict, int]]:  # fmt: skip
    """Validation windows cut at word boundaries with whole words masked; (batch, masked words).

    Per-token perplexities of models with different vocabularies are not comparable (the same text is
    a different number of tokens). Per-word perplexity is: words are the tokenizer's pre-tokenizer
    words, so the k-th word of the validation split is the same text under the base and an extended
    tokenizer, and whether it is masked depends only on k and the seed. All pieces of a masked word
    are [MASK]ed; its loss is the sum over its pieces; the result is exp(total loss / masked words).
    """
    meta = load_meta(tokens_dir)
    special = meta["special_ids"]
    validation = TokenStream(tokens_dir, "validation")
    stream = np.asarray(validation.ids(0, len(validation))).astype(np.int64)
    all_starts = np.flatnonzero(validation.word_starts(0, len(stream)))
    count = min(len(all_starts), max_words)
    starts, ends = all_starts[:count], np.append(all_starts[1:], len(stream))[:count]
    chosen = np.random.default_rng(_mix(seed, 3)).random(count) < probability
    chosen &= ~np.isin(stream[starts], [special["sep"], special["cls"], special["pad"], special["mask"]])

    # Pack whole words into windows of at most seq_length - 2 tokens; keep windows with a chosen word.
    body = seq_length - 2
    windows: list[tuple[int, int, list[int]]] = []  # (first token, end token, chosen words)
    begin, picked = None, []
    for k in range(count):
        if ends[k] - starts[k] > body or (begin is not None and ends[k] - begin > body):
            if picked:
                windows.append((begin, int(starts[k]), picked))
            begin, picked = None, []
            if ends[k] - starts[k] > body:
                continue  # a word longer than a window cannot be scored whole
        if begin is None:
            begin = int(starts[k])
        if chosen[k]:
            picked.append(k)
    if picked:
        windows.append((begin, int(ends[count - 1]), picked))

    batches = []
    for first in range(0, len(windows), batch_size):
        group = windows[first : first + batch_size]
        ids = torch.full((len(group), seq_length), special["pad"], dtype=torch.long)
        attention = torch.zeros_like(ids)
        positions, labels, words = [], [], 0
        for row, (begin, end, picked) in enumerate(group):
            length = end - begin
            ids[row, 0], ids[row, length + 1] = special["cls"], special["sep"]
            ids[row, 1 : length + 1] = torch.from_numpy(stream[begin:end])
            attention[row, : length + 2] = 1
            for k in picked:
                for position in range(int(starts[k]), int(ends[k])):
                    flat = row * seq_length + 1 + position - begin
                    positions.append(flat)
                    labels.append(int(stream[position]))
            words += len(picked)
        positions_t = torch.tensor(positions, dtype=torch.long)
        ids.view(-1)[positions_t] = special["mask"]
        batch = {"input_ids": ids, "attention_mask": attention, "masked_positions": positions_t, "masked_labels": torch.tensor(labels, dtype=torch.long)}
        batches.append((batch, words))
    return batches


def make_masking(cfg: PretrainConfig, meta: dict) -> Masking:
    """The masking of a config section, for the vocabulary of a tokens artifact (`meta`)."""
    special = meta["special_ids"]
    return Masking(
        mlm_probability=cfg.mlm_probability,
        mask_replace_prob=cfg.mask_replace_prob,
        random_replace_prob=cfg.random_replace_prob,
        mask_id=special["mask"],
        special_ids=tuple(sorted({special["cls"], special["sep"], special["pad"], special["mask"]})),
        vocab_size=meta["vocab_size"],
        whole_word=cfg.whole_word_mask,
    )


# Fewer validation blocks than this and a perplexity is a noisy figure: the run warns, and so does the report.
FEW_EVAL_BLOCKS = 50


def training_blocks(section: str, cfg: PretrainConfig, tokens_dir: Path) -> tuple[Blocks, Blocks]:
    """Train and validation blocks of the tokens artifact; an InputError when there are too few to train on."""
    train_blocks = Blocks(tokens_dir, "train", cfg.max_seq_length)
    validation_blocks = Blocks(tokens_dir, "validation", cfg.max_seq_length)
    if len(train_blocks) < cfg.micro_batch_size:
        raise InputError(
            f"the corpus gives {len(train_blocks)} training blocks of {cfg.max_seq_length} tokens, fewer than "
            f"{section}.micro_batch_size ({cfg.micro_batch_size}); add text or lower max_seq_length / micro_batch_size"
        )
    if len(validation_blocks) == 0:
        raise InputError(f"the validation split has fewer than {cfg.max_seq_length} tokens; raise ingest.validation_fraction")
    if len(validation_blocks) < min(FEW_EVAL_BLOCKS, cfg.max_eval_blocks):
        log.warning(
            "%s: validation perplexity rests on %d blocks of %d tokens (under %d): its changes say little; raise "
            "ingest.validation_fraction for a larger validation split", section, len(validation_blocks), cfg.max_seq_length, FEW_EVAL_BLOCKS,
        )  # fmt: skip
    return train_blocks, validation_blocks


# --- setup, optimizer and schedule -------------------------------------------------------------------


def total_steps(cfg: PretrainConfig) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return math.ceil(cfg.max_tokens / (cfg.global_batch_size * cfg.max_seq_length))


def accumulation_steps(section: str, cfg: PretrainConfig, world_size: int) -> int:
    per_step = cfg.micro_batch_size * world_size
    if cfg.global_batch_size % per_step:
        raise UserError(
            f"{section}.global_batch_size ({cfg.global_batch_size}) is not a multiple of micro_batch_size "
            f"({cfg.micro_batch_size}) x processes ({world_size}); change one of them"
        )
    return cfg.global_batch_size // per_step


def process_state() -> PartialState:
    """This process's place in the job (rank, world size), before any Accelerator exists."""
    # AcceleratorState reads ACCELERATE_USE_CPU but a bare PartialState does not: without this, the
    # processes of a multi-process CPU launch would each start alone as rank 0.
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def check_trackers(section: str, log_with: list[str]) -> None:
    needs = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml", "aim": "aim"}
    for tracker in log_with:
        module = needs.get(tracker)
        if module and importlib.util.find_spec(module) is None:
            raise UserError(f"{section}.log_with: {tracker!r} needs the {module!r} package; `pip install {module}` or drop it")


def check_machine(section: str, cfg: PretrainConfig) -> None:
    """A UserError naming the key when this machine cannot run the section's precision or compile setting."""
    problems = [precision_problem(f"{section}.mixed_precision", cfg.mixed_precision), cfg.compile and compile_problem(f"{section}.compile")]
    if any(problems):
        raise UserError("; ".join(p for p in problems if p))


def setup(section: str, cfg: PretrainConfig, work_dir: Path) -> tuple[Accelerator, int]:
    """The Accelerator of a training run and its gradient accumulation steps; logs the config, seeds every RNG."""
    check_trackers(section, cfg.log_with)
    check_machine(section, cfg)
    state = process_state()
    accum = accumulation_steps(section, cfg, state.num_processes)
    precision, why = resolve_precision(cfg.mixed_precision, state.device)
    # Accelerate keeps one state per process and refuses a second Accelerator with another precision;
    # stages run one after another in one process (the pipeline, TAPT inside evaluate) may differ.
    # The process group (PartialState) is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=accum,
        log_with=cfg.log_with or None,
        project_dir=str(work_dir / "logs"),
    )
    check_checkpointable(section, cfg, accelerator)
    log.info("%s: config %s", section, cfg.model_dump_json(), main_process_only=True)
    log.info("%s: training in %s (%s)", section, flops.PRECISION_NAMES[precision], why, main_process_only=True)
    set_seed(cfg.seed)
    return accelerator, accum


def check_fits(section: str, cfg: PretrainConfig, model: torch.nn.Module, meta: dict, role: str) -> None:
    """A UserError/InputError when the sequence length or the tokens' vocabulary does not fit the model (`role`: what it is)."""
    limit = max_sequence_length(model.config.to_dict())
    if limit is not None and cfg.max_seq_length > limit:
        raise UserError(f"{section}.max_seq_length ({cfg.max_seq_length}) exceeds the {limit} tokens the {role} takes (its max_position_embeddings)")
    rows = model.get_input_embeddings().num_embeddings
    if rows < meta["vocab_size"]:
        raise InputError(f"tokenizer vocabulary ({meta['vocab_size']}) is larger than the {role}'s embedding matrix ({rows} rows)")


def lr_lambda(warmup_steps: int, steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (steps - step) / max(1, steps - warmup_steps))

    return factor


def make_optimizer(model: torch.nn.Module, cfg: PretrainConfig, device: torch.device) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]  # biases, LayerNorm
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    options = {"lr": cfg.learning_rate, "betas": (cfg.adam_beta1, cfg.adam_beta2), "eps": cfg.adam_epsilon}
    # The fused kernel (CUDA, and CPU since torch 2.4) is far faster than the per-parameter loop;
    # multi-tensor (foreach) is the fallback where fused is not available.
    try:
        return torch.optim.AdamW(groups, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, foreach=True, **options)


def prepare(accelerator: Accelerator, task: torch.nn.Module, cfg: PretrainConfig, steps: int):
    """(task, optimizer, scheduler) ready to train: AdamW, linear warmup and decay, prepared by Accelerate."""
    optimizer = make_optimizer(task, cfg, accelerator.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, steps))
    task, optimizer = accelerator.prepare(task, optimizer)  # the scheduler is stepped by hand, once per optimizer step
    return task, optimizer, scheduler


@torch.no_grad()
def perplexity(model: torch.nn.Module, batches: list[tuple[dict, int]], accelerator: Accelerator) -> float:
    """exp(summed cross-entropy of the masked tokens / units: tokens or words), split across processes."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for i, (batch, units) in enumerate(batches):
        if i % accelerator.num_processes != accelerator.process_index:
            continue
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        total[0] += model(**batch, reduction="sum").double()
        total[1] += units
    total = accelerator.reduce(total, reduction="sum")
    model.train()
    return math.exp(total[0].item() / max(total[1].item(), 1))


# --- checkpoints: the one place that knows how training state is saved and restored -------------------
#
# Nothing in a checkpoint is pickled, so a file planted in a checkpoint folder can never run as code:
# tensors go into safetensors files, everything else into JSON, and only the files listed in the
# state file (with their size and sha256) are ever read. A checkpoint `step-00000400/` holds
#   model.safetensors                    the trained module's weights (tied weights stored once)
#   optimizer.safetensors, optimizer.json the optimizer's state tensors; its param groups and other values
#   scheduler.json                       the learning-rate schedule's state
#   scaler.json                          the fp16 gradient scaler's state (fp16 only)
#   rng-<rank>.safetensors, rng-<rank>.json  each process's random states: torch CPU and CUDA
#                                        generators (tensors), Python's and NumPy's (JSON)
#   trainer_state.json                   progress, the accelerator's step and every file's size and
#                                        sha256: written last, so a checkpoint is complete or absent

_CHECKPOINT_PREFIX = "step-"
_STATE_FILE = "trainer_state.json"
_FORMAT = "dapt-checkpoint-2"
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


def _split_tensors(value, name: str, tensors: dict[str, torch.Tensor]):
    """`value` as JSON with each tensor replaced by a reference into `tensors` (filled here under its key path)."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value.detach().to("cpu").contiguous()
        return {_TENSOR: name}
    if isinstance(value, tuple):
        return {_TUPLE: [_split_tensors(v, f"{name}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_split_tensors(v, f"{name}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        # Keys keep their type (optimizer state is keyed by parameter number): JSON objects would make them strings.
        return {_ITEMS: [[k, _split_tensors(v, f"{name}.{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TrainingError(f"cannot checkpoint a {type(value).__name__} ({name}) without pickle, and checkpoints hold no pickle")


def _join_tensors(value, tensors: dict[str, torch.Tensor]):
    """The inverse of `_split_tensors`."""
    if isinstance(value, list):
        return [_join_tensors(v, tensors) for v in value]
    if isinstance(value, dict):
        if _TENSOR in value:
            return tensors[value[_TENSOR]]
        if _TUPLE in value:
            return tuple(_join_tensors(v, tensors) for v in value[_TUPLE])
        return {k: _join_tensors(v, tensors) for k, v in value[_ITEMS]}
    return value


def _save_state(folder: Path, stem: str, state) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split_tensors(state, stem, tensors)
    if tensors:
        safetensors.torch.save_file(tensors, str(folder / f"{stem}.safetensors"))
    (folder / f"{stem}.json").write_text(json.dumps(skeleton))


def _load_state(folder: Path, stem: str):
    tensors_file = folder / f"{stem}.safetensors"
    tensors = safetensors.torch.load_file(str(tensors_file)) if tensors_file.is_file() else {}
    return _join_tensors(json.loads((folder / f"{stem}.json").read_text()), tensors)


def _random_states() -> dict:
    numpy_state = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_random_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(states["cuda"]))


def check_checkpointable(section: str, cfg: PretrainConfig, accelerator: Accelerator) -> None:
    """A UserError, before training, when checkpoints are asked for where they cannot be written without pickle."""
    sharded = {DistributedType.FSDP: "FSDP", DistributedType.DEEPSPEED: "DeepSpeed"}.get(accelerator.distributed_type)
    if sharded and cfg.checkpoint_every_steps is not None:
        raise UserError(
            f"{section}.checkpoint_every_steps: checkpoints under {sharded} are not supported: its sharded training state "
            "is saved with pickle, and this pipeline never unpickles anything. Train with DDP (e.g. "
            "infra/accelerate/gpu_8.yaml) to checkpoint, or remove checkpoint_every_steps"
        )


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    """Every complete checkpoint in the folder (its state file written), newest first (by step, never by time)."""
    complete = [p for p in checkpoints.glob(f"{_CHECKPOINT_PREFIX}*") if (p / _STATE_FILE).is_file()]
    return sorted(complete, key=lambda p: int(p.name[len(_CHECKPOINT_PREFIX) :]), reverse=True)


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint in the folder, or None."""
    return next(iter(complete_checkpoints(checkpoints)), None)


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a complete-looking checkpoint cannot be restored (a file truncated, changed or missing; an older format), or None."""
    try:
        state = json.loads((checkpoint / _STATE_FILE).read_text())
    except (OSError, ValueError) as e:
        return f"{_STATE_FILE} is unreadable ({e})"
    if not isinstance(state, dict) or state.get("format") != _FORMAT or not isinstance(state.get("files"), dict):
        return f"{_STATE_FILE} is not a {_FORMAT} state file (written by an older version, whose checkpoints hold pickles)"
    for name, meta in state["files"].items():
        path = checkpoint / name
        if not (isinstance(name, str) and "/" not in name and "\\" not in name and name not in ("", ".", "..")):
            return f"{_STATE_FILE} lists {name!r}, which is not a file of the checkpoint"
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != meta["size"]:
            return f"{name} is {path.stat().st_size:,} bytes, {meta['size']:,} when it was written (truncated?)"
        if file_digest(path)["sha256"] != meta["sha256"]:
            return f"{name} changed since it was written (sha256 differs)"
        if name.endswith(".json"):  # a state file whose hashes were forged to match: still only JSON is ever read
            try:
                json.loads(path.read_bytes().decode("utf-8"))
            except ValueError:  # UnicodeDecodeError and JSONDecodeError both are
                return f"{name} is not JSON"
    return None


def save_checkpoint(section: str, accelerator: Accelerator, checkpoints: Path, step: int, progress: dict, keep: int,
                    task: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> None:  # fmt: skip
    """Save the training state (model, optimizer, scheduler, RNG states) and `progress` atomically; keep the newest `keep`."""
    final = checkpoints / f"{_CHECKPOINT_PREFIX}{step:08d}"
    staging = checkpoints / f".tmp-{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    _save_state(staging, f"rng-{rank}", _random_states())  # every process its own: dropout differs per rank
    if accelerator.is_main_process:
        # Under DDP every process holds the same weights and optimizer state: the main process writes them.
        safetensors.torch.save_model(accelerator.unwrap_model(task, keep_torch_compile=False), str(staging / "model.safetensors"))
        _save_state(staging, "optimizer", optimizer.state_dict())
        _save_state(staging, "scheduler", scheduler.state_dict())
        if accelerator.scaler is not None:
            _save_state(staging, "scaler", accelerator.scaler.state_dict())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {p.name: file_digest(p) for p in sorted(staging.iterdir()) if p.is_file()}
        state = {"format": _FORMAT, "processes": accelerator.num_processes, "accelerator_step": accelerator.step,
                 "progress": progress, "files": files}  # fmt: skip
        # The state file is written last and the folder renamed: a checkpoint is complete or absent.
        (staging / _STATE_FILE).write_text(json.dumps(state))
        respect_umask(staging)  # safetensors writes 0600; a teammate on a shared store must be able to resume
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        for old in complete_checkpoints(checkpoints)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("%s: checkpoint %s", section, final)
    accelerator.wait_for_everyone()


def restore_checkpoint(accelerator: Accelerator, checkpoint: Path, task: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> dict:
    """Load a checkpoint's training state into the prepared objects; returns the progress saved with it.

    Reads only the files its state file lists (checked by `checkpoint_problem` first): weights and
    tensors from safetensors, the rest from JSON. Nothing is unpickled.
    """
    state = json.loads((checkpoint / _STATE_FILE).read_text())
    safetensors.torch.load_model(accelerator.unwrap_model(task, keep_torch_compile=False), str(checkpoint / "model.safetensors"))
    optimizer.load_state_dict(_load_state(checkpoint, "optimizer"))
    scheduler.load_state_dict(_load_state(checkpoint, "scheduler"))
    if accelerator.scaler is not None and "scaler.json" in state["files"]:
        accelerator.scaler.load_state_dict(_load_state(checkpoint, "scaler"))
    rank = accelerator.process_index
    if f"rng-{rank}.json" in state["files"]:
        _set_random_states(_load_state(checkpoint, f"rng-{rank}"))
    else:
        log.warning("%s has no random states for process %d (it was written by %d processes): dropout will differ from an "
                    "uninterrupted run", checkpoint, rank, state["processes"])  # fmt: skip
    accelerator.step = state["accelerator_step"]
    return state["progress"]


def start_or_resume(section: str, cfg: PretrainConfig, accelerator: Accelerator, work_dir: Path, steps: int,
                    task: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> tuple[Path, dict | None]:  # fmt: skip
    """Start the trackers; restore the newest intact checkpoint if any. Returns (checkpoints folder, saved progress or None).

    A checkpoint that cannot be restored (a file truncated or changed, e.g. by a full disk) is named,
    set aside as `broken-step-…` (kept, not deleted) and the previous one tried; with none left the
    run starts over, saying so.
    """
    if cfg.log_with:
        hyperparameters = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in cfg.model_dump(exclude=EXECUTION_ONLY).items()}
        accelerator.init_trackers(section, config=hyperparameters)
    checkpoints = work_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    candidates = complete_checkpoints(checkpoints)
    accelerator.wait_for_everyone()  # every process has listed them before any is set aside
    chosen = -1
    if accelerator.is_main_process:
        for i, checkpoint in enumerate(candidates):
            problem = checkpoint_problem(checkpoint)
            if problem is None:
                chosen = i
                break
            aside = checkpoints / f"broken-{checkpoint.name}"
            while aside.exists():
                aside = aside.with_name(f"{aside.name}+")
            checkpoint.rename(aside)
            fallback = "trying the previous one" if i + 1 < len(candidates) else "no checkpoint left: starting over from step 0"
            log.warning("%s: checkpoint %s cannot be restored: %s. Set aside as %s; %s", section, checkpoint, problem, aside.name, fallback)
    # The main process decided; every process restores the same checkpoint.
    chosen = int(broadcast(torch.tensor([chosen], device=accelerator.device)).item())
    if chosen < 0:
        return checkpoints, None
    progress = restore_checkpoint(accelerator, candidates[chosen], task, optimizer, scheduler)
    log.info("%s: resuming from %s (step %d of %d)", section, candidates[chosen], progress["step"], steps, main_process_only=True)
    return checkpoints, progress


# --- the loop ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def counting_flops():
    """Count the matmul and attention FLOPs of what runs inside (forward and backward), eagerly.

    Compiled code runs eagerly here (FlopCounterMode sees only the operators eager execution
    dispatches), so with `compile` the counted micro-batch is the one step not compiled.
    """
    stance = torch.compiler.set_stance("force_eager") if hasattr(torch.compiler, "set_stance") else contextlib.nullcontext()
    with stance, FlopCounterMode(display=False) as counter:
        yield counter


def train_loop(
    section: str,
    cfg: PretrainConfig,
    accelerator: Accelerator,
    task: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_blocks: Blocks,
    masking: Masking,
    accum: int,
    steps: int,
    progress: dict,
    checkpoints: Path,
    evaluation: list,
    loss_names: tuple[str, ...] = ("loss",),
    before_step: Callable[[dict], None] | None = None,
) -> None:
    """Train from `progress["step"]` to `steps`, logging, evaluating and checkpointing on the way; updates `progress`.

    `task(**batch)` returns the loss, or a vector whose first entry is the loss and the rest its parts
    (named by `loss_names`, logged); `before_step` may add to each micro-batch first (a teacher's logits).
    """
    data = MicroBatches(train_blocks, masking, cfg.micro_batch_size, cfg.seed, accum,
                        accelerator.num_processes, accelerator.process_index, progress["step"], steps)  # fmt: skip
    # A private generator: creating the iterator must not draw from the global RNG that dropout uses,
    # or a resumed run (which creates it after restoring that RNG) would drift from an uninterrupted one.
    workers = cfg.num_workers if cfg.num_workers is not None else (2 if accelerator.device.type == "cuda" else 0)
    loader = DataLoader(data, batch_size=None, shuffle=False, num_workers=workers,
                        pin_memory=accelerator.device.type == "cuda", generator=torch.Generator())  # fmt: skip
    tokens_per_step = cfg.global_batch_size * cfg.max_seq_length
    # A live bar on a terminal, a line every 30 s in a log (between the per-step log lines); main process only.
    bar = show_progress(steps, section, unit="step", initial=progress["step"])
    running = torch.zeros(len(loss_names), device=accelerator.device)
    window_start, window_steps, window_seconds = time.perf_counter(), 0, 0.0
    if "window" in progress:  # resumed from a checkpoint between two log steps: its window goes on
        running = torch.tensor(progress["window"]["losses"], dtype=running.dtype, device=accelerator.device)
        window_steps, window_seconds = progress["window"]["steps"], progress["window"]["seconds"]
    device = flops.device_name(accelerator.device)
    peak = flops.peak_flops(device, accelerator.mixed_precision)
    # FLOPs are counted once per run, on the first micro-batch (a resumed run kept the count).
    count = "flops_per_step" not in progress
    batches = iter(loader)
    task.train()
    for step in range(progress["step"], steps):
        for _ in range(accum):
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in next(batches).items()}
            with counting_flops() if count else contextlib.nullcontext() as counter:
                if before_step is not None:
                    before_step(batch)
                with accelerator.accumulate(task):
                    losses = task(**batch).reshape(-1)
                    accelerator.backward(losses[0])
                    if accelerator.sync_gradients and cfg.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(task.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            if count:
                count = False
                progress["flops_per_step"] = counter.get_total_flops() * accum
                log.info("%s: %.4g model FLOPs per optimizer step per process (counted on the first micro-batch); %s", section,
                         progress["flops_per_step"], flops.describe_peak(device, accelerator.mixed_precision), main_process_only=True)  # fmt: skip
            running += losses.detach() / accum
        scheduler.step()
        window_steps += 1
        done = step + 1
        bar.update(1)

        at_log = done % cfg.log_every_steps == 0 or done == steps
        at_eval = cfg.eval_every_steps is not None and done % cfg.eval_every_steps == 0 and done != steps
        at_checkpoint = cfg.checkpoint_every_steps is not None and done % cfg.checkpoint_every_steps == 0 and done != steps
        if not (at_log or at_eval or at_checkpoint):
            continue
        # The only host syncs: at log/eval/checkpoint steps, never every step.
        sums = accelerator.reduce(running, reduction="mean").tolist()
        means = [value / window_steps for value in sums]
        mean_loss = means[0]
        if not math.isfinite(mean_loss):
            raise TrainingError(
                f"{section}: the training loss became {mean_loss} between steps {done - window_steps + 1} and {done}; "
                f"the last good checkpoint is kept in {checkpoints}. Lower {section}.learning_rate or use fp32/bf16."
            )
        seconds = window_seconds + time.perf_counter() - window_start
        if not (at_log or at_eval):
            # A checkpoint between two log steps: the loss window goes on, and the checkpoint carries it, so
            # the curve (the artifact) is the same however often the run checkpoints and wherever it resumed.
            progress["step"] = done
            progress["window"] = {"steps": window_steps, "losses": sums, "seconds": seconds}
            save_checkpoint(section, accelerator, checkpoints, done, progress, cfg.keep_checkpoints, task, optimizer, scheduler)
            window_start, window_seconds = time.perf_counter(), seconds  # the checkpoint's own time is not training time
            continue
        progress.pop("window", None)
        progress["train_seconds"] += seconds
        progress["tokens"] += window_steps * tokens_per_step
        point = {
            "step": done,
            **{name: round(value, 5) for name, value in zip(loss_names, means)},
            "learning_rate": scheduler.get_last_lr()[0],
            "tokens_per_second": round(window_steps * tokens_per_step / seconds, 1),
        }
        if peak is not None:
            point["mfu"] = round(window_steps * progress["flops_per_step"] / seconds / peak, 4)
        if at_eval:
            point["validation_perplexity"] = perplexity(task, evaluation, accelerator)
        progress["step"] = done
        progress["curve"].append(point)
        accelerator.log({k: v for k, v in point.items() if k != "step"}, step=done)
        bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{point['tokens_per_second']:,.0f}")
        log.info("%s: step %d/%d %s", section, done, steps, json.dumps(point), main_process_only=True)
        if at_checkpoint:
            save_checkpoint(section, accelerator, checkpoints, done, progress, cfg.keep_checkpoints, task, optimizer, scheduler)
        running.zero_()
        window_start, window_steps, window_seconds = time.perf_counter(), 0, 0.0
    bar.close()


# --- the trained model -------------------------------------------------------------------------------


def utilisation(cfg: PretrainConfig, accelerator: Accelerator, progress: dict) -> dict:
    """Model FLOPs per step and per second over the run's timed windows, and MFU (or why there is none)."""
    if "flops_per_step" not in progress:
        return {}
    steps = progress["tokens"] / (cfg.global_batch_size * cfg.max_seq_length)
    return flops.utilisation(progress["flops_per_step"], steps, progress["train_seconds"], accelerator.num_processes,
                             flops.device_name(accelerator.device), accelerator.mixed_precision)  # fmt: skip


def ranks_in_sync(model: torch.nn.Module, accelerator: Accelerator) -> bool:
    """Whether every data-parallel process holds the same weights (DDP must keep them identical)."""
    fingerprint = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().square().sum()]) for p in model.parameters()])
    everyone = accelerator.gather(fingerprint.to(accelerator.device).unsqueeze(0))
    return bool((everyone == everyone[0]).all())


def write_model(accelerator: Accelerator, task: torch.nn.Module, cfg: PretrainConfig, work_dir: Path,
                tokenizer_files: Iterable[Path], curve: list[dict]) -> None:  # fmt: skip
    """Write the trained model (`task.model`) to `work_dir/output`: `model/` with the tokenizer files, `curve.json`, `logs/`.

    Every process calls it (gathering the weights is collective under FSDP/DeepSpeed); the main process writes.
    """
    state_dict = accelerator.get_state_dict(task)
    for tracker in accelerator.trackers:  # not end_training(): that also ends the process group
        tracker.finish()
    if not accelerator.is_main_process:
        return
    output = work_dir / "output"
    shutil.rmtree(output, ignore_errors=True)
    weights = {k.removeprefix("model."): v for k, v in state_dict.items()}
    accelerator.unwrap_model(task).model.save_pretrained(output / "model", state_dict=weights)
    for f in tokenizer_files:
        shutil.copy2(f, output / "model" / f.name)
    (output / "curve.json").write_text(json.dumps(curve, indent=1))
    if cfg.log_with and (work_dir / "logs").is_dir():
        shutil.copytree(work_dir / "logs", output / "logs")


def build_artifact(stage: str, cfg: PretrainConfig, store: ArtifactStore, aid: str, inputs: dict[str, str],
                   train: Callable[[Path], dict]) -> str:  # fmt: skip
    """Build (or find) the model artifact `aid`; under `accelerate launch` every process trains, rank 0 publishes.

    `train(work_dir)` trains (resuming from the work folder's checkpoints), leaves the artifact's files
    in `work_dir/output` and returns the metrics.
    """
    state = process_state()
    if store.exists(aid):
        log.info("%s %s: already built (cache hit)", stage, aid, main_process_only=True)
        return aid
    work_dir = store.work_dir(aid)
    metrics = train(work_dir)
    if state.is_main_process:
        with store.build(stage, aid, config=cfg.model_dump(), inputs=inputs) as build:
            shutil.copytree(work_dir / "output", build.dir, dirs_exist_ok=True)
            build.metrics.update(metrics)
        # Published: the checkpoints have served their purpose.
        shutil.rmtree(work_dir, ignore_errors=True)
    state.wait_for_everyone()
    if state.use_distributed:
        state.destroy_process_group()
    return aid
