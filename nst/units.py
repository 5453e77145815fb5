"""Sizes in bytes as people write them (``8GB``, ``512 MiB``): below config and tiling, which both use it."""

from __future__ import annotations

import math

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_bytes(value) -> int:
    """``'8GB'``, ``'512 MiB'``, ``'1.5g'`` or a number of bytes -> bytes (binary units: GB = 2**30)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 8GB or 512MB")
    if isinstance(value, (int, float)):
        if value <= 0 or not math.isfinite(value):
            raise ValueError("must be a positive size such as 8GB")
        return int(value)
    text = str(value).strip().lower().replace(" ", "")
    num = text.rstrip("abgikmt")
    unit = text[len(num):]
    try:
        n = float(num)
    except ValueError:
        raise ValueError(f"'{value}' is not a size (use e.g. 8GB, 512MB)") from None
    if unit not in _UNITS:
        raise ValueError(f"'{value}': unknown unit '{unit}' (use KB, MB, GB, TB)")
    if n <= 0 or not math.isfinite(n):
        raise ValueError("must be a positive size such as 8GB")
    return int(n * _UNITS[unit])
