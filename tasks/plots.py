"""The project's one line plotter: loss curves of a run (its history) and of several runs (a report figure).

Matplotlib's Figure API, no pyplot state: safe in the worker threads cells run in.  Written
atomically (`nst.images.atomic_write`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nst.images import atomic_write

#: Line colours, in order (matplotlib's tab10, reordered so two lines are blue and red).
CURVE_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
#: History keys that are not loss terms.
NOT_LOSSES = ("step", "stage", "time", "style_index")

Line = tuple[Sequence[float], Sequence[float]]  # (xs, ys)


def plot_curves(panels: dict[str, dict[str, Line]], path: Path, title: str, *, xlabel: str = "step",
                ylabel: str = "loss (weighted)") -> Path:
    """One subplot per panel (title -> {label: (xs, ys)}), side by side; log scale where every value is
    positive; a legend on the last panel when it has several lines."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 4.2 * len(panels)), 3.6), dpi=100)
    for k, (name, lines) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for j, (label, (xs, ys)) in enumerate(lines.items()):
            ax.plot(xs, ys, label=label, color=CURVE_COLORS[j % len(CURVE_COLORS)], lw=1.4)
        if all(y > 0 for _, ys in lines.values() for y in ys):
            ax.set_yscale("log")
        if name:
            ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.set_ylabel(ylabel)
        if len(lines) > 1 and k == len(panels) - 1:
            ax.legend(fontsize=7)
    fig.suptitle(title[:100], fontsize=10)
    fig.tight_layout()
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))


def loss_curve(history: list[dict[str, float]], path: Path, title: str) -> Path:
    """A run's loss terms against step, one line per term that is ever positive (a cell's or a training's
    ``loss_curve.png``)."""
    steps = [h["step"] for h in history]
    terms = [k for k in history[0] if k not in NOT_LOSSES and not k.startswith("val_")]
    lines = {k: (steps, [h[k] for h in history]) for k in terms if any(h[k] > 0 for h in history)}
    return plot_curves({"": lines}, path, title)


def validation_curve(history: list[dict[str, float]], path: Path, title: str) -> Path | None:
    """A feed-forward training's evaluator distances of its validation photos against step (content and
    style side by side; one line per style of a multi-style network); None when it scored none."""
    scored = [h for h in history if "val_style_distance" in h]
    if not scored:
        return None
    steps = [h["step"] for h in scored]
    panels: dict[str, dict[str, Line]] = {}
    for axis in ("content", "style"):
        key = f"val_{axis}_distance"
        per_style = sorted(k for k in scored[0] if k.startswith(key + "_"))
        keys = per_style or [key]
        panels[f"{axis} distance (evaluator)"] = {
            (k.removeprefix(key + "_") if per_style else "validation photos"): (steps, [h[k] for h in scored])
            for k in keys}
    return plot_curves(panels, path, title, ylabel="distance (lower is better)")
