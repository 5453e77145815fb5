"""Grid methods `fast` (a feed-forward network trained in the cell) and `video` (a clip, frame by frame).

Thin adapters, registered in `tasks.cell.METHODS` when `tasks.cell` is imported:

* the options are `nst.options` models (validated when the grid was expanded);
* training is `nst.fast.train` recorded by `tasks.train.train_logged` into the cell's own run
  (per-step losses and images/s, the content image's evolution, timings, the model file);
* stylisation is `nst.fast.infer.Stylizer` / `nst.video.FrameStylizer`; the warping error is
  `nst.video`'s.

`tasks.cell.run_cell` then logs what every cell logs (wall time, evaluator scores of `output.png`
against the content, or for a clip its last frame against the last input frame).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from nst.errors import ImageError
from nst.experiments import Cell
from nst.fast.train import TrainStep
from nst.images import load_image
from nst.optimize import StepInfo, StyleResult, style_size
from nst.options import FastOptions, TrainOptions, VideoOptions

from . import tracking
from .cell import CellInputs, load_inputs, register_method


def _network(cell: Cell, opts: TrainOptions, inputs: CellInputs, device: str, callback: Callable[[StepInfo], None],
             tmp: Path, val_image: str | None) -> tuple[Any, dict[str, Any]]:
    """The cell's network as a Stylizer: trained here and recorded in the cell's run, or `opts.model`."""
    if opts.model:
        st = opts.stylizer(None, cell.config, len(cell.styles), device)
        meta = st.info.get("meta", {})
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


def _fast_inputs(cell: Cell) -> CellInputs:
    inputs = load_inputs(cell)
    opts = FastOptions.model_validate(cell.method_options or {})
    inputs.steps = 0 if opts.model else opts.train_steps
    return inputs


@register_method("fast", inputs=_fast_inputs)
def _fast(cell: Cell, inputs: CellInputs, device: str, callback, image_every: int) -> StyleResult:
    """Johnson et al.: train a transformation network on the training images (evolution = the content
    image every `val_every` steps), then stylise the content image with one forward pass."""
    opts = FastOptions.model_validate(cell.method_options or {})
    with tempfile.TemporaryDirectory(prefix="nst-fast-") as tmp:
        net, info = _network(cell, opts, inputs, device, callback, Path(tmp), str(cell.content))
    t = time.perf_counter()
    image = net(inputs.content)
    return StyleResult(image, [], {"stylize_s": time.perf_counter() - t}, info, cell.config)


# --------------------------------------------------------------------------- video


def _video_inputs(cell: Cell) -> CellInputs:
    """The clip's first `frames` frames at the cell's size; content = the last one (what the evaluator scores)."""
    from nst.video import read_frames

    opts = VideoOptions.model_validate(cell.method_options or {})
    frames = list(read_frames(cell.content, cell.config.size, opts.frames))
    if len(frames) < 2:
        raise ImageError(f"{cell.content}: {len(frames)} frame(s); the temporal warping error needs at least 2")
    styles = [load_image(s, size=style_size(frames[-1], cell.config.style_scale)) for s in cell.styles]
    training = opts.train_steps if opts.mode == "fast" and not opts.model else 0
    return CellInputs(frames[-1], styles, frames=frames, steps=training + len(frames))


@register_method("video", inputs=_video_inputs)
def _video(cell: Cell, inputs: CellInputs, device: str, callback, image_every: int) -> StyleResult:
    """Every frame of the clip stylised (independently, Ruder et al.'s temporal way, or by a network),
    the temporal warping error measured on DIS/RAFT flow of the input frames; logs `output.mp4`,
    `strip.png` and the metrics warping_error, frames, frames_per_s."""
    from nst.video import FrameStylizer, film_strip, frame_files, make_flow, probe, stylize_frames, write_video

    opts = VideoOptions.model_validate(cell.method_options or {})
    flow = make_flow(opts.flow, device=device)
    info: dict[str, Any] = {"mode": opts.mode}
    with tempfile.TemporaryDirectory(prefix="nst-video-") as tmp:
        done = 0
        if opts.mode == "fast":
            val = str(frame_files(cell.content)[0]) if cell.content.is_dir() else None
            net, info_net = _network(cell, opts, inputs, device, callback, Path(tmp), val)
            info.update(info_net)
            done = 0 if opts.model else opts.train_steps
            fs = FrameStylizer("fast", model=net, flow=flow)
        else:
            fs = FrameStylizer("optim", styles=inputs.styles, config=cell.config.replace(device=device),
                               temporal=opts.mode == "temporal", temporal_weight=opts.temporal_weight,
                               frame_steps=opts.frame_steps, flow=flow)
        outputs: list = []
        t0 = time.perf_counter()

        def sink(out) -> None:
            outputs.append(out)
            callback(StepInfo(done + len(outputs), inputs.steps, 0, {}, time.perf_counter() - t0))

        vres = stylize_frames(inputs.frames, fs, sink=sink)
        fps = probe(cell.content, opts.fps).fps
        mp4 = Path(tmp) / "output.mp4"
        write_video(mp4, outputs, fps)
        tracking.client().log_artifact(inputs.run_id, str(mp4))
    tracking.log_batch(inputs.run_id, metrics={"warping_error": vres.warp_error, "frames": float(vres.frames),
                                               "frames_per_s": vres.fps_processed})
    info.update(vres.info, fps=float(fps), frame_warping_errors=vres.frame_errors)
    if opts.mode != "fast":  # what the per-frame optimisations ran on (cached: built once per process)
        import torch

        from nst.backbones import get_backbone
        from nst.runtime import resolve_precision

        cfg = cell.config
        info["weights_source"] = get_backbone(cfg.backbone, cfg.pooling, cfg.weights, device).weights_source
        info["precision"] = resolve_precision(cfg.precision, torch.device(device))
    info["cell_images"] = {"strip.png": film_strip(inputs.frames, outputs)}
    return StyleResult(outputs[-1], [], {"video_s": vres.seconds}, info, cell.config)
