"""Which precision a run trains in on this machine: `mixed_precision: auto` resolved, and native bf16 detected.

`auto` picks the fastest precision the device computes natively, so one config is fast everywhere:
- a CUDA GPU with bf16 (Ampere and newer): `bf16`;
- an older CUDA GPU (Volta, Turing): `fp16`, with the gradient scaler (their tensor cores have no bf16);
- a CPU with bf16 units, AMX (Intel Sapphire Rapids and newer) or AVX512-BF16 (Intel Cooper Lake,
  AMD Zen 4 and newer), or a CPU for which torch reports a `bf16` capability: `bf16`;
- any other CPU: `no` (float32): bf16 there is emulated and slower than float32.

Weights and optimizer state stay float32 in every case (autocast). The artifact id hashes `auto` as
written, so the same config names the same artifact on every machine (ids are planned before the
machine that trains is known, e.g. by a Prefect deployment); the manifest records what it resolved to.
"""

from __future__ import annotations

import torch

# The `torch.cpu.get_capabilities()` flags of bf16 units, and how the log names them (most capable first).
CPU_BF16_UNITS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("bf16", "Arm BF16"))


def cpu_bf16_units() -> str | None:
    """The name of this CPU's native bf16 units (`AMX`, `AVX512-BF16`, `Arm BF16`), or None without them."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:  # torch before 2.8 does not say; treated as no native bf16 (float32 is never wrong)
        return None
    flags = capabilities()
    return next((name for flag, name in CPU_BF16_UNITS if flags.get(flag)), None)


def cpu_name() -> str:
    return getattr(torch.cpu, "get_capabilities", lambda: {})().get("cpu_name") or "this CPU"


def resolve(precision: str, device: torch.device) -> tuple[str, str]:
    """(the precision to train in: `no`, `fp16` or `bf16`; why, for the log) for a configured value on `device`."""
    if precision != "auto":
        return precision, "as configured"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", f"auto: the {name} computes bf16 natively"
        return "fp16", f"auto: the {name} has no native bf16; fp16 with a gradient scaler"
    if device.type == "cpu":
        units = cpu_bf16_units()
        if units:
            return "bf16", f"auto: {cpu_name()} has native bf16 units ({units})"
        return "no", f"auto: {cpu_name()} has no native bf16 units (AMX or AVX512-BF16); float32"
    return "no", f"auto: no known bf16 path on a {device.type} device; float32"
