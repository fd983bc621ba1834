"""CPU inference speed of what `dapt export --format onnx --quantize int8` hands over: PyTorch fp32 vs ORT fp32 vs ORT int8.

    python benchmarks/int8_speed.py                                  # bert-tiny and bert-base shapes, batch 1 and 32
    python benchmarks/int8_speed.py --models bert-tiny --rounds 3    # quick

A BertForSequenceClassification of each shape (random init: speed does not depend on the weights'
values) is exported to ONNX and quantized exactly as the export does (`pretrain.handoff.quantize.export_onnx`,
`quantize_int8`: ONNX Runtime dynamic int8). The three engines then run alternately in one process,
round by round (`pretrain.handoff.quantize.time_pair`), on the same inputs and threads, so machine noise hits
them alike. The baseline is PyTorch fp32 (what `transformers` gives a user with no export at all).

One JSON line per model shape and batch size: examples/s of each engine, the ratios to PyTorch fp32,
the per-round ratios of int8 (their spread says how much to trust the median), and the CPU model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrain.handoff.quantize import OrtClassifier, export_onnx, linear_share, quantize_int8, time_pair  # noqa: E402
from machine import SHAPES, cpu_model  # noqa: E402  (benchmarks/machine.py)

MODELS = ["bert-tiny", "bert-base"]




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=list(SHAPES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--examples", type=int, default=64, help="examples per round and batch size (batch 1: this many single calls)")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the three engines (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=None, help="torch and ORT threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import BertConfig, BertForSequenceClassification

    for name in args.models:
        torch.manual_seed(0)
        config = BertConfig(vocab_size=30522, max_position_embeddings=512, num_labels=8, **SHAPES[name])
        fp32 = BertForSequenceClassification(config).eval()
        with tempfile.TemporaryDirectory(prefix="dapt-int8-speed-") as tmp:
            export_onnx(fp32, Path(tmp) / "model.onnx")
            quantize_int8(Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx")
            sizes = {f: round((Path(tmp) / f).stat().st_size / 1e6, 1) for f in ("model.onnx", "model.int8.onnx")}
            engines = {"pytorch_fp32": fp32, "ort_fp32": OrtClassifier(Path(tmp) / "model.onnx"), "ort_int8": OrtClassifier(Path(tmp) / "model.int8.onnx")}
            for batch_size in args.batch_sizes:
                count = max(batch_size, args.examples // batch_size * batch_size)
                ids = torch.randint(1000, 30000, (count, args.seq_length))
                batches = [{"input_ids": ids[i : i + batch_size], "attention_mask": torch.ones_like(ids[i : i + batch_size]),
                            "token_type_ids": torch.zeros_like(ids[i : i + batch_size])} for i in range(0, count, batch_size)]  # fmt: skip
                seconds = time_pair(engines, batches, rounds=args.rounds)
                rate = {e: count / statistics.median(s) for e, s in seconds.items()}
                print(json.dumps({
                    "benchmark": "int8_speed", "model": name, "parameters": sum(p.numel() for p in fp32.parameters()),
                    "linear_parameter_share": round(linear_share(fp32), 4), "onnx_mb": sizes, "batch_size": batch_size,
                    "seq_length": args.seq_length, "threads": torch.get_num_threads(), "cpu": cpu_model(),
                    **{f"{e}_examples_per_s": round(r, 2) for e, r in rate.items()},
                    "ort_fp32_vs_pytorch": round(rate["ort_fp32"] / rate["pytorch_fp32"], 3),
                    "ort_int8_vs_pytorch": round(rate["ort_int8"] / rate["pytorch_fp32"], 3),
                    "ort_int8_vs_ort_fp32": round(rate["ort_int8"] / rate["ort_fp32"], 3),
                    "ort_int8_vs_pytorch_per_round": [round(a / b, 3) for a, b in zip(seconds["pytorch_fp32"], seconds["ort_int8"])],
                    "goal_int8_vs_pytorch": (2.0 if batch_size == 1 else 2.5) if name == "bert-base" else None,
                }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
