"""Device leases: at most one running cell (or training) per GPU, or per CPU worker slot.

The grid and train flows configure the pool once (`configure_devices`); every cell and every
training run leases its device from it (`device_pool().lease()`).
"""

from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from typing import Iterator

import torch


class DevicePool:
    """Explicit device leases: at most one running cell per device (or per CPU worker slot)."""

    def __init__(self, devices: list[str]) -> None:
        self.devices = list(devices)
        self._q: "queue.Queue[str]" = queue.Queue()
        for d in self.devices:
            self._q.put(d)

    @contextmanager
    def lease(self) -> Iterator[str]:
        dev = self._q.get()
        try:
            yield dev
        finally:
            self._q.put(dev)


def default_devices(workers: int | None = None) -> list[str]:
    """One slot per GPU (cuda:0..n-1); on CPU `workers` slots (default 1: torch already uses every core)."""
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return [f"cuda:{i % n}" for i in range(workers or n)]
    return ["cpu"] * (workers or 1)


_POOL_LOCK = threading.Lock()
_POOL: DevicePool | None = None


def configure_devices(devices: list[str]) -> DevicePool:
    global _POOL
    with _POOL_LOCK:
        _POOL = DevicePool(devices)
        return _POOL


def device_pool() -> DevicePool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = DevicePool(default_devices())
        return _POOL
