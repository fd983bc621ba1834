"""What the benchmarks (and the tests' fixtures) share: the machine they ran on, the model shapes they
measure, and one reader of the demo's data files."""

from __future__ import annotations

import gzip
import json
import platform
from pathlib import Path

# BERT shapes by name (random weights of these shapes: speed does not depend on the weights' values).
SHAPES = {
    "bert-tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "L6-H384": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), so a result says which CPU gave it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_jsonl_gz(path: Path, limit: int | None = None) -> list[dict]:
    """The first `limit` records (all: None) of a gzipped JSONL file such as `data/reuters/corpus.jsonl.gz`."""
    records = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            records.append(json.loads(line))
            if limit is not None and len(records) >= limit:
                break
    return records
