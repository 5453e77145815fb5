"""The coarse-to-fine schedule of an optimisation: which sizes, how many steps each.

Below `nst.optimize` (which runs it) and `nst.tiling` (which estimates it), so neither imports the other.
"""

from __future__ import annotations

from .config import StyleConfig

#: Coarse stages whose longest side would be under this many pixels are skipped (VGG pools 4 times
#: before relu5_1; smaller images carry no style there).
MIN_SCALE_PX = 64


def pyramid(config: StyleConfig, hw: tuple[int, int], single: bool = False) -> list[tuple[tuple[int, int], int]]:
    """The optimisation sizes and steps: ``config.scales`` stages (fraction of the size, steps) that are
    at least `MIN_SCALE_PX` and smaller than `hw`, then `hw` itself with ``config.steps``."""
    out: list[tuple[tuple[int, int], int]] = []
    if config.scales and not single:
        h, w = hw
        for frac, steps in config.scales:
            side = round(max(h, w) * frac)
            if steps <= 0 or side < MIN_SCALE_PX:
                continue
            shw = (max(1, round(h * side / max(h, w))), max(1, round(w * side / max(h, w))))
            if shw[0] < h and shw[1] < w and (not out or shw != out[-1][0]):
                out.append((shw, steps))
    out.append((tuple(hw), config.steps))
    return out


def run_steps(config: StyleConfig, hw: tuple[int, int]) -> int:
    """How many steps one optimisation of an image of size `hw` makes (all scales)."""
    return sum(n for _, n in pyramid(config, hw))
