"""Localized style transfer: a region map plus ``{region: style or "keep"}`` -> one stylised image.

Five methods, each selectable by name (`METHODS`; each composed by a function of `COMPOSERS`),
all built on `nst.optimize.stylize`:

* ``stitched`` — one style image with the content's layout, each region filled
  with its style's texture, then one ordinary transfer (fast; styles only
  partly localised) [seed 000];
* ``per-region-composite`` — the whole image stylised once per style,
  composited by the region map, optionally feathered (clean; one run per style)
  [seed 000; seed 003's "straightforward approach"];
* ``guided-gram`` — one optimisation whose style loss is a Gram loss per region
  on masked features (Gatys et al. 2017 spatial control; seed 003's one-image
  approach);
* ``locality`` — guided-gram whose masks are weighted by each pixel's distance
  to its region's border (computed once), so features whose receptive field
  straddles the border are not pulled by both styles (seed 003, 3.3);
* ``portion`` — style only the selected region(s); the rest stays the content,
  joined by a soft blend of a given width (seed 002, "portion selection").

A region assigned ``keep`` stays the content in every method.
`leakage` measures how much each region looks like the *other* regions' styles
on the fixed evaluator's network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import StyleConfig, make_config
from .errors import ConfigError
from .evaluate import EVAL_STYLE_LAYERS, Evaluator, shared_evaluator
from .features import TargetCache, tensor_digest
from .images import resize, resize_longest
from .losses import gram_matrix, relative_error
from .optimize import (
    StepInfo,
    StyleResult,
    as_image,
    chain_runs,
    downsample_mask,
    run_steps,
    shifted_callback,
    style_size,
    stylize,
)
from .segment import RegionError, RegionMap

KEEP = "keep"
#: Key of a style that applies to every region not named explicitly.
DEFAULT_KEY = "*"


@dataclass
class RegionResult(StyleResult):
    """A `StyleResult` plus the region map (at the output's size) it was made with."""

    region_map: RegionMap | None = None


def default_band(hw: Sequence[int]) -> int:
    """Border band (px) of the locality weighting: about the receptive-field step of deep VGG layers."""
    return max(2, round(max(hw) / 24))


def default_blend(hw: Sequence[int]) -> int:
    """Soft blend width (px) of `portion`: 3% of the longest side."""
    return max(2, round(0.03 * max(hw)))


# --------------------------------------------------------------------------- assignment


def assign_styles(
    region_map: RegionMap, region_styles: Mapping[str, object], method: str = "guided-gram"
) -> list[object | None]:
    """The style (path or tensor) of every label, None for ``keep`` and for empty regions.

    Keys are region names (or their label values); ``"*"`` is the style of every
    region not named.  A non-empty region without a style is an error, except
    in ``portion`` where it stays the content.
    """
    per_label: list[object | None] = [None] * len(region_map.names)
    named: set[int] = set()
    for key, style in region_styles.items():
        if key == DEFAULT_KEY:
            continue
        idx = region_map.index(str(key))
        named.add(idx)
        per_label[idx] = None if _is_keep(style) else style
    default = region_styles.get(DEFAULT_KEY)
    for idx, name in enumerate(region_map.names):
        if idx in named or region_map.area(idx) == 0:
            continue
        if default is not None:
            per_label[idx] = None if _is_keep(default) else default
        elif method != "portion":
            raise RegionError(
                f"region '{name}' (label {region_map.values[idx]}, {region_map.area(idx):.0%} of the image) "
                f"has no style: give --style {name}=IMAGE or {name}=keep"
            )
    if all(s is None for s in per_label):
        raise RegionError("every region is 'keep' or empty: nothing to stylise")
    return per_label


def _is_keep(style: object) -> bool:
    return isinstance(style, str) and style == KEEP


def _style_key(style: object) -> str:
    if isinstance(style, torch.Tensor):
        return "tensor:" + tensor_digest(style)
    return str(Path(style).resolve())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- masks


def soft_masks(labels: torch.Tensor, n: int, feather: float = 0.0) -> torch.Tensor:
    """``[n, H, W]`` per-label weights summing to 1 at each pixel; borders blurred over ~`feather` px."""
    one_hot = F.one_hot(labels.long(), n).permute(2, 0, 1).float()
    if feather <= 0:
        return one_hot
    from scipy.ndimage import gaussian_filter

    sigma = feather / 2.0
    blurred = torch.from_numpy(
        np.stack([gaussian_filter(m, sigma, mode="nearest") for m in one_hot.numpy()])
    ).float()
    return blurred / blurred.sum(0, keepdim=True).clamp_min(1e-6)


def border_weights(mask: torch.Tensor, band: float) -> torch.Tensor:
    """Seed 003's locality weighting: each pixel's distance to the nearest pixel outside its
    region (Euclidean, computed once), ramped to 1 over `band` px.  ``[1,1,H,W]`` in, same out."""
    from scipy.ndimage import distance_transform_edt

    m = mask[0, 0].numpy() > 0.5
    if m.all():
        return mask.clone()
    d = distance_transform_edt(m)
    return torch.from_numpy(np.clip(d / max(band, 1e-6), 0.0, 1.0)).float()[None, None]


def cover(image: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """`image` scaled to cover ``(h, w)`` and centre-cropped to it (a texture filling the frame)."""
    h, w = image.shape[-2:]
    s = max(hw[0] / h, hw[1] / w)
    nh, nw = max(hw[0], round(h * s)), max(hw[1], round(w * s))
    big = resize(image, (nh, nw))
    top, left = (nh - hw[0]) // 2, (nw - hw[1]) // 2
    return big[..., top : top + hw[0], left : left + hw[1]]


def stitched_style(content: torch.Tensor, labels: torch.Tensor,
                   per_label: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """One style image with the content's layout: each region filled with its style's texture
    (content pixels where the region is ``keep``)."""
    hw = tuple(content.shape[-2:])
    out = content.clone()
    for idx, style in enumerate(per_label):
        if style is None:
            continue
        m = (labels == idx)[None, None].expand_as(out)
        out = torch.where(m, cover(style, hw), out)
    return out


# --------------------------------------------------------------------------- entry point


@dataclass
class RegionPlan:
    """A region transfer's inputs, prepared once for every method: the content at its size, the region
    map at that size, each label's style, and the styles grouped (regions sharing a style form one
    group with the union of their masks)."""

    content: torch.Tensor
    region_map: RegionMap
    sources: list[object | None]  # each label's style as given (path or tensor), None for keep / empty
    per_label: list[torch.Tensor | None]  # each label's style image at the style size
    groups: dict[str, tuple[torch.Tensor, torch.Tensor]]  # style key -> (style image, union of its masks)
    keep: torch.Tensor  # [1, 1, H, W]: 1 where the content stays
    feather: float
    band: float | None
    config: StyleConfig

    @property
    def styles(self) -> list[torch.Tensor]:
        return [g[0] for g in self.groups.values()]

    @property
    def masks(self) -> list[torch.Tensor]:
        return [g[1] for g in self.groups.values()]


#: ``run(styles, style_masks=None, image=None, cfg=None) -> image``: one optimisation of a region method.
RunFn = Callable[..., torch.Tensor]


def _stitched(plan: RegionPlan, run: RunFn) -> torch.Tensor:
    return run([stitched_style(plan.content, plan.region_map.labels, plan.per_label)])


def _per_region_composite(plan: RegionPlan, run: RunFn) -> torch.Tensor:
    styles = plan.styles
    outs = [run([s]) for s in styles]
    group_of_label = torch.full((len(plan.per_label),), len(styles), dtype=torch.long)  # last = content
    for gi, k in enumerate(plan.groups):
        for idx, s in enumerate(plan.sources):
            if plan.per_label[idx] is not None and _style_key(s) == k:
                group_of_label[idx] = gi
    w = soft_masks(group_of_label[plan.region_map.labels], len(styles) + 1, plan.feather)
    stack = torch.cat([*outs, plan.content], 0)  # [G+1, 3, H, W]
    return (w[:, None] * stack).sum(0, keepdim=True)


def _guided_gram(plan: RegionPlan, run: RunFn) -> torch.Tensor:
    return run(plan.styles, plan.masks)


def _locality(plan: RegionPlan, run: RunFn) -> torch.Tensor:
    b = plan.band if plan.band is not None else default_band(plan.content.shape[-2:])
    return run(plan.styles, [border_weights(m, b) for m in plan.masks])


def _portions(plan: RegionPlan, run: RunFn) -> torch.Tensor:
    out = plan.content.clone()
    for style, mask in zip(plan.styles, plan.masks):
        out = _portion(out, plan.content, style, mask, plan.config, plan.feather, run)
    return out


#: How each method makes its image from the prepared inputs (the methods themselves: `nst.methods`).
COMPOSERS: dict[str, Callable[[RegionPlan, RunFn], torch.Tensor]] = {
    "stitched": _stitched,
    "per-region-composite": _per_region_composite,
    "guided-gram": _guided_gram,
    "locality": _locality,
    "portion": _portions,
}
#: The region methods, by name (each one an entry of `nst.methods.METHODS` too).
METHODS = tuple(COMPOSERS)
#: Methods that run one optimisation per style (their progress counts every run).
PER_STYLE = ("per-region-composite", "portion")
#: Methods that optimise the whole image, so `keep` regions are blended back afterwards.
KEEP_AFTER = ("stitched", "guided-gram", "locality")


def plan_regions(content, region_map: RegionMap, region_styles: Mapping[str, object], method: str,
                 config: StyleConfig, feather: float | None = None, band: float | None = None) -> RegionPlan:
    """Load the content and every style once, resize the map, group the regions by style."""
    content_img = as_image(content, config.size)
    hw = tuple(content_img.shape[-2:])
    rm = region_map.resized(hw)
    sources = assign_styles(rm, region_styles, method)
    s_size = style_size(content_img, config.style_scale)
    loaded: dict[str, torch.Tensor] = {}
    per_label: list[torch.Tensor | None] = []
    for s in sources:
        if s is None:
            per_label.append(None)
            continue
        k = _style_key(s)
        if k not in loaded:
            loaded[k] = as_image(s, s_size)
        per_label.append(loaded[k])
    groups: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for idx, s in enumerate(sources):
        if per_label[idx] is None:
            continue
        k = _style_key(s)
        style, mask = groups.get(k, (per_label[idx], torch.zeros(1, 1, *hw)))
        groups[k] = (style, torch.maximum(mask, rm.mask(idx)))
    keep = torch.tensor([s is None for s in per_label])[rm.labels].float()[None, None]
    if feather is None:
        feather = default_blend(hw) if method == "portion" else 0.0
    return RegionPlan(content_img, rm, sources, per_label, groups, keep, feather, band, config)


def stylize_regions(
    content,
    region_map: RegionMap,
    region_styles: Mapping[str, object],
    method: str = "guided-gram",
    config: StyleConfig | dict | None = None,
    *,
    feather: float | None = None,
    band: float | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    log_every: int = 1,
    image_every: int = 0,
    cache: TargetCache | None = None,
) -> RegionResult:
    """Stylise `content` region by region; `region_styles` maps region names to style images or "keep".

    `feather`: soft border width in px (composite and keep borders; `portion`'s
    blend width, default 3% of the image).  `band`: locality ramp width in px.
    The returned history runs over all optimisations (``per-region-composite``
    runs one per style).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown region method '{method}'; choose one of: {', '.join(METHODS)}")
    if isinstance(config, dict):
        config = make_config(**config)
    config = (config or StyleConfig()).replace(style_weights=None, multi_style="blend")
    t0 = time.perf_counter()
    plan = plan_regions(content, region_map, region_styles, method, config, feather, band)
    runs: list[StyleResult] = []
    steps_per_run = run_steps(config, tuple(plan.content.shape[-2:]))  # every scale of a coarse-to-fine run
    total = steps_per_run * (len(plan.groups) if method in PER_STYLE else 1)

    def run(style_list, style_masks=None, image=None, cfg=None) -> torch.Tensor:
        cb = shifted_callback(callback, len(runs) * steps_per_run, lambda _: total)
        r = stylize(plan.content if image is None else image, style_list, cfg or config, callback=cb,
                    log_every=log_every, image_every=image_every, cache=cache, style_masks=style_masks)
        runs.append(r)
        return r.image

    out = COMPOSERS[method](plan, run)
    if method in KEEP_AFTER and bool(plan.keep.any()):
        a = plan.keep if plan.feather <= 0 else soft_masks(plan.keep[0, 0].long(), 2, plan.feather)[1][None, None]
        out = out * (1 - a) + plan.content * a
    return _region_result(out.clamp(0, 1), plan, method, runs, steps_per_run, time.perf_counter() - t0)


def _region_result(out: torch.Tensor, plan: RegionPlan, method: str, runs: list[StyleResult], steps_per_run: int,
                   wall: float) -> RegionResult:
    """The runs chained into one history and timings, and what the result was made of."""
    history, timings = chain_runs(runs, [i * steps_per_run for i in range(len(runs))], stage_per_run=True)
    timings["total_s"] = wall
    timings["s_per_step"] = timings["optimize_s"] / max(1, len(history))
    rm = plan.region_map
    info = dict(runs[-1].info)
    info.update(
        method=method,
        runs=len(runs),
        steps=len(history),
        regions=list(rm.names),
        region_source=rm.source,
        region_areas={n: rm.area(i) for i, n in enumerate(rm.names)},
        region_styles={n: _describe(plan.sources[i], rm.area(i)) for i, n in enumerate(rm.names)},
        feather=float(plan.feather),
    )
    if method == "locality":
        info["band"] = float(plan.band if plan.band is not None else default_band(plan.content.shape[-2:]))
    return RegionResult(out, history, timings, info, plan.config, region_map=rm)


def _portion(out, content, style, mask, config, blend, run) -> torch.Tensor:
    """Stylise only the bounding box of `mask` (plus a margin), measuring the style inside the
    mask, and blend it into `out` over `blend` px; the work scales with the region's size."""
    h, w = mask.shape[-2:]
    ys, xs = torch.nonzero(mask[0, 0] > 0.5, as_tuple=True)
    margin = int(round(blend)) + max(4, round(max(h, w) / 32))
    top, bottom = max(0, int(ys.min()) - margin), min(h, int(ys.max()) + 1 + margin)
    left, right = max(0, int(xs.min()) - margin), min(w, int(xs.max()) + 1 + margin)
    crop = content[..., top:bottom, left:right]
    side = max(crop.shape[-2:])
    # Same pixel scale as a whole-image run: the crop at its own size, the style scaled to the image.
    cfg = config.replace(size=side, style_scale=min(8.0, config.style_scale * max(h, w) / side))
    styled = run([style], [mask[..., top:bottom, left:right]], image=crop, cfg=cfg)
    styled = resize(styled, tuple(crop.shape[-2:]))
    full = out.clone()
    full[..., top:bottom, left:right] = styled
    a = mask if blend <= 0 else soft_masks((mask[0, 0] > 0.5).long(), 2, blend)[1][None, None]
    return out * (1 - a) + full * a


def _describe(style: object, area: float) -> str:
    if area == 0:
        return "empty"
    if style is None:
        return KEEP
    return "tensor" if isinstance(style, torch.Tensor) else Path(style).name  # type: ignore[arg-type]


# --------------------------------------------------------------------------- leakage

@torch.no_grad()
def masked_style_distance(
    output: torch.Tensor, style: torch.Tensor, mask: torch.Tensor, evaluator: Evaluator | None = None
) -> float:
    """The evaluator's style distance measured only inside `mask` (guided Gram of the output
    against the style's plain Gram), on the evaluator's fixed network, layers and size."""
    ev = evaluator or shared_evaluator()
    out = resize_longest(output.float().cpu(), ev.resolution)
    m = F.interpolate(mask.float().cpu(), size=tuple(out.shape[-2:]), mode="bilinear", align_corners=False)
    fo = {k: v.float() for k, v in ev.extractor(out.to(ev.device)).items()}
    s = resize_longest(style.float().cpu(), ev.resolution)
    gs = ev.cache.get(
        ("gram", tensor_digest(s)),
        lambda: {k: gram_matrix(v.float()) for k, v in ev.extractor(s.to(ev.device)).items() if k in EVAL_STYLE_LAYERS},
    )
    total = 0.0
    for k in EVAL_STYLE_LAYERS:
        lm = downsample_mask(m.to(ev.device), tuple(fo[k].shape[-2:]))
        total += float(relative_error(gram_matrix(fo[k], lm), gs[k]))
    return total / len(EVAL_STYLE_LAYERS)


def leakage(
    output: torch.Tensor,
    region_map: RegionMap,
    region_styles: Mapping[str, object],
    evaluator: Evaluator | None = None,
) -> dict[str, object]:
    """How much each styled region looks like its own style versus the other regions' styles.

    For every region with a style: ``own`` = masked style distance to its style,
    ``other`` = mean distance to the other regions' styles.  ``ratio`` =
    mean own / mean other: below 1 the styles stayed in their regions; the
    lower, the less leakage.  Needs at least two different styles.
    """
    rm = region_map.resized(tuple(output.shape[-2:]), "output")
    per_label_src = assign_styles(rm, region_styles, "portion")
    keys = {idx: _style_key(s) for idx, s in enumerate(per_label_src) if s is not None}
    imgs = {k: as_image(per_label_src[i]) for i, k in keys.items()}
    if len(set(keys.values())) < 2:
        raise RegionError("leakage needs at least two regions with different styles")
    regions: dict[str, dict[str, float]] = {}
    for idx, k in keys.items():
        m = rm.mask(idx)
        own = masked_style_distance(output, imgs[k], m, evaluator)
        others = [masked_style_distance(output, imgs[o], m, evaluator) for o in set(keys.values()) if o != k]
        regions[rm.names[idx]] = {"own": own, "other": sum(others) / len(others), "area": rm.area(idx)}
    own = sum(r["own"] for r in regions.values()) / len(regions)
    other = sum(r["other"] for r in regions.values()) / len(regions)
    return {"regions": regions, "own": own, "other": other, "ratio": own / other if other else float("nan")}
