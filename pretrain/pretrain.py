"""Pretrain: continued masked-LM pretraining of the base model on the domain corpus, with Accelerate.

    python -m pretrain.pretrain --config configs/demo.yaml
    python -m pretrain.pretrain --config configs/demo.yaml --set pretrain.max_steps=20     # a tiny CPU run
    accelerate launch --num_processes 8 -m pretrain.pretrain --config configs/demo.yaml   # 8 GPUs

Output (model artifact `m-...`): `model/` (Hugging Face folder: config, safetensors weights, tokenizer),
`curve.json` (training loss, learning rate, tokens/s and validation perplexity over steps), and the
validation perplexity before and after in the manifest.

The stage builds the starting model (the base, the base with extended embeddings, or a fresh one)
and trains it with the masked-only MLM head (`pretrain/training/mlm.py`) using the training kit
(`pretrain/training/kit.py`: blocks and micro-batches that are pure functions of seed and position, the
optimizer and schedule, checkpoints and exact resume, the loop). It measures validation perplexity per
token and per word (comparable across vocabularies) before and after.
"""

from __future__ import annotations

from pathlib import Path

from pretrain.core.logs import get_logger

from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import PretrainConfig
from pretrain.core.ids import artifact_id
from pretrain.data.formats import load_meta
from pretrain.models.extend import extend_embeddings, load_model_init
from pretrain.models.families import attention_implementation
from pretrain.models.modelfiles import load_model, model_folder
from pretrain.training import kit
from pretrain.training.kit import EXECUTION_ONLY, TrainingError, perplexity
from pretrain.training.mlm import MaskedLM, mlm_head

log = get_logger(__name__)

STAGE = "pretrain"


def stage_id(cfg: PretrainConfig, *, base: str, vocab: str, tokens: str) -> str:
    return artifact_id(STAGE, cfg.model_dump(exclude=EXECUTION_ONLY), inputs={"base": base, "vocab": vocab, "tokens": tokens})


def starting_model(base_dir: Path, vocab_dir: Path, meta: dict):
    """The model training starts from (the base, the base with extended embeddings, or a fresh one), and
    whether its MLM head starts at random (`replace`, or a base checkpoint saved without its head)."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    init = load_model_init(vocab_dir)
    if init["mode"] == "replace":
        # From scratch (as PubMedBERT): the base's architecture, the domain vocabulary, no base weights.
        config = AutoConfig.from_pretrained(base_dir, vocab_size=meta["vocab_size"], pad_token_id=meta["special_ids"]["pad"], trust_remote_code=False)
        return AutoModelForMaskedLM.from_config(config, attn_implementation=attention_implementation(config)), True
    model, info = load_model(AutoModelForMaskedLM, base_dir, "base model", output_loading_info=True)
    extend_embeddings(model, init["new_tokens"], init.get("init", "subword_mean"), mlm_head, init.get("base_vocab_size"))
    return model, bool(info.get("missing_keys"))


def train(cfg: PretrainConfig, base_dir: Path, vocab_dir: Path, tokens_dir: Path, work_dir: Path) -> dict:
    """Run (or resume) training; writes the model to `work_dir/output/model`; returns metrics."""
    accelerator, accum = kit.setup(STAGE, cfg, work_dir)
    meta = load_meta(tokens_dir)
    model, random_head = starting_model(base_dir, vocab_dir, meta)
    if random_head:
        log.warning("pretrain: the MLM head starts at random (%s): the perplexity before training is a random head's, not the base model's",
                    "vocab.mode replace" if load_model_init(vocab_dir)["mode"] == "replace" else "the base checkpoint has no MLM head",
                    main_process_only=True)  # fmt: skip
    kit.check_fits(STAGE, cfg, model, meta, "base model")
    masking = kit.make_masking(cfg, meta)
    train_blocks, validation_blocks = kit.training_blocks(STAGE, cfg, tokens_dir)
    evaluation = kit.eval_batches(validation_blocks, masking, cfg.max_eval_blocks, cfg.micro_batch_size, cfg.seed)
    max_words = cfg.max_eval_blocks * (cfg.max_seq_length - 2)
    word_evaluation = kit.word_eval_batches(tokens_dir, cfg.max_seq_length, max_words, cfg.micro_batch_size, cfg.seed, cfg.mlm_probability)

    steps = kit.total_steps(cfg)
    task, optimizer, scheduler = kit.prepare(accelerator, MaskedLM(model, compile=cfg.compile), cfg, steps)
    checkpoints, progress = kit.start_or_resume(STAGE, cfg, accelerator, work_dir, steps, task, optimizer, scheduler)
    if progress is None:
        progress = {"step": 0, "tokens": 0, "train_seconds": 0.0, "curve": [], "perplexity_before": None}
        progress["perplexity_before"] = perplexity(task, evaluation, accelerator)
        progress["word_perplexity_before"] = perplexity(task, word_evaluation, accelerator)
        progress["curve"].append({"step": 0, "validation_perplexity": progress["perplexity_before"]})
        log.info("pretrain: validation perplexity before: %.2f", progress["perplexity_before"], main_process_only=True)

    kit.train_loop(STAGE, cfg, accelerator, task, optimizer, scheduler, train_blocks, masking, accum, steps, progress, checkpoints, evaluation)
    tokens_per_step = cfg.global_batch_size * cfg.max_seq_length

    after = perplexity(task, evaluation, accelerator)
    word_after = perplexity(task, word_evaluation, accelerator)
    progress["curve"].append({"step": steps, "validation_perplexity": after})
    accelerator.log({"validation_perplexity": after}, step=steps)
    in_sync = kit.ranks_in_sync(task, accelerator) if accelerator.num_processes > 1 else True
    if not in_sync:
        raise TrainingError("pretrain: the processes ended with different weights; data-parallel training went wrong")
    kit.write_model(accelerator, task, cfg, work_dir, (vocab_dir / "tokenizer").iterdir(), progress["curve"])
    accelerator.wait_for_everyone()
    return {
        "steps": steps,
        "tokens": steps * tokens_per_step,
        "global_batch_size": cfg.global_batch_size,
        "accumulation_steps": accum,
        "processes": accelerator.num_processes,
        "ranks_in_sync": in_sync,
        "device": accelerator.device.type,
        "mixed_precision": accelerator.mixed_precision,  # what `auto` resolved to on this machine
        # A random head's perplexity before training (replace, or a base without its MLM head) is not the base model's.
        "mlm_head_before": "random" if random_head else "pretrained",
        "validation_perplexity_before": round(progress["perplexity_before"], 3),
        "validation_perplexity_after": round(after, 3),
        # per word (whole words masked): comparable across vocabularies, unlike per-token perplexity
        "validation_word_perplexity_before": round(progress["word_perplexity_before"], 3),
        "validation_word_perplexity_after": round(word_after, 3),
        "validation_words_scored": sum(units for _, units in word_evaluation),
        "train_seconds": round(progress["train_seconds"], 2),
        "tokens_per_second": round(progress["tokens"] / max(progress["train_seconds"], 1e-9), 1),
        **kit.utilisation(cfg, accelerator, progress),
        "validation_blocks": min(cfg.max_eval_blocks, len(validation_blocks)),
        "train_blocks": len(train_blocks),
    }


def run(cfg: PretrainConfig, store: ArtifactStore, *, base: str, vocab: str, tokens: str) -> str:
    """Build (or find) the model artifact; under `accelerate launch` every process trains, rank 0 publishes.

    `base`: the model training starts from, any model artifact (the base model; the adapted one for TAPT).
    """
    inputs = {"base": base, "vocab": vocab, "tokens": tokens}

    def train_in(work_dir: Path) -> dict:
        return train(cfg, model_folder(store, base, "pretrain: base"), store.local_dir(vocab), store.local_dir(tokens), work_dir)

    return kit.build_artifact(STAGE, cfg, store, stage_id(cfg, **inputs), inputs, train_in)


if __name__ == "__main__":
    from pretrain.stage_cli import main

    main(STAGE)
