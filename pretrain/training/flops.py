"""Model FLOPs utilisation (MFU): the device peaks it is measured against, and the arithmetic.

MFU = the model's FLOPs per second / the device's dense peak for the precision used (PaLM's
definition: the matmul and attention FLOPs the model needs, nothing for recomputation or padding).
The training loop counts a step's FLOPs on a real micro-batch (`pretrain/training/kit.py`); this module
only knows the peaks, so a corrected datasheet figure changes no artifact id (it is listed in
`artifacts.NOT_CODE_DEPENDENCIES`, like the other measurements of speed). `benchmarks/mlm_throughput.py`
uses the same table.
"""

from __future__ import annotations

import re

import torch

# Dense (no sparsity) peak FLOP/s per device and precision, from the vendors' datasheets (SXM boards
# unless named). `no` is float32 without TF32, torch's default for matmuls. The first entry whose
# words all occur in torch.cuda.get_device_name() applies, so more specific names come first; a
# device or precision not listed has no MFU.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "no": 51e12}),
    ("H100 NVL", {"bf16": 835e12, "fp16": 835e12, "no": 60e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "no": 67e12}),
    ("H200 NVL", {"bf16": 835e12, "fp16": 835e12, "no": 60e12}),
    ("GH200", {"bf16": 989e12, "fp16": 989e12, "no": 67e12}),
    ("H200", {"bf16": 989e12, "fp16": 989e12, "no": 67e12}),
    ("B200", {"bf16": 2250e12, "fp16": 2250e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "no": 19.5e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "no": 91.6e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "no": 30.3e12}),
    ("A10", {"bf16": 125e12, "fp16": 125e12, "no": 31.2e12}),
    ("V100", {"fp16": 125e12, "no": 15.7e12}),
    ("T4", {"fp16": 65e12, "no": 8.1e12}),
]


# How a `mixed_precision` value is named in messages.
PRECISION_NAMES = {"no": "float32", "bf16": "bf16", "fp16": "fp16"}


def device_name(device: torch.device) -> str:
    """What the peak table is keyed by: the CUDA device's name, else the device type (`cpu`)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def peak_flops(name: str, precision: str) -> float | None:
    """The dense peak FLOP/s of the named device in `precision` (`no`, `bf16`, `fp16`), or None when unknown."""
    words = set(re.split(r"[\s_-]+", name.upper()))
    for chip, peaks in PEAK_FLOPS:
        if set(chip.upper().split()) <= words:
            return peaks.get(precision)
    return None


def describe_peak(name: str, precision: str) -> str:
    """One phrase for the log: the peak MFU is measured against, or why there is no MFU."""
    peak = peak_flops(name, precision)
    if peak is None:
        return unknown(name, precision)
    return f"MFU against the {name}'s {PRECISION_NAMES[precision]} dense peak of {peak / 1e12:,.0f} TFLOP/s"


def unknown(name: str, precision: str) -> str:
    return f"unknown device {name!r} for {PRECISION_NAMES[precision]}: no MFU"


def utilisation(flops_per_step: float, steps: float, seconds: float, processes: int, name: str, precision: str) -> dict:
    """Manifest metrics of a run: FLOPs per optimizer step (all processes), achieved FLOP/s, and MFU or why there is none.

    `flops_per_step` is one process's count; MFU is per device (each process drives one).
    """
    per_device = flops_per_step * steps / max(seconds, 1e-9)
    out = {
        "model_flops_per_step": int(flops_per_step * processes),
        "model_flops_per_second": round(per_device * processes),
        "device_name": name,
    }
    peak = peak_flops(name, precision)
    if peak is None:
        return {**out, "mfu": None, "mfu_note": unknown(name, precision)}
    return {**out, "peak_flops_per_second": peak, "mfu": round(per_device / peak, 4)}
