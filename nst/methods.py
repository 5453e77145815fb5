"""Every style-transfer method of the library, by name: one registry (`METHODS`) of plain functions.

A method takes `MethodInputs` (images already loaded, a `StyleConfig`, and what the method needs
besides: a region map, a clip's frames, a network) and returns a `MethodResult`: the image, its loss
history and timings, plus the method's own measurements (`metrics`) and extra images (`images`,
e.g. the region map or a video's film strip) as typed fields, not hidden in ``info``.  Measurements
that need the fixed evaluator and only matter when a run is scored (region leakage, photorealism
energy) are the method's `measure` function, called by whoever evaluates.

    from nst.methods import MethodInputs, get
    res = get("guided-gram").run(MethodInputs(content, [], config, region_map=rm, region_styles=styles))

Names: ``gatys``; the region methods of `nst.regions` (``stitched``, ``per-region-composite``,
``guided-gram``, ``locality``, ``portion``); ``photoreal-two-stage`` (Luan et al.: plain, then
regularised); ``fast`` (a feed-forward network, `nst.fast`); ``video`` (a clip frame by frame,
`nst.video`).  The CLI and the grid schema take their lists of methods from here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping

import torch

from . import regions
from .config import StyleConfig
from .errors import ConfigError
from .evaluate import Evaluator
from .features import TargetCache
from .optimize import StepInfo, StyleResult, stylize, stylize_two_stage
from .segment import RegionError, RegionMap

Needs = Literal["image", "regions", "clip"]


@dataclass
class MethodInputs:
    """What a method works on: images loaded at the config's size, and its method-specific inputs."""

    content: torch.Tensor  # [1, 3, H, W] in [0, 1]
    styles: list[torch.Tensor]
    config: StyleConfig
    region_map: RegionMap | None = None  # region methods
    region_styles: Mapping[str, object] | None = None  # region methods: {region: style image or "keep"}
    feather: float | None = None
    band: float | None = None
    frames: list[torch.Tensor] | None = None  # video: the clip's frames
    model: Callable[[torch.Tensor], torch.Tensor] | None = None  # fast / video fast: a trained network
    train: object | None = None  # fast / video fast without a model: the `nst.fast.train.TrainConfig` to train
    video: object | None = None  # video: its `nst.options.VideoOptions` (mode, temporal weight, flow...)


@dataclass
class MethodResult(StyleResult):
    """A `StyleResult` plus the method's own measurements and images (logged by whoever records runs)."""

    metrics: dict[str, float] = field(default_factory=dict)
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # file name -> [1, 3, H, W]
    region_map: RegionMap | None = None
    outputs: list[torch.Tensor] | None = None  # video: every stylised frame

    @classmethod
    def of(cls, res: StyleResult, **extra) -> "MethodResult":
        return cls(res.image, res.history, res.timings, res.info, res.config, **extra)


RunFn = Callable[..., MethodResult]
MeasureFn = Callable[[MethodResult, MethodInputs, Evaluator], dict[str, float]]


@dataclass(frozen=True)
class Method:
    """One registered method: its function, what inputs it needs, and its evaluator-based measurements."""

    name: str
    run: RunFn  # run(inputs, *, callback=None, log_every=1, image_every=0, cache=None) -> MethodResult
    needs: Needs = "image"
    measure: MeasureFn | None = None
    summary: str = ""


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}' (known: {', '.join(METHODS)})")
    return METHODS[name]


def names(needs: Needs | None = None) -> tuple[str, ...]:
    """The registered method names, optionally only those that need `needs` (e.g. "regions")."""
    return tuple(n for n, m in METHODS.items() if needs is None or m.needs == needs)


# --------------------------------------------------------------------------- optimisation


def gatys(inputs: MethodInputs, *, callback: Callable[[StepInfo], None] | None = None, log_every: int = 1,
          image_every: int = 0, cache: TargetCache | None = None) -> MethodResult:
    """Optimisation-based transfer (Gatys et al.; with ``photoreal_two_stage`` set, Luan et al.'s two stages)."""
    return MethodResult.of(stylize(inputs.content, inputs.styles, inputs.config, callback=callback,
                                   log_every=log_every, image_every=image_every, cache=cache))


def photoreal_two_stage(inputs: MethodInputs, *, callback: Callable[[StepInfo], None] | None = None,
                        log_every: int = 1, image_every: int = 0, cache: TargetCache | None = None) -> MethodResult:
    """Luan et al.: a plain transfer for half the steps, then the regularised one from its result."""
    if not inputs.config.photoreal_weight:
        raise ConfigError("photoreal-two-stage needs photoreal_weight > 0")
    config = inputs.config.replace(photoreal_two_stage=True)
    return MethodResult.of(stylize_two_stage(inputs.content, inputs.styles, config, callback=callback,
                                             log_every=log_every, image_every=image_every, cache=cache))


def photoreal_metrics(res: MethodResult, inputs: MethodInputs, evaluator: Evaluator, *,
                      always: bool = False) -> dict[str, float]:
    """The regulariser's value of the output (``photoreal_energy``), for runs that use it (`always`: for
    the others too, e.g. the unregularised baseline of a comparison)."""
    if not (always or inputs.config.photoreal_weight):
        return {}
    from .photoreal import photoreal_energy

    return {"photoreal_energy": photoreal_energy(res.image, inputs.content, inputs.config.photoreal_epsilon)}


register(Method("gatys", gatys, measure=photoreal_metrics, summary="optimisation (Gatys et al.)"))
register(Method("photoreal-two-stage", photoreal_two_stage, measure=photoreal_metrics,
                summary="plain, then photorealism-regularised optimisation (Luan et al.)"))


# --------------------------------------------------------------------------- regions


def region_method(name: str) -> RunFn:
    """The region method `name` of `nst.regions` as a method function (its region map in ``images``)."""
    if name not in regions.METHODS:
        raise ConfigError(f"unknown region method '{name}'; choose one of: {', '.join(regions.METHODS)}")

    def run(inputs: MethodInputs, *, callback: Callable[[StepInfo], None] | None = None, log_every: int = 1,
            image_every: int = 0, cache: TargetCache | None = None) -> MethodResult:
        from .segment import colorize

        if inputs.region_map is None or not inputs.region_styles:
            raise ConfigError(f"method '{name}' needs a region map and region styles")
        res = regions.stylize_regions(inputs.content, inputs.region_map, inputs.region_styles, name, inputs.config,
                                      feather=inputs.feather, band=inputs.band, callback=callback,
                                      log_every=log_every, image_every=image_every, cache=cache)
        return MethodResult.of(res, images={"region_map.png": colorize(res.region_map)}, region_map=res.region_map)

    run.__name__ = run.__qualname__ = name.replace("-", "_")
    return run


def leakage_metrics(res: MethodResult, inputs: MethodInputs, evaluator: Evaluator) -> dict[str, float]:
    """How much each region looks like the other regions' styles (`nst.regions.leakage`); {} for one style."""
    try:
        leak = regions.leakage(res.image, res.region_map, inputs.region_styles, evaluator)
    except RegionError:  # a single style: nothing can leak
        return {}
    metrics = {"leak_own": leak["own"], "leak_other": leak["other"], "leak_ratio": leak["ratio"]}
    for name, fig in leak["regions"].items():
        metrics.update({f"leak_own.{name}": fig["own"], f"leak_other.{name}": fig["other"]})
    return metrics


for _name in regions.METHODS:
    register(Method(_name, region_method(_name), needs="regions", measure=leakage_metrics,
                    summary=f"region method {_name} (nst.regions)"))


# --------------------------------------------------------------------------- feed-forward and video


def _network(inputs: MethodInputs, callback: Callable[[StepInfo], None] | None) -> tuple[Callable, dict]:
    """The method's network: `inputs.model`, or one trained here from `inputs.train` (`nst.fast.train`)."""
    if inputs.model is not None:
        return inputs.model, {}
    if inputs.train is None:
        raise ConfigError("a feed-forward method needs a model or a training config")
    from .fast.train import TrainStep, train
    from .options import TrainOptions

    total = inputs.train.steps

    def on_step(info: TrainStep) -> None:
        if callback is not None:
            callback(StepInfo(info.step, total, 0, info.losses, info.elapsed))

    res = train(inputs.train, callback=on_step)
    net = TrainOptions().stylizer(res.net, inputs.config, len(inputs.styles), inputs.train.device)
    return net, {"weights_source": res.info["weights_source"], "precision": res.info["precision"],
                 "training_images": res.info["n_images"], "parameters": res.info["parameters"],
                 "train_s": res.timings["train_s"]}


def fast(inputs: MethodInputs, *, callback: Callable[[StepInfo], None] | None = None, log_every: int = 1,
         image_every: int = 0, cache: TargetCache | None = None) -> MethodResult:
    """Johnson et al.: one forward pass of a transformation network (trained first when no model is given)."""
    net, info = _network(inputs, callback)
    t = time.perf_counter()
    image = net(inputs.content)
    return MethodResult(image, [], {"stylize_s": time.perf_counter() - t}, info, inputs.config)


def video(inputs: MethodInputs, *, callback: Callable[[StepInfo], None] | None = None, log_every: int = 1,
          image_every: int = 0, cache: TargetCache | None = None) -> MethodResult:
    """A clip frame by frame (independent, Ruder et al.'s temporal way, or a network, optionally stabilised
    along the flow), with its flicker (the temporal warping error on optical flow of the input frames) in
    ``metrics``."""
    from .options import VideoOptions
    from .runtime import resolve_device
    from .video import FrameStylizer, film_strip, make_flow, stylize_frames

    if not inputs.frames or len(inputs.frames) < 2:
        raise ConfigError("method 'video' needs at least 2 frames")
    opts = inputs.video if inputs.video is not None else VideoOptions()
    flow = make_flow(opts.flow, device=resolve_device(inputs.config.device))
    info: dict[str, object] = {"mode": opts.mode}
    done = 0
    if opts.mode == "fast":
        net, net_info = _network(inputs, callback)
        info.update(net_info)
        done = inputs.train.steps if inputs.model is None else 0
        fs = FrameStylizer("fast", model=net, flow=flow, stabilize=opts.stabilize)
    else:
        fs = FrameStylizer("optim", styles=inputs.styles, config=inputs.config, temporal=opts.mode == "temporal",
                           temporal_weight=opts.temporal_weight, frame_steps=opts.frame_steps, flow=flow)
    outputs: list[torch.Tensor] = []
    total = done + len(inputs.frames)
    t0 = time.perf_counter()

    def sink(out: torch.Tensor) -> None:
        outputs.append(out)
        if callback is not None:
            callback(StepInfo(done + len(outputs), total, 0, {}, time.perf_counter() - t0))

    vres = stylize_frames(inputs.frames, fs, sink=sink)
    info.update(vres.info, frame_warping_errors=vres.frame_errors)
    metrics = {"warping_error": vres.warp_error, "frames": float(vres.frames), "frames_per_s": vres.fps_processed}
    return MethodResult(outputs[-1], [], {"video_s": vres.seconds}, info, inputs.config, metrics=metrics,
                        images={"strip.png": film_strip(inputs.frames, outputs)}, outputs=outputs)


register(Method("fast", fast, summary="feed-forward network (Johnson et al.; nst.fast)"))
register(Method("video", video, needs="clip", summary="a clip frame by frame, temporal consistency (nst.video)"))
