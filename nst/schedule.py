"""The coarse-to-fine schedule of an optimisation: which sizes, how many steps each.

Below `nst.optimize` (which runs it) and `nst.tiling` (which estimates it), so neither imports the other.
"""

from __future__ import annotations

import math

from .config import DEFAULT_STYLE_WEIGHT, StyleConfig

#: Coarse stages whose longest side would be under this many pixels are skipped (VGG pools 4 times
#: before relu5_1; smaller images carry no style there).
MIN_SCALE_PX = 64


def full_steps(config: StyleConfig) -> int:
    """The steps at the full size: ``config.steps``; on the coarse-to-fine schedule (``config.scales``) times
    ``(style_weight / DEFAULT_STYLE_WEIGHT) ** weight_steps`` above the default weight (rounded up).

    L-BFGS (without a line search) makes the same iterates for the loss times any positive factor, so a
    larger style weight only moves the optimum the run heads for (further from the content); in a fixed
    number of steps the style distance then stops falling at what the style term alone reaches in them
    (docs/performance.md, "No style-distance floor").  The steps grow with the weight so that it keeps
    paying; at the default weight and below nothing changes.  A one-scale run keeps the steps it was given
    (plain Gatys' 500, a grid's weight sweep at equal steps)."""
    if not (config.scales and config.weight_steps and config.steps) or config.style_weight <= DEFAULT_STYLE_WEIGHT:
        return config.steps
    return math.ceil(config.steps * (config.style_weight / DEFAULT_STYLE_WEIGHT) ** config.weight_steps - 1e-9)


def pyramid(config: StyleConfig, hw: tuple[int, int], single: bool = False) -> list[tuple[tuple[int, int], int]]:
    """The optimisation sizes and steps: ``config.scales`` stages (fraction of the size, steps) that are
    at least `MIN_SCALE_PX` and smaller than `hw`, then `hw` itself with `full_steps`."""
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
    out.append((tuple(hw), config.steps if single else full_steps(config)))
    return out


def run_steps(config: StyleConfig, hw: tuple[int, int]) -> int:
    """How many steps one optimisation of an image of size `hw` makes (all scales)."""
    return sum(n for _, n in pyramid(config, hw))
