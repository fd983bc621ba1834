"""Whether this machine can run a precision or `torch.compile` setting: the checks the config file gets
before anything runs (`pretrain/configfile.py`) and a training or fine-tuning run repeats where it runs.

They decide whether a run starts, never what it writes, so they are not part of any code version
(`pretrain.core.codeversion.NOT_CODE_DEPENDENCIES`). torch is imported only when a setting needs checking:
reading a config stays light.
"""

from __future__ import annotations

import importlib.util


def precision_problem(key: str, precision: str) -> str | None:
    """Why this machine cannot train in `precision` (the value of `key`), or None."""
    if precision in ("no", "auto"):  # auto picks only what the machine has (pretrain/training/precision.py)
        return None
    import torch  # only when a precision needs checking: reading a config stays light

    if precision == "fp16" and not torch.cuda.is_available():
        return f"{key}: fp16 needs a CUDA GPU (it trains with a gradient scaler) and none is visible here; use auto, bf16 (on a CPU: fast with bf16 units, emulated and slow without) or no"
    if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return f"{key}: this GPU ({torch.cuda.get_device_name()}) has no bf16 support (it needs Ampere or newer); use fp16 or no"
    return None


def compile_problem(key: str) -> str | None:
    """Why `torch.compile` cannot run here (the value of `key` is true), or None."""
    import shutil

    import torch

    if torch.cuda.is_available():
        if importlib.util.find_spec("triton") is None:
            return f"{key}: torch.compile on a GPU needs the triton package (`pip install triton`, it comes with CUDA builds of torch); or set it to false"
    elif not any(shutil.which(c) for c in ("g++", "c++", "clang++", "cl")):
        return f"{key}: torch.compile on a CPU needs a C++ compiler (g++ or clang++) on the PATH; install one or set it to false"
    return None
