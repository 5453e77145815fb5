"""A grid cell's inputs: its images read from disk, then the `nst.methods.MethodInputs` its method runs on.

Reading (`load_inputs`, and `tasks.media`'s for clips and networks) happens before a device is
leased, so a batch of cells (`tasks.cell.run_cells`) can drop one whose files are bad; building the
`MethodInputs` (`method_inputs`: the config on the leased device, a region map) happens on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nst.experiments import Cell
from nst.images import load_image
from nst.methods import MethodInputs
from nst.optimize import run_steps, style_size

#: Region methods that run one optimisation per style (their progress counts every one).
PER_STYLE_METHODS = ("per-region-composite", "portion")


@dataclass
class CellInputs:
    content: torch.Tensor  # the image the evaluator scores the output against (video: the last frame)
    styles: list[torch.Tensor]
    frames: list[torch.Tensor] | None = None  # video methods: the clip's frames at the cell's size
    steps: int | None = None  # progress units of the cell (default: optimisation steps)
    run_id: str | None = None  # the cell's MLflow run, for methods that log while they run (training)


def load_inputs(cell: Cell) -> CellInputs:
    """The content image at the cell's size and the styles scaled to it; steps = optimisation steps."""
    cfg = cell.config
    content = load_image(cell.content, size=cfg.size)
    styles = [load_image(s, size=style_size(content, cfg.style_scale)) for s in cell.styles]
    # one optimisation per style: sequential mixes, and the region methods that run once per style
    per_style = cfg.multi_style == "sequential" or cell.method in PER_STYLE_METHODS
    steps = run_steps(cfg, tuple(content.shape[-2:]))  # every scale of a coarse-to-fine run
    return CellInputs(content, styles, steps=steps * (len(styles) if per_style else 1))


def method_inputs(cell: Cell, inputs: CellInputs, device: str) -> MethodInputs:
    """What the cell's method runs on, on `device`: for a region method its region map is built here."""
    config = cell.config.replace(device=device)
    if not cell.regions:
        return MethodInputs(inputs.content, inputs.styles, config, frames=inputs.frames)
    from nst.segment import region_map

    r = cell.regions
    rm = region_map(r["spec"], inputs.content, content_path=cell.content, coco=r.get("coco"), device=device)
    return MethodInputs(inputs.content, inputs.styles, config, region_map=rm, region_styles=r["styles"])
