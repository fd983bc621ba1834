"""Distill: train a smaller student from the adapted model (the teacher), as DistilBERT was trained from BERT.

    python -m pretrain.distill --config configs/demo.yaml
    python -m pretrain.distill --config configs/demo.yaml --set distill.max_steps=20            # a tiny CPU run
    accelerate launch --num_processes 2 -m pretrain.distill --config configs/demo.yaml         # 2 GPUs

The student is the teacher's architecture with `student_layers` transformer layers, initialised from
the teacher (Sanh et al. 2019): embeddings, MLM head and pooler copied, student layer i from teacher
layer `teacher_layers[i]` (by default spread evenly with the first and last included, which for 6 of
12 is DistilBERT's 0, 2, 4, 7, 9, 11). It keeps the teacher's tokenizer. It trains on the tokens
artifact the teacher was adapted on, with pretraining's training kit (`pretrain/training/kit.py`: blocks,
masking, micro-batches that are pure functions of seed and position, optimizer, schedule, checkpoints,
the loop), on the loss, over the masked positions,

    alpha_distill * T² * KL(softmax(teacher / T) ‖ softmax(student / T)) + alpha_mlm * cross-entropy(student, true token)

Both models run their MLM head on the masked positions alone, so the soft targets are a
(masked tokens x vocabulary) matrix per micro-batch, not (tokens x vocabulary).

Output (distilled model artifact `d-...`): `model/` (Hugging Face folder, the teacher's tokenizer) and
`curve.json`; in the manifest: layers and parameters of student and teacher, validation perplexity of
the teacher and of the student before and after training (same blocks and masks), tokens/s, and the
CPU inference throughput of both encoders at batch 32, timed alternately in one process.
"""

from __future__ import annotations

import copy
import json
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pretrain.core.logs import get_logger
from torch import nn

from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import DistillConfig, student_problems, teacher_layer_count
from pretrain.core.errors import InputError, UserError
from pretrain.core.ids import artifact_id
from pretrain.data.formats import load_meta
from pretrain.models.families import attention_implementation
from pretrain.models.modelfiles import load_model
from pretrain.training import kit
from pretrain.training.kit import EXECUTION_ONLY, Blocks, perplexity
from pretrain.training.mlm import MaskedLM, MlmHead, compiled, dynamic, encoder_of, mlm_head

log = get_logger(__name__)

STAGE = "distill"
SPEED_BATCH_SIZE = 32
# One transformer layer's weights, in each family's naming: `bert.encoder.layer.3.attention...` (BERT, RoBERTa,
# XLM-R, ELECTRA, DeBERTa), `distilbert.transformer.layer.3...`, `model.layers.3.attn...` (ModernBERT).
_LAYER_KEY = re.compile(r"^(?P<before>.*\.layers?\.)(?P<index>\d+)(?P<after>\..+)$")


# --- the student ---------------------------------------------------------------------------------------


def default_teacher_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layers spread evenly, first and last included: 6 of 12 -> [0, 2, 4, 7, 9, 11] (DistilBERT's)."""
    if student_layers == 1:
        return [0]
    return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]


def student_from_teacher(teacher: nn.Module, student_layers: int, teacher_layers: list[int] | None = None) -> tuple[nn.Module, list[int]]:
    """A `student_layers`-layer copy of a *ForMaskedLM teacher; returns it and the teacher layers it took.

    Every weight outside the transformer layers (embeddings, MLM head, pooler) is the teacher's; student
    layer i is teacher layer `teacher_layers[i]`. Raises InputError when the weights do not map.
    """
    from transformers import AutoModelForMaskedLM

    total = teacher_layer_count(teacher.config.to_dict())
    chosen = list(teacher_layers) if teacher_layers is not None else default_teacher_layers(total, student_layers)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = student_layers  # mapped to n_layers where a config names it so (DistilBERT)
    if isinstance(getattr(config, "layer_types", None), list):
        # Per-layer attention kinds (ModernBERT alternates global and sliding-window layers): each student
        # layer keeps the kind of the teacher layer it is copied from.
        config.layer_types = [teacher.config.layer_types[i] for i in chosen]
    student = AutoModelForMaskedLM.from_config(config, attn_implementation=attention_implementation(config))
    student_of = {t: s for s, t in enumerate(chosen)}
    weights = {}
    for key, value in teacher.state_dict().items():
        match = _LAYER_KEY.match(key)
        if match is None:
            weights[key] = value
        elif int(match["index"]) in student_of:
            weights[f"{match['before']}{student_of[int(match['index'])]}{match['after']}"] = value
    try:
        student.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise InputError(f"distill: cannot initialise a {student_layers}-layer {config.model_type} student from the teacher's weights: {e}") from None
    return student, chosen


def encoder_parameters(model: nn.Module) -> int:
    """Parameters of the encoder a downstream task fine-tunes: embeddings and layers, not the MLM head."""
    return sum(p.numel() for p in encoder_of(model).parameters())


# --- the loss ------------------------------------------------------------------------------------------


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha_distill: float, alpha_mlm: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(total, soft, hard) over the masked tokens, each a mean per masked token.

    soft: T² · KL(softmax(teacher/T) ‖ softmax(student/T)), DistilBERT's `KLDivLoss(batchmean)` term;
    hard: cross-entropy of the student against the true tokens. In float32 whatever the autocast dtype.
    """
    student_scaled = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_scaled = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    soft = F.kl_div(student_scaled, teacher_scaled, reduction="batchmean", log_target=True) * temperature**2
    hard = F.cross_entropy(student_logits.float(), labels)
    return alpha_distill * soft + alpha_mlm * hard, soft, hard


class Distillation(nn.Module):
    """The student, with its loss against the teacher's soft targets: the module Accelerate trains.

    Without teacher logits it returns the plain masked-LM cross-entropy (for validation perplexity).
    With `compile`, training steps run through `torch.compile` (`pretrain.training.mlm.compiled`); validation stays eager.
    """

    def __init__(self, student: nn.Module, temperature: float, alpha_distill: float, alpha_mlm: float, compile: bool = False):
        super().__init__()
        self.model = student
        self._head: MlmHead = mlm_head(student)  # not a submodule: the state dict stays the student's
        self.temperature, self.alpha_distill, self.alpha_mlm = temperature, alpha_distill, alpha_mlm
        self._compiled = compiled(self._losses) if compile else None

    def forward(self, input_ids: torch.Tensor, masked_positions: torch.Tensor, masked_labels: torch.Tensor,
                teacher_logits: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                reduction: str = "mean") -> torch.Tensor:  # fmt: skip
        if teacher_logits is None:
            logits = self._head.masked_logits(input_ids, masked_positions, attention_mask)
            return F.cross_entropy(logits.float(), masked_labels, reduction=reduction)
        if self._compiled is not None and self.training:
            dynamic(masked_positions, masked_labels, teacher_logits)
            return self._compiled(input_ids, masked_positions, masked_labels, teacher_logits, attention_mask)
        return self._losses(input_ids, masked_positions, masked_labels, teacher_logits, attention_mask)

    def _losses(self, input_ids, masked_positions, masked_labels, teacher_logits, attention_mask) -> torch.Tensor:
        logits = self._head.masked_logits(input_ids, masked_positions, attention_mask)
        total, soft, hard = distillation_loss(logits, teacher_logits, masked_labels, self.temperature, self.alpha_distill, self.alpha_mlm)
        # One tensor through DDP: the loss to backpropagate, then its two terms for the log.
        return torch.stack([total, soft.detach(), hard.detach()])


# --- speed -----------------------------------------------------------------------------------------------


@torch.inference_mode()
def cpu_throughput(models: dict[str, nn.Module], input_ids: torch.Tensor, rounds: int) -> dict[str, float]:
    """Sequences per second of each model's encoder on the CPU, from the median of `rounds` timed batches.

    The models take turns batch by batch (ABBA order), so load from other processes on the machine
    falls on all of them alike and the ratio stays meaningful when the absolute figures are not.
    """
    encoders = {name: encoder_of(model).to("cpu").eval() for name, model in models.items()}
    names = list(encoders)
    for name in names:  # warm-up: first calls allocate and pick kernels
        encoders[name](input_ids=input_ids)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            encoders[name](input_ids=input_ids)
            seconds[name].append(time.perf_counter() - start)
    return {name: input_ids.size(0) / statistics.median(values) for name, values in seconds.items()}


# --- training --------------------------------------------------------------------------------------------


def stage_id(cfg: DistillConfig, *, teacher: str, tokens: str) -> str:
    return artifact_id(STAGE, cfg.model_dump(exclude=EXECUTION_ONLY), inputs={"teacher": teacher, "tokens": tokens})


def load_teacher(teacher_dir: Path, cfg: DistillConfig) -> nn.Module:
    """The teacher, frozen; a UserError when the student would not be smaller (before any data is read)."""
    from transformers import AutoModelForMaskedLM

    layers = teacher_layer_count(json.loads((teacher_dir / "config.json").read_text()))
    if layers is None:
        raise InputError(f"distill: the teacher's config.json ({teacher_dir}) does not say how many layers it has")
    if problems := student_problems(cfg, layers):
        raise UserError("; ".join(problems))
    teacher = load_model(AutoModelForMaskedLM, teacher_dir, "teacher")
    return teacher.eval().requires_grad_(False)


def train(cfg: DistillConfig, teacher_dir: Path, tokens_dir: Path, work_dir: Path) -> dict:
    """Run (or resume) distillation; writes the student to `work_dir/output/model`; returns metrics."""
    accelerator, accum = kit.setup(STAGE, cfg, work_dir)
    teacher = load_teacher(teacher_dir, cfg)
    meta = load_meta(tokens_dir)
    kit.check_fits(STAGE, cfg, teacher, meta, "teacher")
    student, chosen = student_from_teacher(teacher, cfg.student_layers, cfg.teacher_layers)
    log.info("distill: %d-layer student from teacher layers %s of %d", cfg.student_layers, chosen,
             teacher_layer_count(teacher.config.to_dict()), main_process_only=True)  # fmt: skip

    masking = kit.make_masking(cfg, meta)
    train_blocks, validation_blocks = kit.training_blocks(STAGE, cfg, tokens_dir)
    evaluation = kit.eval_batches(validation_blocks, masking, cfg.max_eval_blocks, cfg.micro_batch_size, cfg.seed)

    steps = kit.total_steps(cfg)
    task = Distillation(student, cfg.temperature, cfg.alpha_distill, cfg.alpha_mlm, compile=cfg.compile)
    task, optimizer, scheduler = kit.prepare(accelerator, task, cfg, steps)
    # The teacher only runs forward: not prepared (no DDP wrapper, no gradients, not in checkpoints).
    teacher.to(accelerator.device)
    teacher_head = mlm_head(teacher)
    checkpoints, progress = kit.start_or_resume(STAGE, cfg, accelerator, work_dir, steps, task, optimizer, scheduler)
    if progress is None:
        progress = {"step": 0, "tokens": 0, "train_seconds": 0.0, "curve": []}
        progress["perplexity_teacher"] = perplexity(MaskedLM(teacher), evaluation, accelerator)
        teacher.eval()  # perplexity() leaves the model it measured in training mode
        progress["perplexity_before"] = perplexity(task, evaluation, accelerator)
        progress["curve"].append({"step": 0, "validation_perplexity": progress["perplexity_before"]})
        log.info("distill: validation perplexity: teacher %.2f, student before training %.2f", progress["perplexity_teacher"],
                 progress["perplexity_before"], main_process_only=True)  # fmt: skip

    def teacher_logits(input_ids: torch.Tensor, masked_positions: torch.Tensor) -> torch.Tensor:
        return teacher_head.masked_logits(input_ids, masked_positions)

    teacher_step = compiled(teacher_logits) if cfg.compile else teacher_logits

    def add_teacher_logits(batch: dict) -> None:
        if cfg.compile:
            dynamic(batch["masked_positions"])
        with torch.no_grad(), accelerator.autocast():
            batch["teacher_logits"] = teacher_step(batch["input_ids"], batch["masked_positions"])

    kit.train_loop(STAGE, cfg, accelerator, task, optimizer, scheduler, train_blocks, masking, accum, steps, progress, checkpoints,
                        evaluation, loss_names=("loss", "distill_loss", "mlm_loss"), before_step=add_teacher_logits)  # fmt: skip
    tokens_per_step = cfg.global_batch_size * cfg.max_seq_length

    after = perplexity(task, evaluation, accelerator)
    progress["curve"].append({"step": steps, "validation_perplexity": after})
    accelerator.log({"validation_perplexity": after}, step=steps)
    # The teacher's tokenizer files: everything in its folder but weights and model config.
    tokenizer_files = [f for f in teacher_dir.iterdir() if f.is_file() and not (
        f.name.endswith((".safetensors", ".index.json")) or f.name in ("config.json", "generation_config.json"))]  # fmt: skip
    kit.write_model(accelerator, task, cfg, work_dir, tokenizer_files, progress["curve"])
    metrics = {
        "teacher_layers": teacher_layer_count(teacher.config.to_dict()),
        "student_layers": cfg.student_layers,
        "initialised_from_teacher_layers": chosen,
        "teacher_parameters": encoder_parameters(teacher),
        "student_parameters": encoder_parameters(student),
        "steps": steps,
        "tokens": steps * tokens_per_step,
        "global_batch_size": cfg.global_batch_size,
        "processes": accelerator.num_processes,
        "device": accelerator.device.type,
        "mixed_precision": accelerator.mixed_precision,  # what `auto` resolved to on this machine
        "validation_perplexity_teacher": round(progress["perplexity_teacher"], 3),
        "validation_perplexity_before": round(progress["perplexity_before"], 3),
        "validation_perplexity_after": round(after, 3),
        "train_seconds": round(progress["train_seconds"], 2),
        "tokens_per_second": round(progress["tokens"] / max(progress["train_seconds"], 1e-9), 1),
        **kit.utilisation(cfg, accelerator, progress),
        "validation_blocks": min(cfg.max_eval_blocks, len(validation_blocks)),
    }
    metrics["parameter_ratio"] = round(metrics["student_parameters"] / metrics["teacher_parameters"], 4)
    if accelerator.is_main_process:
        metrics.update(_speed(cfg, teacher, accelerator.unwrap_model(task).model, validation_blocks))
    accelerator.wait_for_everyone()
    return metrics


def _speed(cfg: DistillConfig, teacher: nn.Module, student: nn.Module, blocks: Blocks) -> dict:
    """CPU throughput of teacher and student at batch 32 on validation blocks (fp32, this machine's threads)."""
    indices = np.arange(SPEED_BATCH_SIZE) % len(blocks)
    speed = cpu_throughput({"teacher": teacher, "student": student}, blocks.get(indices), cfg.speed_rounds)
    log.info("distill: CPU inference at batch %d: teacher %.1f, student %.1f sequences/s (%.2fx)", SPEED_BATCH_SIZE,
             speed["teacher"], speed["student"], speed["student"] / speed["teacher"], main_process_only=True)  # fmt: skip
    return {
        "cpu_batch_size": SPEED_BATCH_SIZE,
        "cpu_seq_length": cfg.max_seq_length,
        "cpu_threads": torch.get_num_threads(),
        "cpu_sequences_per_second_teacher": round(speed["teacher"], 2),
        "cpu_sequences_per_second_student": round(speed["student"], 2),
        "cpu_speedup": round(speed["student"] / speed["teacher"], 3),
    }


def run(cfg: DistillConfig, store: ArtifactStore, *, teacher: str, tokens: str) -> str:
    """Build (or find) the distilled model artifact; under `accelerate launch` every process trains, rank 0 publishes."""
    inputs = {"teacher": teacher, "tokens": tokens}

    def train_in(work_dir: Path) -> dict:
        return train(cfg, store.local_dir(teacher) / "model", store.local_dir(tokens), work_dir)

    return kit.build_artifact(STAGE, cfg, store, stage_id(cfg, **inputs), inputs, train_in)


if __name__ == "__main__":
    from pretrain.stage_cli import main

    main(STAGE)
