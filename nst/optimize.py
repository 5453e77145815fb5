"""Optimisation-based style transfer (Gatys et al. 2015/2016): `stylize(content, styles, config)`.

One feature pass per step collects every layer the losses need; style Gram
targets and content features come from a cache keyed by image content, so a
worker running many grid cells computes each target once.  Progress reaches
the caller through a callback; nothing here knows about Prefect or MLflow.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import backbones, color
from .config import StyleConfig, make_config
from .errors import ConfigError, DivergedError
from .features import DEFAULT_CACHE, FeatureExtractor, TargetCache, tensor_digest
from .images import load_image, resize, resize_longest
from .losses import STYLE_STATISTICS, PerceptualLoss, gram_matrix, normalised_layer_weights
from .runtime import resolve_device, resolve_precision, seed_everything

ImageLike = "torch.Tensor | str | os.PathLike"


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
    info: dict[str, object]
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


def upsample(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """A coarse result resized (bicubic) to the next scale, as its starting image."""
    return torch.nn.functional.interpolate(x.detach().float(), size=hw, mode="bicubic", align_corners=False).clamp(0, 1)


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
) -> StyleResult:
    """Stylise `content` with one or several `styles` and return the image, loss history and timings.

    `content` and `styles` are file paths or ``[1, 3, H, W]`` tensors in [0, 1].
    The callback runs every `log_every` steps (and on the last); every
    `image_every` steps it also gets the current image.

    `style_masks` (one per style, ``[1, 1, h, w]`` in [0, 1] at any resolution,
    None = everywhere) restrict where each style's Gram matrix is measured on
    the output: guided Gram matrices (Gatys et al. 2017), used by region methods.
    `extra_terms` are ``(name, weight, module)`` added to the loss, each called
    with the current image.
    """
    if isinstance(config, dict):
        config = make_config(**config)
    config = config or StyleConfig()
    if not styles:
        raise ConfigError("at least one style image is required")
    if config.photoreal_two_stage and config.photoreal_weight:  # plain, then regularised (nst.photoreal)
        from .photoreal import stylize_two_stage

        return stylize_two_stage(stylize, content, styles, config, callback=callback, log_every=log_every,
                                 image_every=image_every, cache=cache, extra_terms=extra_terms,
                                 style_masks=style_masks)
    if config.style_weights is not None and len(config.style_weights) != len(styles):
        raise ConfigError(f"style_weights: {len(config.style_weights)} weights for {len(styles)} styles")
    if style_masks is not None and len(style_masks) != len(styles):
        raise ConfigError(f"style_masks: {len(style_masks)} masks for {len(styles)} styles")
    if style_masks is not None and config.multi_style == "sequential" and len(styles) > 1:
        raise ConfigError("style_masks need multi_style=blend (all styles in one optimisation)")
    if style_masks is not None and config.style_loss != "gram":
        raise ConfigError("style_masks (guided Gram matrices) need style_loss=gram")
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    generator = seed_everything(config.seed)
    cache = cache if cache is not None else DEFAULT_CACHE

    content_img = as_image(content, config.size)
    style_imgs = [as_image(s, style_size(content_img, config.style_scale)) for s in styles]
    blend = list(config.style_weights or [1.0] * len(style_imgs))

    backbone = backbones.get_backbone(config.backbone, config.pooling, config.weights, device)
    content_layers = list(config.content_layers or backbone.default_content_layers)
    style_layers = list(config.style_layers or backbone.default_style_layers)
    backbone.check_layers(content_layers, "content layer")
    backbone.check_layers(style_layers, "style layer")
    try:
        cw = normalised_layer_weights(content_layers, config.content_layer_weights)
        sw = normalised_layer_weights(style_layers, config.style_layer_weights)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    extractor = FeatureExtractor(backbone, content_layers + style_layers, precision)

    if config.multi_style == "sequential" and len(style_imgs) > 1:
        plan = [[i] for i in range(len(style_imgs))]
    else:
        plan = [list(range(len(style_imgs)))]
    # Coarse-to-fine: the `scales` stages, then the full size.  Caller-made extra terms are built for
    # the full size, so with them the run stays at one scale.
    schedule = pyramid(config, tuple(content_img.shape[-2:]), single=bool(extra_terms))
    total_steps = sum(n for _, n in schedule) * len(plan)

    history: list[dict[str, float]] = []
    stages_info: list[dict[str, object]] = []
    current = content_img
    setup_s = time.perf_counter() - t0
    opt_start = time.perf_counter()
    target_s = 0.0
    for stage_idx, style_ids in enumerate(plan):
        x = None
        prev_content = None
        for scale_idx, (hw, n_steps) in enumerate(schedule):
            full = scale_idx == len(schedule) - 1
            t_targets = time.perf_counter()
            # Content and styles at this scale: the style keeps its size relative to the content's.
            scaled = current if full else resize(current, hw)
            scaled_styles = [
                style_imgs[i] if full else resize_longest(style_imgs[i], style_size(scaled, config.style_scale))
                for i in style_ids
            ]
            stage = _prepare_stage(scaled, scaled_styles, [blend[i] for i in style_ids], config)
            loss_fn = _build_loss(
                stage, extractor, content_layers, style_layers, cw, sw, config, cache, device,
                None if style_masks is None else [style_masks[i] for i in style_ids],
            )
            if full:
                for name, weight, term in extra_terms or []:
                    loss_fn.add_term(name, weight, term)
            if config.photoreal_weight:  # Luan et al.: Laplacian of the content at the size of the image optimised
                from .photoreal import photoreal_term

                loss_fn.add_term("photoreal", config.photoreal_weight, photoreal_term(stage.content, config))
            if x is None:
                init = _initial_image(config, stage.content, generator, stage_idx)
            else:  # the coarser result, upsampled
                init = upsample(x, hw)
                if config.scale_detail:  # plus the content's detail that the coarser scale could not hold
                    init = (init + stage.content - upsample(prev_content, hw)).clamp(0, 1)
            prev_content = stage.content
            target_s += time.perf_counter() - t_targets
            t_scale = time.perf_counter()
            evals = [0]
            x = _run(
                init.to(device),
                extractor,
                loss_fn,
                config,
                stage_idx,
                len(history),
                total_steps,
                history,
                callback,
                log_every,
                image_every,
                opt_start,
                stage.chroma_source,
                n_steps,
                evals,
            )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stages_info.append({"stage": stage_idx, "size": list(hw), "steps": n_steps, "evals": evals[0],
                                "optimize_s": time.perf_counter() - t_scale})
        current = _finish(x, stage.chroma_source)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    opt_s = time.perf_counter() - opt_start - target_s
    steps_done = max(1, len(history))
    # seconds per step at the requested size (the coarse steps are much cheaper)
    full_stages = [st for st in stages_info if st["size"] == list(content_img.shape[-2:]) and st["steps"]]
    per_step = (
        sum(st["optimize_s"] for st in full_stages) / sum(st["steps"] for st in full_stages)
        if full_stages else (opt_s / steps_done if history else 0.0)
    )
    timings = {
        "setup_s": setup_s,
        "targets_s": target_s,
        "optimize_s": opt_s,
        "total_s": time.perf_counter() - t0,
        "s_per_step": per_step,
    }
    info = {
        "device": str(device),
        "precision": precision,
        "backbone": backbone.name,
        "weights_source": backbone.weights_source,
        "pretrained": backbone.pretrained,
        "pooling": backbone.pooling,
        "winograd_layers": len(backbone.fast_convs),
        "content_layers": content_layers,
        "style_layers": style_layers,
        "content_size": list(content_img.shape[-2:]),
        "style_sizes": [list(s.shape[-2:]) for s in style_imgs],
        "steps": len(history),
        "stages": stages_info,
        "cache_hits": cache.hits,
    }
    if device.type == "cuda":
        info["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return StyleResult(current.cpu(), history, timings, info, config)


def _prepare_stage(content: torch.Tensor, styles: list[torch.Tensor], blend: list[float], config: StyleConfig) -> _Stage:
    """Apply colour preservation to the inputs of one optimisation stage."""
    if config.preserve_color == "luminance":
        cy = color.luminance(content)
        grey_styles = [color.gray3(color.match_luminance(color.luminance(s), cy).clamp(0, 1)) for s in styles]
        return _Stage(color.gray3(cy), grey_styles, blend, chroma_source=content)
    if config.preserve_color == "histogram":
        return _Stage(content, [color.match_color(s, content) for s in styles], blend)
    return _Stage(content, styles, blend)


def _build_loss(
    stage, extractor, content_layers, style_layers, cw, sw, config, cache, device, style_masks=None
) -> PerceptualLoss:
    key = extractor.key()
    c = stage.content.to(device)
    content_targets = cache.get(
        ("content", key, tuple(content_layers), tensor_digest(stage.content)),
        lambda: _detach({k: v for k, v in extractor(c).items() if k in content_layers}),
    )
    style_targets = []
    for weight, s in zip(stage.blend, stage.styles):
        grams = cache.get(
            (config.style_loss, key, tuple(style_layers), tensor_digest(s)),
            lambda s=s: _style_grams(extractor, s.to(device), style_layers, config.style_loss),
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


def _initial_image(config: StyleConfig, content: torch.Tensor, generator: torch.Generator, stage: int) -> torch.Tensor:
    if stage > 0 or config.init == "content":
        return content.clone()
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


def _run(
    init: torch.Tensor,
    extractor: FeatureExtractor,
    loss_fn: PerceptualLoss,
    config: StyleConfig,
    stage: int,
    step_offset: int,
    total_steps: int,
    history: list[dict[str, float]],
    callback,
    log_every: int,
    image_every: int,
    start: float,
    chroma_source: torch.Tensor | None,
    steps: int | None = None,
    evals: list[int] | None = None,
) -> torch.Tensor:
    """`steps` optimisation steps from `init`; returns the image (the iterate average with `ema_decay`).

    Loss values stay on the device until they are flushed (every step on a CPU, every `log_every`
    steps on a GPU), so the loop itself makes no host-device synchronisation of its own.
    """
    steps = config.steps if steps is None else steps
    evals = evals if evals is not None else [0]
    x = init.detach().clone().contiguous().requires_grad_(True)  # L-BFGS needs a flat view
    lr = config.learning_rate
    if config.optimizer == "lbfgs":
        opt = torch.optim.LBFGS(
            [x], lr=lr, max_iter=1, history_size=config.lbfgs_history, tolerance_grad=0.0, tolerance_change=0.0,
            line_search_fn="strong_wolfe" if config.lbfgs_line_search else None,
        )
    else:
        opt = torch.optim.Adam([x], lr=lr)
    ema = torch.zeros_like(x.detach()) if config.optimizer == "adam" and config.ema_decay else None
    ema_weight = [0.0]  # 1 - decay**t, for the bias correction
    last: dict[str, torch.Tensor] = {}

    def closure():
        opt.zero_grad(set_to_none=True)
        total, terms = loss_fn(x, extractor(x))
        total.backward()
        evals[0] += 1
        if not last:  # the losses at the start of the step (a line search evaluates more points)
            last.update({k: v.detach() for k, v in terms.items()})
        return total

    def current() -> torch.Tensor:
        return x if ema is None or not ema_weight[0] else ema / ema_weight[0]

    pending: list[tuple[int, dict[str, torch.Tensor], float]] = []
    for i in range(steps):
        last.clear()
        opt.step(closure)
        if config.optimizer == "adam":
            with torch.no_grad():
                x.clamp_(0, 1)
                if ema is not None:  # bias-corrected EMA of the iterates (crowsonkb's style-transfer)
                    ema.lerp_(x, 1 - config.ema_decay)
                    ema_weight[0] = 1 - (1 - ema_weight[0]) * config.ema_decay
        step = step_offset + i + 1
        pending.append((step, dict(last), time.perf_counter() - start))
        is_last = i == steps - 1
        if (step % log_every == 0) or is_last or x.device.type == "cpu":
            _flush(pending, history, stage)
            if callback is not None and (step % log_every == 0 or is_last):
                image = None
                if image_every and (step % image_every == 0 or is_last):
                    image = _finish(current(), chroma_source)
                callback(StepInfo(step, total_steps, stage, _losses(history[-1]), history[-1]["time"], image))
    _flush(pending, history, stage)
    return current().detach()


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
