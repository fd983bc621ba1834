"""int8 for CPU inference: PyTorch dynamic quantization of every Linear layer, measured, not assumed.

    dapt export production --to exported/ --quantize int8

Dynamic quantization stores Linear weights as int8 (per-tensor scale from their min/max) and
quantizes activations on the fly, per batch: no calibration data, no graph export, the same
`transformers` model class. It is a pure function of the fp32 weights, so the exported folder keeps
the fp32 safetensors (loadable everywhere, nothing pickled) and the int8 model is that function
applied at load time; what was measured here is exactly what a user gets.

`measure` fine-tunes the model on the downstream task with the evaluate stage's own recipe and
settings (one seed), then scores the fine-tuned classifier on the test set in fp32 and in int8, and
times both on CPU at batch 1 and batch 32, alternating fp32 and int8 rounds in one process so that
machine noise hits both alike.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from typing import Any

import numpy as np
import torch

from pretrain.logs import get_logger

log = get_logger(__name__)

RECIPE = "torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)"


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy of `model` with every nn.Linear dynamically quantized to int8 (the original is untouched)."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(model).cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8)


def linear_share(model: torch.nn.Module) -> float:
    """Share of the parameters that sit in Linear layers (what int8 shrinks and speeds up)."""
    total = sum(p.numel() for p in model.parameters())
    linear = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters())
    return linear / max(total, 1)


@torch.no_grad()
def time_pair(
    models: dict[str, torch.nn.Module], batches: list[dict[str, torch.Tensor]], rounds: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per pass over `batches` for each model, the models alternating round by round."""
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for r in range(warmup + rounds):
        for name, model in models.items():
            model.eval()
            started = time.perf_counter()
            for batch in batches:
                model(**batch)
            if r >= warmup:
                seconds[name].append(time.perf_counter() - started)
    return seconds


def speed(fp32: torch.nn.Module, int8: torch.nn.Module, batch1: list[dict], batch32: list[dict], rounds: int = 5) -> dict[str, Any]:
    """CPU latency at batch 1 (ms per example) and throughput at batch 32 (examples/s), fp32 vs int8."""
    fp32 = fp32.cpu().eval()
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "rounds": rounds}
    one = time_pair({"fp32": fp32, "int8": int8}, batch1, rounds)
    many = time_pair({"fp32": fp32, "int8": int8}, batch32, rounds)
    n32 = sum(len(b["input_ids"]) for b in batch32)
    for name in ("fp32", "int8"):
        out[f"{name}_latency_ms_batch1"] = round(1000 * statistics.median(one[name]) / len(batch1), 3)
        out[f"{name}_throughput_batch32"] = round(n32 / statistics.median(many[name]), 1)
    out["latency_speedup_batch1"] = round(out["fp32_latency_ms_batch1"] / out["int8_latency_ms_batch1"], 3)
    out["throughput_speedup_batch32"] = round(out["int8_throughput_batch32"] / out["fp32_throughput_batch32"], 3)
    # Per-round ratios (each fp32 round next to its int8 round) show how stable the figure is.
    out["throughput_speedup_batch32_per_round"] = [round(a / b, 3) for a, b in zip(many["fp32"], many["int8"])]
    out["batch1_examples"], out["batch32_examples"] = len(batch1), n32
    return out


def measure(model_dir, eval_config: dict, seed: int | None = None, speed_examples: int = 128, rounds: int = 5) -> dict[str, Any]:
    """Fine-tune the model at `model_dir` on the evaluate stage's task, then fp32 vs int8: scores and CPU speed.

    `eval_config` is the resolved config of an evaluation artifact (its manifest's `config`): same
    task files, splits and fine-tuning settings; `seed` defaults to its first seed.
    """
    from pretrain.config import EvaluateConfig
    from pretrain.finetune import encode, train
    from pretrain.tasks import read_task
    from pretrain.vocab import load_fast_tokenizer

    cfg = EvaluateConfig.model_validate(eval_config)
    seed = cfg.seeds[0] if seed is None else seed
    data = read_task(cfg.task, cfg.validation_fraction)
    tokenizer = load_fast_tokenizer(model_dir)
    segments = json.loads((model_dir / "config.json").read_text()).get("type_vocab_size", 1) > 1
    encoded = {split: encode(tokenizer, data, split, cfg.max_seq_length, segments) for split in ("train", "validation", "test")}
    pad = tokenizer.pad_token_id or 0
    cpu = torch.device("cpu")  # int8 dynamic quantization is a CPU feature: train, score and time on CPU
    log.info("quantize: fine-tuning %s on %s (seed %d) to measure int8 against fp32", model_dir, cfg.task.name, seed)
    trained = train(model_dir, data, encoded, cfg, seed, pad, cpu)
    return measure_trained(trained, data, encoded["test"], cfg, pad, seed, speed_examples, rounds)


def measure_trained(trained, data, test, cfg, pad: int, seed: int, speed_examples: int = 128, rounds: int = 5) -> dict[str, Any]:
    """fp32 vs int8 of a fine-tuned classifier (`finetune.train`'s result): test scores and CPU speed."""
    from pretrain import scoring
    from pretrain.finetune import collate, decide, length_grouped_batches, selection_metric

    cpu = torch.device("cpu")
    fp32 = trained.model.cpu()
    int8 = quantize_int8(fp32)
    gold = data.gold("test")
    scores = {}
    for name, model in (("fp32", fp32), ("int8", int8)):
        predicted = decide(trained, model, data, test, cfg, pad, cpu)
        scores[name] = scoring.scores(data.kind, gold, predicted, data.labels, cfg.task.tag_scheme)
    metrics = [m for m in ("accuracy", "macro_f1", "micro_f1") if m in scores["fp32"]]
    chosen = np.arange(min(speed_examples, len(test.input_ids)))  # the first test examples, as they come
    batch1 = [collate(test, chosen[i : i + 1], pad, cpu, with_targets=False) for i in range(min(32, len(chosen)))]
    batch32 = [collate(test, b, pad, cpu, with_targets=False) for b in length_grouped_batches([len(test.input_ids[i]) for i in chosen], 32, None)]
    timing = speed(fp32, int8, batch1, batch32, rounds)
    result = {
        "method": RECIPE,
        "task": cfg.task.name,
        "seed": seed,
        "test_examples": len(test.input_ids),
        "primary_metric": selection_metric(cfg),
        "best_epoch": trained.best_epoch,
        "fp32": {m: round(scores["fp32"][m], 5) for m in metrics},
        "int8": {m: round(scores["int8"][m], 5) for m in metrics},
        "delta": {m: round(scores["int8"][m] - scores["fp32"][m], 5) for m in metrics},
        "linear_parameter_share": round(linear_share(fp32), 4),
        "speed": timing,
        "max_seq_length": cfg.max_seq_length,
    }
    log.info(
        "quantize: test %s fp32 %.4f int8 %.4f; batch-32 throughput x%.2f, batch-1 latency x%.2f",
        result["primary_metric"], result["fp32"][result["primary_metric"]], result["int8"][result["primary_metric"]],
        timing["throughput_speedup_batch32"], timing["latency_speedup_batch1"],
    )  # fmt: skip
    return result
