"""Device, precision and seeding: decided once, recorded with every result."""

from __future__ import annotations

import random

import numpy as np
import torch

from .errors import ConfigError
from .hardware import cpu_has_native_bf16


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> the first CUDA device if there is one, else CPU; validates explicit names."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device: unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: '{device}' requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device: '{device}' does not exist ({torch.cuda.device_count()} CUDA devices)")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on GPUs that support it, fp32 elsewhere.

    On CPU, bf16 is only worth it with native bf16 instructions (AVX512-BF16 /
    AMX); measured on an AVX2-only CPU it was slower than fp32, so auto keeps
    fp32 there.  Losses and Gram matrices are always fp32.
    """
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ConfigError("precision: fp16 autocast is not supported on CPU (use bf16 or fp32)")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a generator for explicit random draws."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g
