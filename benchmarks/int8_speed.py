"""CPU inference speed of dynamic int8 (what `dapt export --quantize int8` applies) against fp32.

    python benchmarks/int8_speed.py                                  # bert-tiny and bert-base shapes
    python benchmarks/int8_speed.py --models bert-tiny --rounds 3    # quick

A BertForSequenceClassification of each shape (random init: speed does not depend on the weights'
values) is quantized with `pretrain.quantize.quantize_int8` (every nn.Linear to int8, activations
quantized per batch). fp32 and int8 then run alternately in one process, round by round
(`pretrain.quantize.time_pair`), on the same inputs and threads, so machine noise hits both alike.

One JSON line per model shape and batch size: examples/s of both, the ratio int8/fp32, and the
per-round ratios (their spread says how much to trust the median).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrain.quantize import linear_share, quantize_int8, time_pair  # noqa: E402

SHAPES = {
    "bert-tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--examples", type=int, default=64, help="examples per round and batch size (batch 1: this many single calls)")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of fp32/int8 (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import BertConfig, BertForSequenceClassification

    for name in args.models:
        torch.manual_seed(0)
        config = BertConfig(vocab_size=30522, max_position_embeddings=512, num_labels=8, **SHAPES[name])
        fp32 = BertForSequenceClassification(config).eval()
        int8 = quantize_int8(fp32)
        for batch_size in args.batch_sizes:
            count = max(batch_size, args.examples // batch_size * batch_size)
            ids = torch.randint(1000, 30000, (count, args.seq_length))
            batches = [{"input_ids": ids[i : i + batch_size], "attention_mask": torch.ones_like(ids[i : i + batch_size])} for i in range(0, count, batch_size)]
            seconds = time_pair({"fp32": fp32, "int8": int8}, batches, rounds=args.rounds)
            fp32_rate = count / statistics.median(seconds["fp32"])
            int8_rate = count / statistics.median(seconds["int8"])
            print(json.dumps({
                "benchmark": "int8_speed", "model": name, "parameters": sum(p.numel() for p in fp32.parameters()),
                "linear_parameter_share": round(linear_share(fp32), 4), "batch_size": batch_size, "seq_length": args.seq_length,
                "threads": torch.get_num_threads(), "fp32_examples_per_s": round(fp32_rate, 2), "int8_examples_per_s": round(int8_rate, 2),
                "ratio": round(int8_rate / fp32_rate, 3),
                "ratio_per_round": [round(a / b, 3) for a, b in zip(seconds["fp32"], seconds["int8"])],
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
