"""This machine's CPU as torch's kernels see it: model name and vector/matrix extensions (AVX2, AVX-512, AMX)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

#: /proc/cpuinfo flag -> the name users know, in order of capability.
_ISA_FLAGS = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16"),
              ("amx_fp16", "AMX-FP16"))


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown", frozenset()
    model, flags = "unknown", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if model != "unknown" and flags:
            break
    return model, flags


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_isa() -> list[str]:
    """The vector/matrix extensions of this CPU that torch's kernels can use (AVX2, AVX-512, AMX...)."""
    flags = _cpuinfo()[1]
    return [name for flag, name in _ISA_FLAGS if flag in flags]


def cpu_has_native_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & _cpuinfo()[1])


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started (or exec'd).

    Linux's VmHWM (/proc/self/status) where there is one: ``getrusage().ru_maxrss`` survives execve, so a
    child started by a large process (pytest, a grid worker) would report its parent's RSS at the fork as its
    own peak.  Elsewhere ru_maxrss (bytes on macOS, KiB on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024
