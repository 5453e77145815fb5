"""Optimisation-based style transfer (Gatys et al. 2015/2016): `stylize(content, styles, config)`.

One feature pass per step collects every layer the losses need; style Gram
targets and content features come from a cache keyed by image content, so a
worker running many grid cells computes each target once.  Progress reaches
the caller through a callback; nothing here knows about Prefect or MLflow.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import color, tiling
from .config import StyleConfig, make_config
from .errors import ConfigError, DivergedError
from .features import DEFAULT_CACHE, FeatureExtractor, LossNetwork, TargetCache, loss_network, tensor_digest
from .images import load_image, resize, resize_longest
from .lbfgs import BatchLBFGS
from .losses import STYLE_STATISTICS, PerceptualLoss, normalised_layer_weights
from .photoreal import photoreal_energy, photoreal_term
from .runtime import seed_everything
from .schedule import MIN_SCALE_PX, full_steps, pyramid, run_steps  # noqa: F401 (part of this module's API)


@dataclass
class StepInfo:
    """What the callback sees after a step."""

    step: int  # 1-based, counted across sequential stages
    total_steps: int
    stage: int  # index of the style stage (sequential multi-style), else 0
    losses: dict[str, float]
    elapsed: float  # seconds since optimisation started
    image: torch.Tensor | None = None  # current output (CPU, [1,3,H,W]) on image steps


@dataclass
class StyleResult:
    image: torch.Tensor  # [1, 3, H, W], CPU, float32 in [0, 1]
    history: list[dict[str, float]]  # one entry per step: step, stage, time, and each loss term
    timings: dict[str, float]
    info: dict[str, object]  # plain data describing the run (device, layers, stages...): JSON-able
    config: StyleConfig

    @property
    def final_losses(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


@dataclass
class _Stage:
    content: torch.Tensor  # what the network sees as content (grey in luminance mode)
    styles: list[torch.Tensor]
    blend: list[float]
    chroma_source: torch.Tensor | None = None  # luminance mode: content whose chroma is kept
    extra_terms: list = field(default_factory=list)


def as_image(image, size: int | None = None) -> torch.Tensor:
    """A path or a tensor as a ``[1, 3, H, W]`` float tensor, resized to `size` (longest side)."""
    if isinstance(image, (str, os.PathLike, Path)):
        return load_image(image, size=size)
    t = image if image.dim() == 4 else image.unsqueeze(0)
    t = t.detach().float().cpu()
    return resize_longest(t, size) if size is not None else t


def style_size(content: torch.Tensor, style_scale: float) -> int:
    return max(16, round(max(content.shape[-2:]) * style_scale))


def upsample(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """A coarse result resized (bicubic) to the next scale, as its starting image."""
    return torch.nn.functional.interpolate(x.detach().float(), size=hw, mode="bicubic", align_corners=False).clamp(0, 1)


# --------------------------------------------------------------------------- runs one after another


def shifted_callback(callback: Callable[[StepInfo], None] | None, offset: int,
                     total: Callable[[int], int]) -> Callable[[StepInfo], None] | None:
    """`callback` for a run that continues an earlier one: its steps counted on from `offset`, and
    ``total(own total)`` as the whole chain's step count (region methods, two-stage photorealism)."""
    if callback is None:
        return None

    def cb(info: StepInfo) -> None:
        callback(dataclasses.replace(info, step=info.step + offset, total_steps=total(info.total_steps)))

    return cb


#: The timings that add up over runs made one after another.
CHAINED_TIMINGS = ("setup_s", "targets_s", "optimize_s", "total_s")


def chain_runs(runs: Sequence[StyleResult], step_offsets: Sequence[int] | None = None, *,
               stage_per_run: bool = False,
               shift_time: bool = False) -> tuple[list[dict[str, float]], dict[str, float]]:
    """One loss history and the summed timings (`CHAINED_TIMINGS`) of runs made one after another.

    Run i's steps are shifted by ``step_offsets[i]`` (default: the steps of the runs before it);
    `stage_per_run` numbers each run's entries as stage i; `shift_time` counts each run's times on from
    the total time of the runs before it.  Callers set ``s_per_step`` (what a step means differs).
    """
    history: list[dict[str, float]] = []
    elapsed = 0.0
    for i, r in enumerate(runs):
        offset = step_offsets[i] if step_offsets is not None else len(history)
        for e in r.history:
            entry = {**e, "step": e["step"] + offset}
            if stage_per_run:
                entry["stage"] = float(i)
            if shift_time:
                entry["time"] = e["time"] + elapsed
            history.append(entry)
        elapsed += r.timings.get("total_s", 0.0)
    timings = {k: sum(r.timings.get(k, 0.0) for r in runs) for k in CHAINED_TIMINGS}
    return history, timings


# --------------------------------------------------------------------------- one image


@dataclass
class StyleJob:
    """One optimisation of a batch: its inputs, settings and per-step callback (see `stylize`)."""

    content: object  # path or [1, 3, H, W] tensor
    styles: Sequence
    config: StyleConfig | dict | None  # a dict or None is read as in `stylize`
    callback: Callable[[StepInfo], None] | None = None
    extra_terms: Sequence[tuple[str, float, Callable]] | None = None
    style_masks: Sequence[torch.Tensor | None] | None = None
    init: torch.Tensor | None = None  # starting image (any size, resized to the content's); overrides config.init


#: Settings every job of one batch must share: they fix the network, the schedule and the optimiser.
#: (Loss weights, styles, layer weights, colour handling, seed and init may differ per job.)
BATCH_FIELDS = (
    "backbone", "weights", "pooling", "size", "steps", "optimizer", "lr", "lbfgs_history", "lbfgs_line_search",
    "lbfgs_clamp", "lbfgs_first_step",
    "ema_decay", "scales", "content_layers", "style_layers", "multi_style", "photoreal_two_stage", "device",
    "precision", "max_memory",
)


def batch_key(config: StyleConfig, content_hw: tuple[int, int], n_styles: int) -> tuple | None:
    """Jobs with equal keys can share one batched optimisation; None: this job runs alone
    (a line search or the two-stage photorealism run evaluate per job)."""
    if config.lbfgs_line_search or (config.photoreal_two_stage and config.photoreal_weight):
        return None
    sequential = config.multi_style == "sequential" and n_styles > 1
    return (tuple(getattr(config, f) for f in BATCH_FIELDS), full_steps(config), tuple(content_hw),
            n_styles if sequential else 1)


def stylize(
    content,
    styles: Sequence,
    config: StyleConfig | dict | None = None,
    *,
    callback: Callable[[StepInfo], None] | None = None,
    log_every: int = 1,
    image_every: int = 0,
    cache: TargetCache | None = None,
    extra_terms: Sequence[tuple[str, float, Callable]] | None = None,
    style_masks: Sequence[torch.Tensor | None] | None = None,
    init: torch.Tensor | None = None,
) -> StyleResult:
    """Stylise `content` with one or several `styles` and return the image, loss history and timings.

    `content` and `styles` are file paths or ``[1, 3, H, W]`` tensors in [0, 1].
    The callback runs every `log_every` steps (and on the last); every
    `image_every` steps it also gets the current image.

    `style_masks` (one per style, ``[1, 1, h, w]`` in [0, 1] at any resolution,
    None = everywhere) restrict where each style's Gram matrix is measured on
    the output: guided Gram matrices (Gatys et al. 2017), used by region methods.
    `extra_terms` are ``(name, weight, module)`` added to the loss, each called
    with the current image.  `init`: the starting image as a tensor (an earlier
    result, a warped video frame), instead of ``config.init``.
    """
    job = StyleJob(content, styles, config, callback, extra_terms, style_masks, init)
    job.config = _check_job(job)
    if job.config.photoreal_two_stage and job.config.photoreal_weight:  # plain, then regularised (nst.photoreal)
        return stylize_two_stage(content, styles, job.config, callback=callback, log_every=log_every,
                                 image_every=image_every, cache=cache, extra_terms=extra_terms,
                                 style_masks=style_masks, init=init)
    return stylize_batch([job], log_every=log_every, image_every=image_every, cache=cache)[0]


def stylize_two_stage(content, styles: Sequence, config: StyleConfig, *,
                      callback: Callable[[StepInfo], None] | None = None, extra_terms=None, **kwargs) -> StyleResult:
    """Luan et al.'s two stages: a plain transfer for the first half of ``config.steps``, then the
    regularised one (``photoreal_weight``) started from that result for the rest.

    Same number of steps in all as a one-stage run, so the two compare at equal cost.  The
    regulariser is logged (weight 0) in the first stage too (single-scale runs), so the loss history
    shows it fall.
    """
    steps1 = config.steps // 2
    steps2 = config.steps - steps1
    n_styles = len(styles) if config.multi_style == "sequential" and len(styles) > 1 else 1
    content_img = as_image(content, config.size)
    extra = list(extra_terms or [])
    first_cfg = config.replace(photoreal_two_stage=False, photoreal_weight=0.0, steps=steps1)
    # Stage 1 reports the whole run's step count: its own twice, corrected for the full-size steps
    # (coarse-to-fine scales, if any, run in both stages).
    # Log the term (weight 0) in stage 1 too, unless coarse-to-fine scales are set: `stylize` keeps a run
    # with extra terms at one scale.
    watch = [] if config.scales else [("photoreal", 0.0, photoreal_term(content_img, config))]
    first = stylize(content_img, styles, first_cfg,
                    callback=shifted_callback(callback, 0, lambda t1: 2 * t1 + (steps2 - steps1) * n_styles),
                    extra_terms=(extra + watch) or None, **kwargs)
    offset = len(first.history)
    start = first.image
    if config.preserve_color == "luminance":  # the optimised image is grey in this mode
        start = color.gray3(color.luminance(start))
    kwargs["init"] = start
    second_cfg = config.replace(photoreal_two_stage=False, steps=steps2)
    second = stylize(content_img, styles, second_cfg,
                     callback=shifted_callback(callback, offset, lambda t2: offset + t2),
                     extra_terms=extra or None, **kwargs)
    history, timings = chain_runs([first, second], shift_time=True)
    timings["s_per_step"] = (first.timings["s_per_step"] * steps1 + second.timings["s_per_step"] * steps2) / max(
        1, steps1 + steps2)
    info = {**second.info, "steps": len(history), "photoreal_stage1_steps": offset,
            "photoreal_stage1_energy": photoreal_energy(first.image, content_img, config.photoreal_epsilon)}
    return StyleResult(second.image, history, timings, info, config)


# --------------------------------------------------------------------------- a batch of images


@dataclass
class _Sample:
    """A job's state inside `stylize_batch`."""

    job: StyleJob
    config: StyleConfig
    content: torch.Tensor
    styles: list[torch.Tensor]
    blend: list[float]
    cw: dict[str, float]
    sw: dict[str, float]
    generator: torch.Generator
    history: list[dict[str, float]] = field(default_factory=list)
    stages: list[dict[str, object]] = field(default_factory=list)
    current: torch.Tensor | None = None  # input of the next style stage (sequential multi-style)
    x: torch.Tensor | None = None  # result of the last scale
    prev_content: torch.Tensor | None = None
    stage: _Stage | None = None
    loss_fn: PerceptualLoss | None = None
    init: torch.Tensor | None = None


@dataclass
class _RunContext:
    """What the optimisation of one scale of one style stage needs besides the batch itself."""

    net: LossNetwork
    config: StyleConfig  # the settings the batch shares (its first job's)
    cache: TargetCache
    stage: int  # index of the style stage
    total_steps: int  # all scales of all style stages (what StepInfo reports)
    log_every: int
    image_every: int
    start: float  # perf_counter() when the optimisation started (StepInfo.elapsed)
    tiles: "tiling.TilePlan | None" = None


def _check_job(job: StyleJob) -> StyleConfig:
    config = make_config(**job.config) if isinstance(job.config, dict) else (job.config or StyleConfig())
    if not job.styles:
        raise ConfigError("at least one style image is required")
    if config.style_weights is not None and len(config.style_weights) != len(job.styles):
        raise ConfigError(f"style_weights: {len(config.style_weights)} weights for {len(job.styles)} styles")
    masks = job.style_masks
    if masks is not None and len(masks) != len(job.styles):
        raise ConfigError(f"style_masks: {len(masks)} masks for {len(job.styles)} styles")
    if masks is not None and config.multi_style == "sequential" and len(job.styles) > 1:
        raise ConfigError("style_masks need multi_style=blend (all styles in one optimisation)")
    if masks is not None and config.style_loss != "gram":
        raise ConfigError("style_masks (guided Gram matrices) need style_loss=gram")
    return config


def stylize_batch(
    jobs: Sequence[StyleJob],
    *,
    log_every: int = 1,
    image_every: int = 0,
    cache: TargetCache | None = None,
    max_batch_pixels: int | None = None,
) -> list[StyleResult]:
    """Run several optimisations of the same shape as one batch: one forward/backward per step for all.

    Jobs must agree on `batch_key` (network, schedule, optimiser and content size); each keeps its
    own content, styles, loss weights, seed, targets, loss history and callback, and its result is
    the one it would get alone (L-BFGS per sample: `nst.lbfgs.BatchLBFGS`; Adam is elementwise).
    At each scale the batch is cut into chunks of at most `max_batch_pixels` pixels (at least one
    job per chunk): on a CPU, batching pays only for small images; on a GPU it fills the device.
    Timings of a job are its share of its chunks' time; ``info["batch"]`` says how many ran together.
    """
    if not jobs:
        return []
    t0 = time.perf_counter()
    configs = [_check_job(j) for j in jobs]
    config = configs[0]
    cache = cache if cache is not None else DEFAULT_CACHE
    net = loss_network(config)
    samples = [_sample(job, cfg, net) for job, cfg in zip(jobs, configs)]
    _check_batchable(samples)
    plan, schedule, tile_plans = _schedule(samples, config, net)
    if any(tile_plans) and len(samples) > 1:  # a tiled scale optimises one image at a time
        return [stylize_batch([j], log_every=log_every, image_every=image_every, cache=cache)[0] for j in jobs]

    setup_s = time.perf_counter() - t0
    opt_start = time.perf_counter()
    ctx = _RunContext(net, config, cache, 0, sum(n for _, n in schedule) * len(plan), log_every, image_every,
                      opt_start)
    target_s = _optimise_stages(samples, ctx, plan, schedule, tile_plans, max_batch_pixels)
    if net.device.type == "cuda":
        torch.cuda.synchronize(net.device)
    opt_s = (time.perf_counter() - opt_start - target_s) / len(samples)
    shared = {"setup_s": setup_s / len(samples), "targets_s": target_s / len(samples), "optimize_s": opt_s,
              "total_s": (time.perf_counter() - t0) / len(samples)}
    tiled = [list(p.hw) for p in tile_plans if p is not None]
    return [_result(smp, net, shared, len(samples), cache, tiled) for smp in samples]


def _schedule(samples: list[_Sample], config: StyleConfig, net: LossNetwork):
    """The batch's style stages, its scales ((h, w), steps) and each scale's tile plan (None: untiled)."""
    # Style stages: one per style in sequential mode (then every job has as many styles, see `batch_key`),
    # else one with all of a job's styles.
    sequential = config.multi_style == "sequential" and len(samples[0].styles) > 1
    plan = [[i] for i in range(len(samples[0].styles))] if sequential else [None]
    # Coarse-to-fine: the `scales` stages, then the full size.  Caller-made extra terms are built for
    # the full size, so with them the run stays at one scale.
    schedule = pyramid(config, tuple(samples[0].content.shape[-2:]), single=bool(samples[0].job.extra_terms))
    # Memory: a scale whose estimate exceeds the budget (max_memory, else the device's) runs in tiles.
    tile_plans = [tiling.plan_scale(config, hw, n, net.device, net.precision)[0] for hw, n in schedule]
    if any(tile_plans):
        for smp in samples:
            tiling.check_tileable(smp.config, extra_terms=smp.job.extra_terms, style_masks=smp.job.style_masks)
    return plan, schedule, tile_plans


def _optimise_stages(samples: list[_Sample], ctx: _RunContext, plan: list, schedule: list, tile_plans: list,
                     max_batch_pixels: int | None) -> float:
    """Every style stage at every scale, coarse to fine; returns the seconds spent on targets."""
    target_s = 0.0
    for stage_idx, style_ids in enumerate(plan):
        ctx.stage = stage_idx
        for smp in samples:
            smp.x = smp.prev_content = None
        for scale_idx, (hw, n_steps) in enumerate(schedule):
            ctx.tiles = tile_plans[scale_idx]
            target_s += _prepare_scale(samples, ctx, style_ids, hw, scale_idx == len(schedule) - 1)
            _optimise_scale(samples, ctx, hw, n_steps, max_batch_pixels)
        for smp in samples:
            smp.current = _finish(smp.x, smp.stage.chroma_source)
    return target_s


def _sample(job: StyleJob, cfg: StyleConfig, net: LossNetwork) -> _Sample:
    """A job's images at its size, its layer weights and its seeded generator."""
    content_img = as_image(job.content, cfg.size)
    style_imgs = [as_image(s, style_size(content_img, cfg.style_scale)) for s in job.styles]
    try:
        cw = normalised_layer_weights(net.content_layers, cfg.content_layer_weights)
        sw = normalised_layer_weights(net.style_layers, cfg.style_layer_weights)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return _Sample(job, cfg, content_img, style_imgs, list(cfg.style_weights or [1.0] * len(style_imgs)),
                   cw, sw, seed_everything(cfg.seed), current=content_img)


def _check_batchable(samples: list[_Sample]) -> None:
    """Every job must share the first one's `batch_key` and whether it has extra loss terms."""
    first = samples[0]
    key = batch_key(first.config, tuple(first.content.shape[-2:]), len(first.job.styles))
    for i, smp in enumerate(samples):
        if i and (key is None or batch_key(smp.config, tuple(smp.content.shape[-2:]), len(smp.styles)) != key):
            raise ConfigError(f"job {i} cannot share a batch with job 0 (different shape, network, schedule or "
                              "optimiser, or a setting that runs alone)")
    single = bool(first.job.extra_terms)
    if any(bool(s.job.extra_terms) != single for s in samples):
        raise ConfigError("jobs with extra loss terms (one scale) cannot share a batch with jobs without them")


def _prepare_scale(samples: list[_Sample], ctx: _RunContext, style_ids: list[int] | None, hw: tuple[int, int],
                   full: bool) -> float:
    """Every job's targets, loss and starting image at one scale; returns the seconds it took."""
    t = time.perf_counter()
    for smp in samples:
        ids = style_ids if style_ids is not None else list(range(len(smp.styles)))
        _prepare_sample(smp, ctx.stage, ids, hw, full, ctx.net.extractor, ctx.net.content_layers,
                        ctx.net.style_layers, ctx.cache, ctx.net.device, ctx.tiles)
    return time.perf_counter() - t


def _optimise_scale(samples: list[_Sample], ctx: _RunContext, hw: tuple[int, int], n_steps: int,
                    max_batch_pixels: int | None) -> None:
    """One scale's steps for the batch, in chunks of at most `max_batch_pixels`; records each job's stage."""
    per_chunk = len(samples)
    if max_batch_pixels:
        per_chunk = max(1, min(per_chunk, max_batch_pixels // max(1, hw[0] * hw[1])))
    device, tiles = ctx.net.device, ctx.tiles
    for lo in range(0, len(samples), per_chunk):
        chunk = samples[lo: lo + per_chunk]
        t_scale = time.perf_counter()
        out, evals = _run(torch.cat([s.init for s in chunk]).to(device), chunk, n_steps, ctx)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        spent = (time.perf_counter() - t_scale) / len(chunk)
        for b, smp in enumerate(chunk):
            smp.x = out[b: b + 1]
            smp.stages.append({"stage": ctx.stage, "size": list(hw), "steps": n_steps, "evals": evals,
                               "optimize_s": spent, "batch": len(chunk)})
            if tiles is not None:
                smp.stages[-1].update(tiles=tiles.describe(), tile_core=tiles.core, tile_halo=tiles.halo,
                                      estimate_mb=tiles.estimate.peak_bytes / 2**20,
                                      tile_offsets=list(tiles.offsets))
                tiles.offsets.clear()


def _result(smp: _Sample, net: LossNetwork, shared: dict[str, float], batch: int, cache: TargetCache,
            tiled: list[list[int]]) -> StyleResult:
    """A job's result: its image and history, its share of the timings, and what it ran on."""
    # seconds per step at the requested size (the coarse steps are much cheaper)
    full_stages = [st for st in smp.stages if st["size"] == list(smp.content.shape[-2:]) and st["steps"]]
    per_step = (
        sum(st["optimize_s"] for st in full_stages) / sum(st["steps"] for st in full_stages)
        if full_stages else (shared["optimize_s"] / max(1, len(smp.history)) if smp.history else 0.0)
    )
    timings = {**shared, "s_per_step": per_step}
    backbone, device = net.backbone, net.device
    info = {
        "device": str(device),
        "precision": net.precision,
        "backbone": backbone.name,
        "weights_source": backbone.weights_source,
        "pretrained": backbone.pretrained,
        "pooling": backbone.pooling,
        "winograd_layers": len(backbone.fast_convs),
        "content_layers": net.content_layers,
        "style_layers": net.style_layers,
        "content_size": list(smp.content.shape[-2:]),
        "style_sizes": [list(s.shape[-2:]) for s in smp.styles],
        "steps": len(smp.history),
        "stages": smp.stages,
        "batch": batch,
        "cache_hits": cache.hits,
    }
    if device.type == "cuda":
        info["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if tiled:
        info["tiled_scales"] = tiled
    return StyleResult(smp.current.cpu(), smp.history, timings, info, smp.config)


def _prepare_sample(smp: _Sample, stage_idx: int, style_ids: list[int], hw: tuple[int, int], full: bool,
                    extractor: FeatureExtractor, content_layers, style_layers, cache: TargetCache,
                    device: torch.device, tiles: "tiling.TilePlan | None" = None) -> None:
    """A job's inputs, loss and starting image at one scale of one style stage (`tiles`: its tile plan)."""
    config = smp.config
    # Content and styles at this scale: the style keeps its size relative to the content's.
    scaled = smp.current if full else resize(smp.current, hw)
    scaled_styles = [
        smp.styles[i] if full else resize_longest(smp.styles[i], style_size(scaled, config.style_scale))
        for i in style_ids
    ]
    stage = _prepare_stage(scaled, scaled_styles, [smp.blend[i] for i in style_ids], config)
    masks = smp.job.style_masks
    loss_fn = _build_loss(
        stage, extractor, content_layers, style_layers, smp.cw, smp.sw, config, cache, device,
        None if masks is None else [masks[i] for i in style_ids], tiles,
    )
    if full:
        for name, weight, term in smp.job.extra_terms or []:
            loss_fn.add_term(name, weight, term)
    if config.photoreal_weight:  # Luan et al.: Laplacian of the content at the size of the image optimised
        loss_fn.add_term("photoreal", config.photoreal_weight, photoreal_term(stage.content, config))
    if smp.x is None:
        init = _initial_image(config, stage.content, smp.generator, stage_idx, smp.job.init)
    else:  # the coarser result, upsampled
        init = upsample(smp.x, hw)
        if config.scale_detail:  # plus the content's detail that the coarser scale could not hold
            init = (init + stage.content - upsample(smp.prev_content, hw)).clamp(0, 1)
    smp.prev_content = stage.content
    smp.stage, smp.loss_fn, smp.init = stage, loss_fn, init




def _prepare_stage(content: torch.Tensor, styles: list[torch.Tensor], blend: list[float],
                   config: StyleConfig) -> _Stage:
    """Apply colour preservation to the inputs of one optimisation stage."""
    if config.preserve_color == "luminance":
        cy = color.luminance(content)
        grey_styles = [color.gray3(color.match_luminance(color.luminance(s), cy).clamp(0, 1)) for s in styles]
        return _Stage(color.gray3(cy), grey_styles, blend, chroma_source=content)
    if config.preserve_color == "histogram":
        return _Stage(content, [color.match_color(s, content) for s in styles], blend)
    return _Stage(content, styles, blend)


def _build_loss(
    stage, extractor, content_layers, style_layers, cw, sw, config, cache, device, style_masks=None, tiles=None
) -> PerceptualLoss:
    key = extractor.key()
    c = stage.content.to(device)
    if tiles is None:
        content_targets = cache.get(
            ("content", key, tuple(content_layers), tensor_digest(stage.content)),
            lambda: _detach({k: v for k, v in extractor(c).items() if k in content_layers}),
        )
    else:  # the whole image's features, computed tile by tile (nst.tiling)
        content_targets = cache.get(
            ("content-tiled", key, tuple(content_layers), tensor_digest(stage.content)),
            lambda: tiling.tiled_features(extractor, c, tiles, (), content_layers)[1],
        )
    style_targets = []
    for weight, s in zip(stage.blend, stage.styles):
        if tiles is None:
            grams = cache.get(
                (config.style_loss, key, tuple(style_layers), tensor_digest(s)),
                lambda s=s: _style_grams(extractor, s.to(device), style_layers, config.style_loss),
            )
        else:
            grams = cache.get(
                ("gram-tiled", key, tuple(style_layers), tensor_digest(s)),
                lambda s=s: tiling.tiled_features(extractor, s.to(device), tiles, style_layers)[0],
            )
        style_targets.append((weight, grams))
    layer_masks = None
    if style_masks is not None and any(m is not None for m in style_masks):
        shapes = _layer_shapes(extractor, stage.content.to(device), style_layers)
        layer_masks = [
            None if m is None else {k: downsample_mask(m.to(device), shapes[k]) for k in style_layers}
            for m in style_masks
        ]
    return PerceptualLoss(
        content_targets,
        cw,
        style_targets,
        sw,
        content_weight=config.content_weight,
        style_weight=config.style_weight,
        tv_weight=config.tv_weight,
        style_masks=layer_masks,
        style_loss=config.style_loss,
    ).to(device)


@torch.no_grad()
def _layer_shapes(extractor: FeatureExtractor, image: torch.Tensor, layers: list[str]) -> dict[str, tuple[int, int]]:
    feats = extractor(image)
    return {k: tuple(feats[k].shape[-2:]) for k in layers}


def downsample_mask(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """A ``[1, 1, H, W]`` mask averaged down (or resized) to a layer's resolution ``hw``."""
    m = mask.float()
    if m.dim() == 2:
        m = m[None, None]
    if tuple(m.shape[-2:]) == tuple(hw):
        return m
    mode = "area" if m.shape[-2] >= hw[0] and m.shape[-1] >= hw[1] else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return torch.nn.functional.interpolate(m, size=hw, mode=mode, **kwargs).clamp(0, 1)


def _detach(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float() for k, v in d.items()}


@torch.no_grad()
def _style_grams(
    extractor: FeatureExtractor, image: torch.Tensor, layers: list[str], kind: str = "gram"
) -> dict[str, torch.Tensor]:
    feats = extractor(image)
    stat = STYLE_STATISTICS[kind]
    return {k: stat(feats[k]) for k in layers}


def _initial_image(config: StyleConfig, content: torch.Tensor, generator: torch.Generator, stage: int,
                   init: torch.Tensor | None = None) -> torch.Tensor:
    """The first scale's starting image: `init` (a tensor) if given, else ``config.init``; later
    style stages start from the content (the previous stage's output)."""
    if stage > 0 or (init is None and config.init == "content"):
        return content.clone()
    if init is not None:
        return resize(as_image(init), tuple(content.shape[-2:]))
    if config.init == "noise":
        return torch.rand(content.shape, generator=generator)
    path = Path(config.init)
    if not path.exists():
        raise ConfigError(f"init: '{config.init}' is neither content, noise nor an existing image file")
    return resize(load_image(path), tuple(content.shape[-2:]))


def _finish(x: torch.Tensor, chroma_source: torch.Tensor | None) -> torch.Tensor:
    out = x.detach().float().clamp(0, 1).cpu()
    if chroma_source is not None:
        out = color.combine_luminance(out, chroma_source)
    return out


def _optimizer(x: torch.Tensor, config: StyleConfig):
    lr = config.learning_rate
    if config.optimizer == "lbfgs" and config.lbfgs_line_search:  # one job (see `batch_key`)
        return torch.optim.LBFGS([x], lr=lr, max_iter=1, history_size=config.lbfgs_history, tolerance_grad=0.0,
                                 tolerance_change=0.0, line_search_fn="strong_wolfe")
    if config.optimizer == "lbfgs":
        bounds = (0.0, 1.0) if config.lbfgs_clamp else None  # projected steps (issue 14)
        return BatchLBFGS(x, lr=lr, history_size=config.lbfgs_history, bounds=bounds,
                          first_step=config.lbfgs_first_step)
    return torch.optim.Adam([x], lr=lr)


def _closure(x: torch.Tensor, opt, samples: list[_Sample], ctx: _RunContext, evals: list[int],
             last: list[dict[str, torch.Tensor]]) -> Callable[[], torch.Tensor]:
    """The loss and gradient of the batch `x`: each sample's loss is its own module on its slice of one
    batched feature pass, and their sum is differentiated once.  Counts evaluations in ``evals[0]`` and
    keeps the step's first loss terms in `last` (a line search evaluates more points)."""
    extractor = ctx.net.extractor
    if ctx.tiles is not None:  # one image (see stylize_batch): loss and gradient over jittered tiles
        return tiling.make_closure(x, opt, extractor, samples[0].loss_fn, ctx.tiles, evals, last)

    def closure():
        opt.zero_grad()
        feats = extractor(x)
        total = x.new_zeros(())
        terms_all = []
        if len(samples) == 1:
            per_sample = [(x, feats)]
        else:  # split, not sliced: one gradient concatenation per layer instead of B full-size zero-pads
            xs = x.split(1)
            fs = {k: v.split(1) for k, v in feats.items()}
            per_sample = [(xs[b], {k: f[b] for k, f in fs.items()}) for b in range(len(samples))]
        for smp, (xb, fb) in zip(samples, per_sample):
            tb, terms = smp.loss_fn(xb, fb)
            total = total + tb
            terms_all.append(terms)
        total.backward()
        evals[0] += 1
        if not last:
            last.extend({k: v.detach() for k, v in t.items()} for t in terms_all)
        return total

    return closure


def _run(init: torch.Tensor, samples: list[_Sample], steps: int, ctx: _RunContext) -> tuple[torch.Tensor, int]:
    """`steps` optimisation steps of the batch `init` (one image per sample); returns the images
    (the iterate averages with `ema_decay`) and how many times the loss was evaluated.

    Loss values stay on the device until they are flushed (every step on a CPU, every `log_every`
    steps on a GPU), so the loop itself makes no host-device sync of its own.
    """
    config = ctx.config
    x = init.detach().clone().contiguous().requires_grad_(True)
    opt = _optimizer(x, config)
    ema = torch.zeros_like(x.detach()) if config.optimizer == "adam" and config.ema_decay else None
    ema_weight = 0.0  # 1 - decay**t, for the bias correction
    evals = [0]
    last: list[dict[str, torch.Tensor]] = []
    closure = _closure(x, opt, samples, ctx, evals, last)
    offsets = [len(s.history) for s in samples]

    def current() -> torch.Tensor:
        return x if ema is None or not ema_weight else ema / ema_weight

    pending: list[list[tuple[int, dict[str, torch.Tensor], float]]] = [[] for _ in samples]
    for i in range(steps):
        last.clear()
        opt.step(closure)
        if config.optimizer == "lbfgs" and config.lbfgs_line_search and config.lbfgs_clamp:
            with torch.no_grad():  # torch's L-BFGS cannot project its steps: the iterate is clamped after each
                x.clamp_(0, 1)
        if config.optimizer == "adam":
            with torch.no_grad():
                x.clamp_(0, 1)
                if ema is not None:  # bias-corrected EMA of the iterates (crowsonkb's style-transfer)
                    ema.lerp_(x, 1 - config.ema_decay)
                    ema_weight = 1 - (1 - ema_weight) * config.ema_decay
        elapsed = time.perf_counter() - ctx.start
        is_last = i == steps - 1
        for b, smp in enumerate(samples):
            step = offsets[b] + i + 1
            pending[b].append((step, last[b], elapsed))
            if (step % ctx.log_every == 0) or is_last or x.device.type == "cpu":
                _flush(pending[b], smp.history, ctx.stage)
                _report(smp, ctx, step, is_last, lambda b=b: current()[b: b + 1])
    for b, smp in enumerate(samples):
        _flush(pending[b], smp.history, ctx.stage)
    return current().detach(), evals[0]


def _report(smp: _Sample, ctx: _RunContext, step: int, is_last: bool, image: Callable[[], torch.Tensor]) -> None:
    """Call the job's callback on logging steps, with the current image on image steps."""
    cb = smp.job.callback
    if cb is None or not (step % ctx.log_every == 0 or is_last):
        return
    shown = None
    if ctx.image_every and (step % ctx.image_every == 0 or is_last):
        shown = _finish(image(), smp.stage.chroma_source)
    h = smp.history[-1]
    cb(StepInfo(step, ctx.total_steps, ctx.stage, _losses(h), h["time"], shown))


def _flush(pending, history, stage) -> None:
    """Move pending per-step loss tensors to Python floats (one sync), checking for divergence."""
    if not pending:
        return
    names = list(pending[0][1].keys())
    stacked = torch.stack([torch.stack([p[1][n] for n in names]) for p in pending]).float().cpu()
    for (step, _, t), row in zip(pending, stacked.tolist()):
        entry = {"step": float(step), "stage": float(stage), "time": t}
        entry.update(dict(zip(names, row)))
        if not all(math.isfinite(v) for v in row):
            pending.clear()
            raise DivergedError(f"optimisation diverged at step {step}: non-finite loss {entry}")
        history.append(entry)
    pending.clear()


def _losses(entry: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in entry.items() if k not in ("step", "stage", "time")}
