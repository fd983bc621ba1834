"""Masked-LM training throughput: this project's training step against the usual Hugging Face recipe.

    python benchmarks/mlm_throughput.py                                   # CPU: bert-tiny and 6L/384 shapes
    python benchmarks/mlm_throughput.py --models bert-base --mixed-precision bf16 --batch-size 64   # a GPU
    python benchmarks/mlm_throughput.py --models bert-base --mixed-precision bf16 --compile         # ours compiled
    python benchmarks/mlm_throughput.py --models L6-H384 --family bert roberta xlm-roberta deberta-v2 modernbert electra distilbert

Baseline, as in transformers' `run_mlm_no_trainer.py`: the family's *ForMaskedLM with labels (the
full-vocabulary head at every position), DataCollatorForLanguageModeling masking each batch,
torch.optim.AdamW with its defaults. `--family` picks the families (benchmarks/encoder_shapes.py: the
same shape, each family's own architecture; the demo's WordPiece ids for all, since what is measured
is the model), both with the attention the pretrain stage chooses (SDPA, or eager where the model has none). Ours: the pretrain stage's step: `Masking` on the same blocks, `MaskedLM` (head on the masked
positions only), gradient clipping, the fused AdamW from `make_optimizer`. Same model shape and
initial weights, same batch of real Reuters text, same sequence length and threads. The two run
alternately in one process (rounds of a few steps each) so machine noise hits both alike.

One JSON line per model shape: tokens/s of both and their ratio, FLOPs per step as counted by
torch's FlopCounterMode on the actual step (forward + backward), achieved FLOP/s, and on a GPU the
model FLOPs utilisation (MFU) against the device's dense peak for the precision used (the table in
`pretrain/flops.py`, which the pretrain stage's MFU uses too).
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

from pretrain import flops  # noqa: E402
from pretrain.config import PretrainConfig, package_dir  # noqa: E402
from pretrain.mlm import Masking, MaskedLM  # noqa: E402
from pretrain.training import counting_flops, make_optimizer  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from encoder_shapes import FAMILIES, encoder_config  # noqa: E402
from machine import cpu_model  # noqa: E402

SHAPES = {
    "bert-tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "L6-H384": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}


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


def bench_shape(name: str, args, tokenizer, blocks: torch.Tensor, device: torch.device, family: str = "bert") -> dict:
    from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling

    from pretrain.families import attention_implementation

    shape = SHAPES[name]
    config = encoder_config(family, len(tokenizer), layers=shape["num_hidden_layers"], hidden=shape["hidden_size"],
                            heads=shape["num_attention_heads"], intermediate=shape["intermediate_size"], max_positions=512,
                            pad_id=tokenizer.pad_token_id, cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id)  # fmt: skip
    attention = attention_implementation(config)  # what the pretrain stage uses, for both
    torch.manual_seed(0)
    ours_model = AutoModelForMaskedLM.from_config(config, attn_implementation=attention).to(device)
    base_model = AutoModelForMaskedLM.from_config(config, attn_implementation=attention).to(device)
    base_model.load_state_dict(ours_model.state_dict())
    for model in (ours_model, base_model):
        model.train()

    cfg = PretrainConfig(max_steps=1, max_seq_length=args.seq_length, global_batch_size=args.batch_size,
                         micro_batch_size=args.batch_size, learning_rate=1e-4)  # fmt: skip
    masking = Masking(
        mlm_probability=0.15, mask_replace_prob=0.8, random_replace_prob=0.1, mask_id=tokenizer.mask_token_id,
        special_ids=tuple(sorted({tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id})),
        vocab_size=len(tokenizer),
    )  # fmt: skip
    ours = MaskedLM(ours_model, compile=args.compile)
    head = "masked-only" if ours._head.project is not None else "full-vocabulary (fallback)"
    ours_optimizer = make_optimizer(ours, cfg, device)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    base_optimizer = torch.optim.AdamW(base_model.parameters(), lr=1e-4)  # the example script's optimizer
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if args.mixed_precision == "bf16" else torch.float16)
        if args.mixed_precision != "no"
        else contextlib.nullcontext()
    )
    generator = torch.Generator().manual_seed(0)
    n_batches = len(blocks) // args.batch_size

    def batch_rows(i: int) -> torch.Tensor:
        start = (i % n_batches) * args.batch_size
        return blocks[start : start + args.batch_size]

    def ours_step(i: int) -> None:
        batch = {k: v.to(device, non_blocking=True) for k, v in masking(batch_rows(i), generator).items()}
        with autocast:
            loss = ours(**batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), cfg.max_grad_norm)
        ours_optimizer.step()
        ours_optimizer.zero_grad(set_to_none=True)

    def base_step(i: int) -> None:
        batch = collator([{"input_ids": row} for row in batch_rows(i)])
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast:
            loss = base_model(**batch).loss
        loss.backward()
        base_optimizer.step()
        base_optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    counted = {}
    for label, step in (("ours", ours_step), ("baseline", base_step)):
        step(0)  # warm-up: allocations, optimizer state, kernel selection (and compilation)
        with counting_flops() as counter:  # as the pretrain stage counts them: eagerly, once
            step(1)
        counted[label] = counter.get_total_flops()
    seconds = {"ours": 0.0, "baseline": 0.0}
    steps = 0
    for r in range(args.rounds):
        for label, step in (("ours", ours_step), ("baseline", base_step)) if r % 2 == 0 else (("baseline", base_step), ("ours", ours_step)):
            sync()
            started = time.perf_counter()
            for i in range(args.steps_per_round):
                step(2 + r * args.steps_per_round + i)
            sync()
            seconds[label] += time.perf_counter() - started
        steps += args.steps_per_round

    tokens = steps * args.batch_size * args.seq_length
    result = {
        "benchmark": "mlm_throughput",
        "family": family,
        "model": name,
        "attention": attention,
        "ours_head": head,
        "parameters": sum(p.numel() for p in ours_model.parameters()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "mixed_precision": args.mixed_precision,
        "compile": args.compile,
        "batch_size": args.batch_size,
        "seq_length": args.seq_length,
        "steps_each": steps,
        "baseline_tokens_per_s": round(tokens / seconds["baseline"], 1),
        "ours_tokens_per_s": round(tokens / seconds["ours"], 1),
        "ratio": round(seconds["baseline"] / seconds["ours"], 3),
        "baseline_flops_per_step": counted["baseline"],
        "ours_flops_per_step": counted["ours"],
        "baseline_flops_per_s": round(counted["baseline"] * steps / seconds["baseline"]),
        "ours_flops_per_s": round(counted["ours"] * steps / seconds["ours"]),
    }
    peak = flops.peak_flops(flops.device_name(device), args.mixed_precision)
    if peak:
        result["peak_flops_per_s"] = peak
        result["ours_mfu"] = round(result["ours_flops_per_s"] / peak, 4)
        result["baseline_mfu"] = round(result["baseline_flops_per_s"] / peak, 4)
    else:
        result["mfu_note"] = flops.describe_peak(flops.device_name(device), args.mixed_precision)
    return result


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bert-tiny", "L6-H384"], choices=list(SHAPES))
    parser.add_argument("--family", nargs="+", default=["bert"], choices=list(FAMILIES),
                        help="model families (benchmarks/encoder_shapes.py) at each shape; one JSON line per family and shape")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4, help="alternations of ours/baseline")
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument("--compile", action="store_true", help="torch.compile our step as `pretrain.compile: true` does (the baseline stays eager)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
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
            print(json.dumps(bench_shape(name, args, tokenizer, blocks, device, family)), flush=True)


if __name__ == "__main__":
    main()
