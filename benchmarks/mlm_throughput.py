"""Masked-LM training throughput: this project's training step against the usual Hugging Face recipe.

    python benchmarks/mlm_throughput.py                                   # CPU: bert-tiny and 6L/384, fp32 and auto
    python benchmarks/mlm_throughput.py --models bert-base --mixed-precision auto --batch-size 64   # a GPU
    python benchmarks/mlm_throughput.py --models bert-base --mixed-precision bf16 --compile         # ours compiled
    python benchmarks/mlm_throughput.py --models L6-H384 --family bert roberta xlm-roberta deberta-v2 modernbert electra distilbert

Baseline, as in transformers' `run_mlm_no_trainer.py`: the family's *ForMaskedLM with labels (the
full-vocabulary head at every position), DataCollatorForLanguageModeling masking each batch,
torch.optim.AdamW with its defaults. `--family` picks the families (benchmarks/encoder_shapes.py: the
same shape, each family's own architecture; the demo's WordPiece ids for all, since what is measured
is the model), both with the attention the pretrain stage chooses (SDPA, or eager where the model has
none). Ours: the pretrain stage's step: `Masking` on the same blocks, `MaskedLM` (head on the masked
positions only), gradient clipping, the fused AdamW from `make_optimizer`. Same model shape and
initial weights, same batch of real Reuters text, same sequence length and threads. Each runs in every
precision asked for (default: float32 and `auto`, which is bf16 on a CPU with bf16 units, float32 on
one without); all of them alternate in one process (rounds of a few steps each) so machine noise hits
them alike.

One JSON line per model shape and precision: tokens/s of both and their ratio at that precision,
ours against the float32 baseline (`ratio_vs_baseline_fp32`), FLOPs per step as counted by
torch's FlopCounterMode on the actual step (forward + backward), achieved FLOP/s, and on a GPU the
model FLOPs utilisation (MFU) against the device's dense peak for the precision used (the table in
`pretrain/training/flops.py`, which the pretrain stage's MFU uses too).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import cpu_model  # noqa: E402
from pretrain.core.config import PretrainConfig, package_dir  # noqa: E402
from pretrain.training import flops  # noqa: E402
from pretrain.training.kit import counting_flops, make_optimizer  # noqa: E402
from pretrain.training.mlm import Masking, MaskedLM  # noqa: E402
from pretrain.training.precision import cpu_bf16_units  # noqa: E402
from pretrain.training.precision import resolve as resolve_precision  # noqa: E402
from machine import SHAPES  # noqa: E402  (benchmarks/machine.py)
from encoder_shapes import FAMILIES, encoder_config  # noqa: E402



def reuters_blocks(tokenizer, count: int, seq_length: int) -> torch.Tensor:
    """Real text: the demo corpus tokenised, concatenated and cut into [CLS] ... [SEP] blocks."""
    ids: list[int] = []
    with gzip.open(ROOT / "data" / "reuters" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            ids += tokenizer(json.loads(line)["text"], add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
            if len(ids) >= count * (seq_length - 2):
                break
    body = np.asarray(ids[: count * (seq_length - 2)]).reshape(count, seq_length - 2)
    blocks = np.empty((count, seq_length), dtype=np.int64)
    blocks[:, 0], blocks[:, 1:-1], blocks[:, -1] = tokenizer.cls_token_id, body, tokenizer.sep_token_id
    return torch.from_numpy(blocks)


def bench_shape(name: str, args, tokenizer, blocks: torch.Tensor, device: torch.device, family: str = "bert") -> list[dict]:
    """One result per requested precision: ours and the baseline in it, and against the float32 baseline."""
    from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling

    from pretrain.models.families import attention_implementation

    shape = SHAPES[name]
    config = encoder_config(family, len(tokenizer), layers=shape["num_hidden_layers"], hidden=shape["hidden_size"],
                            heads=shape["num_attention_heads"], intermediate=shape["intermediate_size"], max_positions=512,
                            pad_id=tokenizer.pad_token_id, cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id)  # fmt: skip
    attention = attention_implementation(config)  # what the pretrain stage uses, for both
    resolved = {requested: resolve_precision(requested, device)[0] for requested in args.mixed_precision}
    precisions = list(dict.fromkeys(resolved.values()))  # each precision measured once (auto may be one of the others)
    torch.manual_seed(0)
    initial = AutoModelForMaskedLM.from_config(config, attn_implementation=attention).state_dict()
    heads = set()

    cfg = PretrainConfig(max_steps=1, max_seq_length=args.seq_length, global_batch_size=args.batch_size,
                         micro_batch_size=args.batch_size, learning_rate=1e-4)  # fmt: skip
    masking = Masking(
        mlm_probability=0.15, mask_replace_prob=0.8, random_replace_prob=0.1, mask_id=tokenizer.mask_token_id,
        special_ids=tuple(sorted({tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id})),
        vocab_size=len(tokenizer),
    )  # fmt: skip
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    generator = torch.Generator().manual_seed(0)
    n_batches = len(blocks) // args.batch_size

    def batch_rows(i: int) -> torch.Tensor:
        start = (i % n_batches) * args.batch_size
        return blocks[start : start + args.batch_size]

    def fresh_model():
        model = AutoModelForMaskedLM.from_config(config, attn_implementation=attention).to(device)
        model.load_state_dict(initial)
        return model.train()

    def autocast(precision: str):
        if precision == "no":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

    def ours_step_fn(precision: str):
        ours = MaskedLM(fresh_model(), compile=args.compile)
        heads.add("masked-only" if ours._head.project is not None else "full-vocabulary (fallback)")
        optimizer = make_optimizer(ours, cfg, device)

        def step(i: int) -> None:
            batch = {k: v.to(device, non_blocking=True) for k, v in masking(batch_rows(i), generator).items()}
            with autocast(precision):
                loss = ours(**batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ours.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def base_step_fn(precision: str):
        model = fresh_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)  # the example script's optimizer

        def step(i: int) -> None:
            batch = collator([{"input_ids": row} for row in batch_rows(i)])
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast(precision):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    contestants = {(who, p): (ours_step_fn if who == "ours" else base_step_fn)(p) for p in precisions for who in ("ours", "baseline")}
    counted = {}
    for key, step in contestants.items():
        step(0)  # warm-up: allocations, optimizer state, kernel selection (and compilation)
        with counting_flops() as counter:  # as the pretrain stage counts them: eagerly, once
            step(1)
        counted[key] = counter.get_total_flops()
    seconds = dict.fromkeys(contestants, 0.0)
    steps = 0
    order = list(contestants)
    for r in range(args.rounds):
        for key in order if r % 2 == 0 else order[::-1]:  # alternate, so machine noise hits every contestant alike
            sync()
            started = time.perf_counter()
            for i in range(args.steps_per_round):
                contestants[key](2 + r * args.steps_per_round + i)
            sync()
            seconds[key] += time.perf_counter() - started
        steps += args.steps_per_round

    if args.profile:
        profile_steps(name, contestants, steps=args.profile, start=2 + args.rounds * args.steps_per_round, device=device)

    tokens = steps * args.batch_size * args.seq_length
    on_cpu = device.type == "cpu"
    results = []
    for requested, precision in resolved.items():
        ours, base = seconds[("ours", precision)], seconds[("baseline", precision)]
        result = {
            "benchmark": "mlm_throughput",
            "family": family,
            "model": name,
            "attention": attention,
            "ours_head": ", ".join(sorted(heads)),
            "parameters": sum(p.numel() for p in initial.values()),
            "device": torch.cuda.get_device_name(device) if not on_cpu else "cpu",
            **({"cpu": cpu_model(), "cpu_bf16_units": cpu_bf16_units()} if on_cpu else {}),
            "threads": torch.get_num_threads(),
            "mixed_precision": requested,
            "precision": precision,
            "compile": args.compile,
            "batch_size": args.batch_size,
            "seq_length": args.seq_length,
            "steps_each": steps,
            "baseline_tokens_per_s": round(tokens / base, 1),
            "ours_tokens_per_s": round(tokens / ours, 1),
            "ratio": round(base / ours, 3),
        }
        if ("baseline", "no") in seconds:
            result["ratio_vs_baseline_fp32"] = round(seconds[("baseline", "no")] / ours, 3)
        result.update({
            "baseline_flops_per_step": counted[("baseline", precision)],
            "ours_flops_per_step": counted[("ours", precision)],
            "baseline_flops_per_s": round(counted[("baseline", precision)] * steps / base),
            "ours_flops_per_s": round(counted[("ours", precision)] * steps / ours),
        })  # fmt: skip
        peak = flops.peak_flops(flops.device_name(device), precision)
        if peak:
            result["peak_flops_per_s"] = peak
            result["ours_mfu"] = round(result["ours_flops_per_s"] / peak, 4)
            result["baseline_mfu"] = round(result["baseline_flops_per_s"] / peak, 4)
        else:
            result["mfu_note"] = flops.describe_peak(flops.device_name(device), precision)
        results.append(result)
    return results


def profile_steps(name: str, contestants: dict, steps: int, start: int, device: torch.device, rows: int = 15) -> None:
    """torch.profiler's top operators (self time) of each contestant over `steps` more steps, on stderr."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for (who, precision), step in contestants.items():
        with profile(activities=activities) as profiler:
            for i in range(steps):
                step(start + i)
        table = profiler.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=40)
        print(f"\n== {name} {who} {precision}: top {rows} operators over {steps} steps ==\n{table}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bert-tiny", "L6-H384"], choices=list(SHAPES))
    parser.add_argument("--family", nargs="+", default=["bert"], choices=list(FAMILIES),
                        help="model families (benchmarks/encoder_shapes.py) at each shape; JSON lines per family and shape")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4, help="alternations of ours/baseline")
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--mixed-precision", nargs="+", choices=["no", "bf16", "fp16", "auto"], default=["no", "auto"],
                        help="precisions to measure, side by side (auto: what `mixed_precision: auto` picks on this machine)")
    parser.add_argument("--compile", action="store_true", help="torch.compile our step as `pretrain.compile: true` does (the baseline stays eager)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after timing, profile STEPS more steps of each contestant with torch.profiler (top operators on stderr)")
    parser.add_argument("--tokenizer", default="pkg:cognition/model", help="a BERT tokenizer folder (default: the demo model's)")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    folder = package_dir(args.tokenizer) if args.tokenizer.startswith("pkg:") else Path(args.tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    needed = args.batch_size * (args.rounds * args.steps_per_round + 2)
    blocks = reuters_blocks(tokenizer, min(needed, 4096), args.seq_length)
    for family in args.family:
        for name in args.models:
            for result in bench_shape(name, args, tokenizer, blocks, device, family):
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
