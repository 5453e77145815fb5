"""Grid cells of methods `fast` (a feed-forward network trained in the cell) and `video` (a clip).

Thin adapters over `nst.methods.fast` / `nst.methods.video`; what they add is what only a tracked
cell has:

* the options are `nst.options` models (validated when the grid was expanded);
* the network is trained by `tasks.train.train_logged` into the cell's own run (per-step losses
  and images/s, the content image's evolution, timings, the model file) and handed to the method
  as its `model`, or read from ``model``;
* a video cell's stylised frames become ``output.mp4`` in its run.

`tasks.cell.run_cell` then logs what every cell logs (wall time, the method's metrics and images,
evaluator scores of `output.png` against the content, or for a clip its last frame against the
last input frame).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from nst import methods
from nst.errors import ImageError
from nst.experiments import Cell
from nst.fast.train import TrainStep, evolution_frames
from nst.images import load_image, save_image
from nst.methods import MethodInputs, MethodResult
from nst.optimize import StepInfo, style_size
from nst.options import FastOptions, TrainOptions, VideoOptions

from . import tracking
from .inputs import CellInputs, load_inputs

Callback = Callable[[StepInfo], None]


def _network(cell: Cell, opts: TrainOptions, inputs: CellInputs, device: str, callback: Callback,
             tmp: Path, val_image: str | None) -> tuple[Any, dict[str, Any]]:
    """The cell's network as a Stylizer: trained here and recorded in the cell's run, or `opts.model`."""
    if opts.model:
        st = opts.stylizer(None, cell.config, len(cell.styles), device)
        meta = st.info.get("meta", {})
        frames = evolution_frames(meta.get("evolution"))
        if frames:  # how the network got there: its training's validation image, step by step
            from .train import evolution_image

            path = save_image(evolution_image(frames), tmp / "evolution.png")
            tracking.client().log_artifact(inputs.run_id, str(path))
        return st, {"model": Path(opts.model).name, "weights_source": meta.get("weights_source", "?"),
                    "precision": st.precision}
    from .train import train_logged

    cfg = opts.train_config(cell.config, cell.styles, device, val_image=val_image, out=str(tmp / "model.pt"))
    total = inputs.steps or cfg.steps

    def on_step(info: TrainStep) -> None:  # the cell's progress bar, peak memory and Ctrl-C
        callback(StepInfo(info.step, total, 0, info.losses, info.elapsed))

    res = train_logged(cfg, inputs.run_id, tmp, progress=False, on_step=on_step, mlflow_model=False)
    st = opts.stylizer(res.net, cell.config, len(cell.styles), device)
    return st, {"weights_source": res.info["weights_source"], "precision": res.info["precision"],
                "training_images": res.info["n_images"], "parameters": res.info["parameters"]}


# --------------------------------------------------------------------------- fast


def fast_inputs(cell: Cell) -> CellInputs:
    inputs = load_inputs(cell)
    opts = FastOptions.model_validate(cell.method_options or {})
    inputs.steps = 0 if opts.model else opts.train_steps
    return inputs


def run_fast(cell: Cell, mi: MethodInputs, inputs: CellInputs, callback: Callback, image_every: int) -> MethodResult:
    """Johnson et al.: train a transformation network on the training images (evolution = the content
    image every `val_every` steps), then `nst.methods.fast` stylises the content image with it."""
    opts = FastOptions.model_validate(cell.method_options or {})
    with tempfile.TemporaryDirectory(prefix="nst-fast-") as tmp:
        net, info = _network(cell, opts, inputs, mi.config.device, callback, Path(tmp), str(cell.content))
    res = methods.get("fast").run(replace(mi, model=net))
    res.info.update(info)
    return res


# --------------------------------------------------------------------------- video


def video_inputs(cell: Cell) -> CellInputs:
    """The clip's first `frames` frames at the cell's size; content = the last one (what the evaluator scores)."""
    from nst.video import read_frames

    opts = VideoOptions.model_validate(cell.method_options or {})
    frames = list(read_frames(cell.content, cell.config.size, opts.frames))
    if len(frames) < 2:
        raise ImageError(f"{cell.content}: {len(frames)} frame(s); the temporal warping error needs at least 2")
    styles = [load_image(s, size=style_size(frames[-1], cell.config.style_scale)) for s in cell.styles]
    training = opts.train_steps if opts.mode == "fast" and not opts.model else 0
    return CellInputs(frames[-1], styles, frames=frames, steps=training + len(frames))


def run_video(cell: Cell, mi: MethodInputs, inputs: CellInputs, callback: Callback, image_every: int) -> MethodResult:
    """Every frame of the clip stylised by `nst.methods.video` (independently, Ruder et al.'s temporal
    way, or by a network trained here); its film strip and warping error (metrics warping_error,
    frames, frames_per_s) are the method's, ``output.mp4`` is logged here."""
    from nst.video import frame_files, probe, write_video

    opts = VideoOptions.model_validate(cell.method_options or {})
    device = mi.config.device
    with tempfile.TemporaryDirectory(prefix="nst-video-") as tmp:
        info: dict[str, Any] = {}
        done = 0
        if opts.mode == "fast":
            val = str(frame_files(cell.content)[0]) if cell.content.is_dir() else None
            net, info = _network(cell, opts, inputs, device, callback, Path(tmp), val)
            done = 0 if opts.model else opts.train_steps
            mi = replace(mi, model=net)

        def on_frame(step: StepInfo) -> None:  # frames count after the training steps
            callback(replace(step, step=done + step.step, total_steps=inputs.steps))

        res = methods.get("video").run(replace(mi, frames=inputs.frames, video=opts), callback=on_frame)
        fps = probe(cell.content, opts.fps).fps
        mp4 = Path(tmp) / "output.mp4"
        write_video(mp4, res.outputs, fps)
        tracking.client().log_artifact(inputs.run_id, str(mp4))
    res.info.update(info, fps=float(fps))
    if opts.mode != "fast":
        res.info.update(_optimiser_info(cell, device))
    return res


def _optimiser_info(cell: Cell, device: str) -> dict[str, str]:
    """What the per-frame optimisations ran on (cached: built once per process)."""
    import torch

    from nst.backbones import get_backbone
    from nst.runtime import resolve_precision

    cfg = cell.config
    return {"weights_source": get_backbone(cfg.backbone, cfg.pooling, cfg.weights, device).weights_source,
            "precision": resolve_precision(cfg.precision, torch.device(device))}


#: How the cells of these methods read their inputs and run (the others: `load_inputs`, the method itself).
INPUTS = {"fast": fast_inputs, "video": video_inputs}
RUNS = {"fast": run_fast, "video": run_video}
