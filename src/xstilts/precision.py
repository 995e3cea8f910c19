"""Device and numeric precision: bf16 autocast where the hardware supports it, else fp32."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch


def pick_device() -> torch.device:
    """CUDA when available (this process's GPU when a launcher started one process per GPU), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def device_kind(device: torch.device) -> str:
    """The device a result records as having computed it: the GPU's name, else the device type ('cpu')."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def bf16_supported(device: torch.device) -> bool:
    """True on GPUs with bf16 and on CPUs with native bf16 instructions (AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' becomes 'bf16' where supported, else 'fp32'."""
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return precision


def precision_here(precision: str) -> str:
    """`precision` as it resolves on this process's device (what an executor's worker answers when asked)."""
    return resolve_precision(precision, pick_device())


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to bf16 for 'bf16' (weights and optimizer state stay fp32), a no-op for 'fp32'."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
