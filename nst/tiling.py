"""Print-size output: tiled optimisation in bounded memory, and the memory estimate that decides it.

The optimiser state is the whole image (``[1, 3, H, W]``: small); only the network's forward and
backward are cut into overlapping tiles.  One evaluation of the loss and its gradient (the closure
L-BFGS or Adam calls, so both work unchanged) is **two passes** over the tiles:

1. *statistics* (no grad): every tile runs forward and adds the Gram sums of the feature positions
   it **owns** to whole-image accumulators (fp32, `nst.losses.gram_matrix`), giving the Gram
   matrices of the whole current image.  The style loss (`relative_error` against the same
   `StyleLoss` targets as untiled) and its gradient ``dL/dG`` w.r.t. those global Gram matrices are
   computed from them once.
2. *gradient*: every tile runs forward again, with grad, and backpropagates the surrogate
   ``sum_l <dL/dG_l, G_l(owned positions)> + content(owned positions)``, whose gradient is exactly
   that tile's share of the whole-image loss gradient (the Gram matrix is a sum over positions, so
   the loss depends on a position only through ``dL/dG``).  The tiles' input gradients are added
   into the image's gradient.

Why this scheme and not "accumulate Gram statistics with grad" or a per-tile Gram loss: a per-tile
Gram loss matches each tile's statistics to the whole style (a different, local objective: the
known source of tile seams and of style that repeats per tile); keeping every tile's graph alive
to backpropagate a global Gram loss needs the memory tiling exists to avoid.  The two-pass scheme
costs one extra forward per tile (about +1/3 of a step) and is **exact**, not near-exact:

* a tile is its owned *core* plus a *halo* at least as wide as the distance over which zero padding
  at a tile edge corrupts the deepest layer used (`geometry`: 80 px for VGG19 to relu5_1), so the
  features of owned positions equal the whole image's (the halo's own features are computed and
  dropped);
* tile origins are multiples of the network's total stride (16 for VGG to relu5_1), so pooling
  windows fall where they fall on the whole image, and owned positions partition every layer.

The gradient therefore equals the untiled gradient up to float summation order (the test measures
it), at any tile size.  On top of that the tile grid is shifted by a random offset (a multiple of
the stride, from a generator seeded by the config's seed) at every evaluation, so whatever float
or halo error there is never sits at the same place twice: no seam can build up.

Content detail of the coarse-to-fine schedule (``scale_detail``) needs nothing special: a scale's
starting image is built on the whole image (upsampled coarse result plus the content's missing
detail) before tiling, and content targets of a tiled scale are the whole content image's features
at that scale, computed tile by tile (as are the style Gram targets), so a tiled scale optimises
the same objective as an untiled one.

Memory: `estimate` traces the network once on the meta device (no weights, no memory) at the size
of interest, in the run's precision (bf16: half-size activations, int64 pool indices), and adds what
autograd saves (``saved_tensors_hooks``, deduplicated by storage; under autocast also the half-precision
weight copies the convolutions save), a multiple of the largest activation for the transients, the
whole-image state (image, gradient, L-BFGS history, targets) and the process's fixed cost (torch
runtime and weights), calibrated against measured peaks (``benchmarks/bench_tiling.py --memory``).
On a CPU every tile ends with `release_memory` (glibc ``malloc_trim``): without it the heap keeps the
free pages of earlier tiles and the peak RSS of a tiled run grows past the estimate.  `plan_scale`
tiles a scale when that estimate exceeds ``(1 - PLAN_MARGIN) * config.max_memory`` (or, without one,
of the device's memory), choosing the largest tile core that fits, and refuses with the numbers when
even the smallest cannot.

Not tiled (a `ConfigError` says so when the size needs tiling): caller-made extra terms and the
photorealism term (whole-image operators), guided Gram matrices (region masks) and the
mean-covariance style loss (its centred statistics are not a plain sum over positions).
"""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass, field

import torch

from . import backbones
from .errors import ConfigError
from .losses import gram_matrix, relative_error

#: Smallest tile core, in multiples of the network's total stride.
MIN_CORE_STRIDES = 2
#: Share of the device's memory a run may plan to use when no ``max_memory`` is given.
DEVICE_MEMORY_SHARE = 0.9
#: Process cost besides the tensors the estimate counts (torch runtime, libraries, allocator slack),
#: and the peak of loading the Caffe weights (dequantisation), which small runs never exceed.
#: CUDA counts allocated memory only (``max_memory_allocated``): no runtime, no load peak.
#: Transient memory at the peak, in units of the largest activation of a tile *in the run's precision*:
#: the conv output next to its ReLU in the forward, the gradient pair and oneDNN's scratch in the
#: backward; under bf16 also the fp32 copy `gram_matrix` makes of a half-precision feature map (two
#: bf16 units by itself, but not alive at the backward's peak).
#: The three were fitted together (least squares) to the peak RSS of 12 fresh processes, 256-1536 px,
#: fp32 and bf16, untiled and tiled (`benchmarks/bench_tiling.py --memory`; 2-core Zen 5 EPYC, one
#: thread, torch 2.14 CPU, glibc malloc; residuals -0.06..+0.05 GB, estimate/measured 0.96-1.05:
#: docs/print-size.md).  fp16 (CUDA only) takes bf16's multiple: the same sizes, not measured.
CPU_RUNTIME_BYTES = 835 * 2**20
CPU_LOAD_PEAK_BYTES = 900 * 2**20
TRANSIENT_ACTIVATIONS = {"fp32": 2.4, "bf16": 1.9, "fp16": 1.9}
#: Share of the budget `plan_scale` keeps free: the estimate is a fit, and measured peaks were up to
#: 6% above it on the Zen 5 that fitted it (512x384 bf16) and 8.6% above it on the CI machine of stop 21
#: (768x576 fp32 tiled at 1.4 GB, oneDNN/ATen capped to AVX2: estimate 1.295 GB, peak 1.406 GB; the same run
#: capped on the Zen 5 peaked at 1.323 GB): the fixed cost (runtime, libraries) differs between CPUs.
#: The Xeon AMX (session 9, native bf16): 768x576 bf16 tiled at 1.3 GB, estimate 1.170 GB, peak 1.311 GB (the
#: estimate 11% under; the same test passed there an hour before): the margin is the lower edge of the
#: estimate/peak band the tests accept (0.85), so an estimate inside the band keeps a plan in its budget.
#: A plan's estimate must stay within ``(1 - PLAN_MARGIN) * budget``.
PLAN_MARGIN = 0.15


# --------------------------------------------------------------------------- sizes and units

# parse_bytes lives in nst.units (StyleConfig validates max_memory with it); imported here for callers.
from .units import parse_bytes  # noqa: E402,F401


def fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def device_memory(device: torch.device) -> int:
    """Total memory of `device` in bytes (CPU: the machine's RAM)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # pragma: no cover - psutil is a dependency
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


# --------------------------------------------------------------------------- network geometry


def _leaf_geometry(module: torch.nn.Module):
    """(left reach, right reach, stride) of a spatial layer in its input's units, or None (pointwise)."""
    if isinstance(module, (torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
        pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
        k, s, p = pair(module.kernel_size), pair(module.stride), pair(module.padding)
        d = pair(getattr(module, "dilation", 1))
        left = max(p[i] for i in range(2))
        right = max((k[i] - 1) * d[i] - p[i] for i in range(2))
        return left, right, max(s)
    return None


@dataclass(frozen=True)
class Geometry:
    """Where tiles may start (`align`), how much context they need (`halo`), per-layer strides."""

    align: int
    halo: int
    strides: dict


#: The dtype a precision runs the network's activations in (autocast: convolutions in half precision,
#: ReLUs and pools follow their input).
_ACT_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=None)
def _meta_layers(name: str, pooling: str, precision: str = "fp32"):
    with torch.device("meta"):
        layers, _ = backbones.spec(name).build(pooling, backbones.RANDOM)
    for m in layers.values():
        m.requires_grad_(False)
        m.to(_ACT_DTYPE[precision])
    return layers


def _stages(name: str, pooling: str, layers: tuple[str, ...], precision: str = "fp32"):
    all_layers = _meta_layers(name, pooling, precision)
    order = list(all_layers.keys())
    deepest = max(order.index(n) for n in layers)
    return [(n, all_layers[n]) for n in order[: deepest + 1]]


@functools.lru_cache(maxsize=None)
def geometry(name: str, pooling: str, layers: tuple[str, ...]) -> Geometry:
    """Tile geometry of a backbone run to the deepest of `layers`.

    The halo is the number of input pixels from a tile edge within which zero padding corrupts the
    deepest layer: walking the layers in order, a layer of stride ``s`` whose taps reach ``p``
    units left and ``r`` right of ``o * s`` turns a corrupted border of ``m`` input units into
    ``ceil((m + p) / s)`` output units at a left edge and ``ceil((m + r - s + 1) / s)`` at a right
    one (tile widths are multiples of the stride); the larger of the two is kept.  Branched blocks
    (ResNet, EfficientNet) are walked as if sequential, which only overestimates it.  Strides come
    from a meta-device trace.
    """
    m_units, stride = 0, 1
    for _, module in _stages(name, pooling, layers):
        for leaf in module.modules():
            g = _leaf_geometry(leaf)
            if g is None:
                continue
            left, right, s = g
            m_units = max(math.ceil((m_units + left) / s), math.ceil((m_units + right - s + 1) / s), 0)
            stride *= s
    side = 64 * stride
    trace = _trace(name, pooling, layers, (side, side))
    strides = {k: side // hw[0] for k, hw in trace.shapes.items()}
    if any(side % hw[0] or side % hw[1] or side // hw[0] != side // hw[1] for hw in trace.shapes.values()):
        raise ConfigError(f"backbone '{name}': layer strides are not whole numbers; it cannot be tiled exactly")
    align = math.lcm(*strides.values())
    halo = math.ceil(m_units * stride / align) * align
    return Geometry(align=align, halo=halo, strides=strides)


@dataclass
class Trace:
    shapes: dict  # layer -> (h, w) of the requested layers
    channels: dict  # layer -> channels
    saved_bytes: int  # what autograd keeps for the backward (in the trace's precision), weights excluded
    max_act_bytes: int  # the largest single activation (in the trace's precision)
    flops: float  # forward conv/linear multiply-adds x2


@functools.lru_cache(maxsize=256)
def _trace(name: str, pooling: str, layers: tuple[str, ...], hw: tuple[int, int], precision: str = "fp32") -> Trace:
    """Run the backbone on the meta device at `hw` and measure its tensors (no memory, no weights).

    `precision` bf16/fp16 runs it in that dtype, as autocast runs it: activations (and so what the
    convolutions, ReLUs and pools save) are half size, the max-pool indices stay int64."""
    stages = _stages(name, pooling, layers, precision)
    params = {p.untyped_storage()._cdata for _, m in stages for p in m.parameters()}
    params |= {b.untyped_storage()._cdata for _, m in stages for b in m.buffers()}
    saved: dict[int, int] = {}
    keep = []

    def pack(t):
        st = t.untyped_storage()
        if st._cdata not in params:
            saved[st._cdata] = max(saved.get(st._cdata, 0), t.numel() * t.element_size())
            keep.append(t)
        return t

    flops = [0.0]

    def count(mod, inp, out):
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            flops[0] += 2.0 * out.numel() * k

    hooks = [leaf.register_forward_hook(count) for _, m in stages for leaf in m.modules()
             if isinstance(leaf, torch.nn.Conv2d)]
    shapes, channels, max_act = {}, {}, 0
    try:
        x = torch.empty(1, 3, *hw, device="meta", dtype=_ACT_DTYPE[precision], requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            for n, module in stages:
                try:
                    x = module(x)
                except RuntimeError as exc:  # the same one-line message as the feature extractor's
                    if "too small" not in str(exc) and "can't be greater" not in str(exc):
                        raise
                    raise ConfigError(f"size: a {hw[1]}x{hw[0]} px image is too small for {name} (it vanishes "
                                      f"at layer {n}); use a larger size or shallower layers") from None
                max_act = max(max_act, x.numel() * x.element_size())
                if n in layers:
                    shapes[n] = tuple(x.shape[-2:])
                    channels[n] = x.shape[1]
    finally:
        for h in hooks:
            h.remove()
    return Trace(shapes, channels, sum(saved.values()), max_act, flops[0])


# --------------------------------------------------------------------------- tiles


@dataclass(frozen=True)
class Tile:
    """One tile: its input window ``[y0:y1, x0:x1]`` and, per layer, the owned feature rows/cols."""

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int  # owned core in image pixels
    cy1: int
    cx0: int
    cx1: int

    def owned(self, stride: int, fh: int, fw: int) -> tuple[slice, slice]:
        """The owned feature positions in this tile's feature map of a layer of `stride` (size fh x fw)."""
        r0, c0 = (self.cy0 - self.y0) // stride, (self.cx0 - self.x0) // stride
        r1 = fh if self.cy1 >= self.y1 else (self.cy1 - self.y0) // stride
        c1 = fw if self.cx1 >= self.x1 else (self.cx1 - self.x0) // stride
        return slice(r0, r1), slice(c0, c1)

    def global_slices(self, stride: int, fh: int, fw: int) -> tuple[slice, slice]:
        """The owned positions in the whole image's feature map of the layer."""
        rs, cs = self.owned(stride, fh, fw)
        oy, ox = self.y0 // stride, self.x0 // stride
        return slice(rs.start + oy, rs.stop + oy), slice(cs.start + ox, cs.stop + ox)


@dataclass
class TilePlan:
    """How a scale is cut: square cores of `core` px (multiples of `align`) with `halo` px of context."""

    hw: tuple[int, int]
    core: int
    halo: int
    align: int
    strides: dict
    backbone: str
    pooling: str
    layers: tuple
    seed: int = 0
    estimate: "Estimate | None" = None
    offsets: list = field(default_factory=list)  # the grid offset of every evaluation, for inspection

    def __post_init__(self) -> None:
        self._gen = torch.Generator().manual_seed(int(self.seed) + 16)

    def tiles(self, offset: tuple[int, int] = (0, 0)) -> list[Tile]:
        h, w = self.hw

        def cuts(n: int, off: int) -> list[tuple[int, int]]:
            edges = [0] + list(range(off if off else self.core, n, self.core)) + [n]
            edges = sorted(set(e for e in edges if 0 <= e <= n))
            return list(zip(edges[:-1], edges[1:]))

        out = []
        for cy0, cy1 in cuts(h, offset[0]):
            for cx0, cx1 in cuts(w, offset[1]):
                out.append(Tile(max(0, cy0 - self.halo), min(h, cy1 + self.halo), max(0, cx0 - self.halo),
                                min(w, cx1 + self.halo), cy0, cy1, cx0, cx1))
        return out

    def jittered(self) -> list[Tile]:
        """Tiles of a grid shifted by a fresh random offset (a multiple of `align`): one per evaluation."""
        steps = max(1, self.core // self.align)
        oy, ox = (int(v) * self.align for v in torch.randint(0, steps, (2,), generator=self._gen))
        self.offsets.append((oy, ox))
        return self.tiles((oy, ox))

    def with_hw(self, hw) -> "TilePlan":
        return TilePlan(tuple(hw), self.core, self.halo, self.align, self.strides, self.backbone, self.pooling,
                        self.layers)

    def layer_hw(self, hw, layer: str) -> tuple[int, int]:
        """A layer's feature map size for a whole image of size `hw` (meta trace)."""
        return _trace(self.backbone, self.pooling, self.layers, tuple(hw)).shapes[layer]

    def describe(self) -> str:
        n = len(self.tiles((self.core // 2 // self.align * self.align,) * 2))
        return f"tiles of {self.core} px + {self.halo} px halo (~{n} per evaluation, jittered)"


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another C library)."""
    try:
        import ctypes

        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_memory(device: torch.device) -> None:
    """Hand the CPU heap's free pages back to the system after a tile.

    glibc serves allocations under its mmap threshold from the heap, and the threshold rises (up to
    32 MB) to the size of the largest block freed so far, so most tensors of a tile land on the heap;
    tiles of changing shapes (the grid moves every evaluation) then leave free, fragmented heap pages
    that still count in the resident set: measured +0.2-0.35 GB of peak RSS at 1024x768 (bf16, 400 px
    cores: 1.66 GB without, 1.44 GB with this call after every tile) for ~2% of the run's time (30 trims
    of ~60 ms in a 93 s run at 480 px cores).  A fixed mmap threshold (``mallopt``) gets lower still
    (1.33 GB) but page-faults every large allocation: 2.3x slower at 1 MB.  CUDA's caching allocator
    reuses blocks by size and is measured by ``max_memory_allocated``: nothing to do there."""
    if device.type == "cpu":
        fn = _malloc_trim()
        if fn is not None:
            fn(0)


def _window(image: torch.Tensor, t: Tile) -> torch.Tensor:
    return image[..., t.y0: t.y1, t.x0: t.x1]


def _owned(feat: torch.Tensor, t: Tile, stride: int) -> torch.Tensor:
    """The positions of `feat` this tile owns; may be empty: a strip of the image past the deepest
    layer's last position (a side that is not a multiple of the stride: 3000 px -> 187 rows at stride
    16 cover 2992 px) owns nothing of that layer."""
    rs, cs = t.owned(stride, feat.shape[-2], feat.shape[-1])
    return feat[..., rs, cs]


@torch.no_grad()
def tiled_features(extractor, image: torch.Tensor, plan: TilePlan, gram_layers=(), feature_layers=(),
                   tiles: list[Tile] | None = None):
    """Whole-image Gram matrices of `gram_layers` and feature maps of `feature_layers`, tile by tile.

    Gram matrices are sums of each tile's owned positions (fp32, `gram_matrix` weighted by its
    share of positions): equal to `gram_matrix` of the whole image's features.
    """
    hw = tuple(image.shape[-2:])
    tiles = tiles if tiles is not None else plan.with_hw(hw).tiles()
    full = _full_shapes(plan, hw, tuple(dict.fromkeys([*gram_layers, *feature_layers])))
    grams: dict[str, torch.Tensor] = {}
    feats_out: dict[str, torch.Tensor] = {}
    for t in tiles:
        feats = extractor(_window(image, t))
        for k in gram_layers:
            f = _owned(feats[k], t, plan.strides[k])
            if f.shape[-2] * f.shape[-1] == 0:
                continue
            g = gram_matrix(f) * (f.shape[-2] * f.shape[-1] / (full[k][0] * full[k][1]))
            grams[k] = g if k not in grams else grams[k].add_(g)
        for k in feature_layers:
            f = feats[k]
            if k not in feats_out:
                feats_out[k] = torch.zeros(f.shape[0], f.shape[1], *full[k], dtype=torch.float32, device=f.device)
            rs, cs = t.global_slices(plan.strides[k], f.shape[-2], f.shape[-1])
            feats_out[k][..., rs, cs] = _owned(f, t, plan.strides[k]).float()
        del feats
        release_memory(image.device)
    return grams, feats_out


def _full_shapes(plan: TilePlan, hw, layers) -> dict:
    return {k: plan.layer_hw(hw, k) for k in layers}


def check_tileable(config, loss_fn=None, extra_terms=None, style_masks=None) -> None:
    """A `ConfigError` for settings a tiled scale cannot optimise exactly."""
    why = None
    if extra_terms or config.photoreal_weight:
        why = "extra loss terms / photorealism (whole-image operators)"
    elif style_masks is not None and any(m is not None for m in style_masks):
        why = "style masks (guided Gram matrices)"
    elif config.style_loss != "gram":
        why = f"style_loss={config.style_loss} (only the Gram loss is a sum over positions)"
    if why:
        raise ConfigError(f"size {config.size}: needs tiling to fit max_memory, which does not support {why}")


def make_closure(x: torch.Tensor, opt, extractor, loss_fn, plan: TilePlan, evals: list[int], last: list):
    """The closure of a tiled scale: loss and exact whole-image gradient of `loss_fn`, two passes over
    jittered tiles (module docstring).  Sets ``x.grad``; records the step's terms in `last`."""
    style_layers = list(dict.fromkeys(k for s in loss_fn.style for k in s.keys()))
    hw = tuple(x.shape[-2:])
    full = _full_shapes(plan, hw, tuple(dict.fromkeys([*style_layers, *loss_fn.content.keys()])))

    def closure():
        opt.zero_grad()
        tiles = plan.jittered()
        xd = x.detach()
        # pass 1: whole-image Gram matrices of the current image, and dL/dG
        grams, _ = tiled_features(extractor, xd, plan, style_layers, (), tiles=tiles)
        style, dg = _gram_gradients(loss_fn, grams, xd)
        # pass 2: each tile's share of the gradient
        grad = torch.zeros_like(xd)
        content = xd.new_zeros(())
        for t in tiles:
            tile_grad, tile_content = _tile_gradient(extractor, xd, t, loss_fn, plan, style_layers, full, dg)
            content = content + tile_content
            if tile_grad is not None:
                grad[..., t.y0: t.y1, t.x0: t.x1] += tile_grad
            del tile_grad
            release_memory(xd.device)
        tv = xd.new_zeros(())
        if loss_fn.tv_weight:
            with torch.enable_grad():
                xg = xd.clone().requires_grad_(True)
                tv = loss_fn.tv(xg)
                (loss_fn.tv_weight * tv).backward()
            grad += xg.grad
            tv = tv.detach()
        x.grad = grad
        total = loss_fn.content_weight * content + loss_fn.style_weight * style + loss_fn.tv_weight * tv
        evals[0] += 1
        if not last:
            last.append({"content": content, "style": style, "tv": tv, "total": total})
        return total

    return closure


def _gram_gradients(loss_fn, grams: dict[str, torch.Tensor],
                    like: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The style loss of whole-image Gram matrices and its gradient with respect to each of them."""
    leaves = {k: g.detach().requires_grad_(True) for k, g in grams.items()}
    with torch.enable_grad():
        style = like.new_zeros(())
        for blend, losses in zip(loss_fn.style_blend, loss_fn.style):
            for layer, loss in losses.items():
                style = style + blend * loss_fn.style_layer_weights[layer] * relative_error(
                    leaves[layer], loss.target, loss.norm)
        dg = dict(zip(leaves, torch.autograd.grad(style, list(leaves.values())))) if leaves else {}
    return style.detach(), dg


def _tile_gradient(extractor, xd: torch.Tensor, t, loss_fn, plan: TilePlan, style_layers: list[str],
                   full: dict, dg: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One tile's share of the whole-image gradient (None when it owns no position of any loss layer)
    and of the content loss: a surrogate whose gradient is the exact one on the positions it owns."""
    xt = _window(xd, t).clone().requires_grad_(True)
    content = xd.new_zeros(())
    with torch.enable_grad():
        feats = extractor(xt)
        surrogate = xt.new_zeros(())
        for layer, loss in loss_fn.content.items():
            f = _owned(feats[layer], t, plan.strides[layer])
            if f.numel() == 0:
                continue
            rs, cs = t.global_slices(plan.strides[layer], feats[layer].shape[-2], feats[layer].shape[-1])
            share = f.numel() / loss.target.numel()
            part = relative_error(f, loss.target[..., rs, cs], loss.norm) * share
            content = content + loss_fn.content_layer_weights[layer] * part.detach()
            surrogate = surrogate + loss_fn.content_weight * loss_fn.content_layer_weights[layer] * part
        for layer in style_layers:
            f = _owned(feats[layer], t, plan.strides[layer])
            if f.shape[-2] * f.shape[-1] == 0:
                continue
            g = gram_matrix(f) * (f.shape[-2] * f.shape[-1] / (full[layer][0] * full[layer][1]))
            surrogate = surrogate + loss_fn.style_weight * (dg[layer] * g).sum()
        if not surrogate.requires_grad:  # owns no position of any loss layer
            return None, content
        surrogate.backward()
    return xt.grad, content


# --------------------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    """Expected peak memory (and time per step) of one scale of a run."""

    hw: tuple[int, int]
    backbone: str
    precision: str
    device: str
    peak_bytes: int
    untiled_bytes: int
    budget_bytes: int
    device_bytes: int
    tiled: bool = False
    core: int | None = None
    halo: int | None = None
    tile_px: tuple[int, int] | None = None
    n_tiles: int = 1
    s_per_step: float | None = None
    parts: dict = field(default_factory=dict)

    def line(self) -> str:
        h, w = self.hw
        how = (f"tiled: {self.core} px cores + {self.halo} px halo, ~{self.n_tiles} tiles"
               if self.tiled else "untiled")
        t = f", ~{self.s_per_step:.2f} s/step" if self.s_per_step is not None else ""
        return (f"{w}x{h} {self.backbone} {self.precision} on {self.device}: peak ~{fmt_bytes(self.peak_bytes)} "
                f"(untiled {fmt_bytes(self.untiled_bytes)}; budget {fmt_bytes(self.budget_bytes)}){t}; {how}")

    def to_dict(self) -> dict:
        return {"hw": list(self.hw), "peak_mb": self.peak_bytes / 2**20, "untiled_mb": self.untiled_bytes / 2**20,
                "budget_mb": self.budget_bytes / 2**20, "tiled": self.tiled, "core": self.core, "halo": self.halo,
                "n_tiles": self.n_tiles, "s_per_step": self.s_per_step}


def _weights_bytes(name: str, pooling: str, layers: tuple[str, ...]) -> int:
    return sum(p.numel() * 4 for _, m in _stages(name, pooling, layers) for p in m.parameters())


def tile_peak_bytes(name: str, pooling: str, layers: tuple[str, ...], hw: tuple[int, int], precision: str) -> int:
    """Forward + backward of one image (or tile) of size `hw`: saved tensors plus the transient peak.

    Traced in the run's precision (`_trace`).  Under autocast every convolution also saves the
    half-precision copy of its weight it ran with (autocast caches casts only of weights that require
    grad; the backbone's do not), and the transients are counted in units of the largest half-precision
    activation, with their own fitted multiple (`TRANSIENT_ACTIVATIONS`)."""
    tr = _trace(name, pooling, layers, tuple(hw), precision)
    weight_copies = _weights_bytes(name, pooling, layers) // 2 if precision != "fp32" else 0
    return int(tr.saved_bytes + weight_copies + TRANSIENT_ACTIVATIONS[precision] * tr.max_act_bytes)


def state_bytes(config, hw: tuple[int, int], steps: int, content_layers, name, pooling, layers) -> int:
    """Whole-image tensors besides the network: image, gradient, optimiser state, inputs, targets."""
    px = hw[0] * hw[1] * 3 * 4
    if config.optimizer == "lbfgs":
        pairs = min(max(steps - 1, 0), config.lbfgs_history)
        vectors = 6 + 2 * pairs  # x, grad, previous grad, direction, q; history pairs (s, y)
    else:
        vectors = 6 + (1 if config.ema_decay else 0)  # x, grad, Adam's two moments, ema
    vectors += 4 + 2 * config.style_scale ** 2  # content, init, coarse result, output; style (and its copy)
    tr = _trace(name, pooling, layers, tuple(hw))
    targets = sum(tr.channels[k] * tr.shapes[k][0] * tr.shapes[k][1] * 4 for k in content_layers)
    return int(vectors * px + 2 * targets)


def estimate(config, hw: tuple[int, int], steps: int, device: torch.device | str, precision: str,
             core: int | None = None, speed: bool = False) -> Estimate:
    """Peak memory of optimising one scale of size `hw` (untiled, or tiled with `core` px cores)."""
    device = torch.device(device)
    name, pooling = config.backbone, config.pooling
    content_layers = tuple(config.content_layers or backbones.spec(name).content_layers)
    layers = _layers(config)
    base = (CPU_RUNTIME_BYTES if device.type == "cpu" else 0) + _weights_bytes(name, pooling, layers)
    state = state_bytes(config, hw, steps, content_layers, name, pooling, layers)
    floor = CPU_LOAD_PEAK_BYTES if device.type == "cpu" else 0
    untiled = max(floor, base + state + tile_peak_bytes(name, pooling, layers, hw, precision))
    dev_bytes = device_memory(device)
    budget = config.max_memory if config.max_memory is not None else int(dev_bytes * DEVICE_MEMORY_SHARE)
    est = Estimate(tuple(hw), name, precision, str(device), untiled, untiled, budget, dev_bytes,
                   parts={"base": base, "state": state})
    if core is not None:
        geo = geometry(name, pooling, layers)
        tile = (min(hw[0], core + 2 * geo.halo), min(hw[1], core + 2 * geo.halo))
        est.peak_bytes = max(floor, base + state + tile_peak_bytes(name, pooling, layers, tile, precision))
        est.tiled, est.core, est.halo, est.tile_px = True, core, geo.halo, tile
        plan = make_plan(config, hw, core)
        est.n_tiles = len(plan.tiles((core // 2 // geo.align * geo.align,) * 2))
    if speed:
        est.s_per_step = seconds_per_step(config, est, device, precision, layers)
    return est


def _layers(config) -> tuple[str, ...]:
    spec = backbones.spec(config.backbone)
    return tuple(dict.fromkeys(tuple(config.content_layers or spec.content_layers)
                               + tuple(config.style_layers or spec.style_layers)))


def make_plan(config, hw: tuple[int, int], core: int) -> TilePlan:
    """The tile plan of a scale of size `hw` with `core` px cores (rounded to the network's stride)."""
    layers = _layers(config)
    geo = geometry(config.backbone, config.pooling, layers)
    core = max(geo.align, int(core) // geo.align * geo.align)
    return TilePlan(tuple(hw), core, geo.halo, geo.align, geo.strides, config.backbone, config.pooling, layers,
                    seed=config.seed)


def plan_scale(config, hw: tuple[int, int], steps: int, device, precision: str) -> tuple[TilePlan | None, Estimate]:
    """None (untiled) if the untiled estimate fits the budget, else the plan with the largest core that
    fits; a one-line `ConfigError` with the numbers if even the smallest tile does not.  "Fits" keeps
    `PLAN_MARGIN` of the budget free for the estimate's error."""
    est = estimate(config, hw, steps, device, precision)
    limit = int(est.budget_bytes * (1 - PLAN_MARGIN))
    if est.untiled_bytes <= limit:
        return None, est
    geo = geometry(config.backbone, config.pooling, _layers(config))
    smallest = MIN_CORE_STRIDES * geo.align
    core = (max(hw) // geo.align) * geo.align
    too_big = None
    while core >= smallest:
        e = estimate(config, hw, steps, device, precision, core=core)
        if e.peak_bytes <= limit:
            # the largest fitting core between this one and the last that did not fit (the peak grows with it)
            lo, hi = core // geo.align, (too_big or core) // geo.align
            while hi - lo > 1:
                mid = (lo + hi) // 2
                em = estimate(config, hw, steps, device, precision, core=mid * geo.align)
                lo, hi, e = (mid, hi, em) if em.peak_bytes <= limit else (lo, mid, e)
            plan = make_plan(config, hw, lo * geo.align)
            plan.estimate = e
            return plan, e
        too_big = core
        core = max(smallest, int(core * 0.8) // geo.align * geo.align) if core > smallest else smallest - 1
    e = estimate(config, hw, steps, device, precision, core=smallest)
    what = "max_memory" if config.max_memory is not None else f"{e.device} memory"
    raise ConfigError(
        f"{what} {fmt_bytes(e.budget_bytes)} cannot hold a {hw[1]}x{hw[0]} run: untiled needs "
        f"~{fmt_bytes(e.untiled_bytes)}, the smallest tile ({smallest} px + {geo.halo} px halo) "
        f"~{fmt_bytes(e.peak_bytes)} (of which {fmt_bytes(e.parts['base'] + e.parts['state'])} runtime, weights and "
        f"whole-image state); a plan may use {1 - PLAN_MARGIN:.0%} of the budget")


# --------------------------------------------------------------------------- time per step


_SPEED: dict[tuple, tuple[float, float]] = {}


def _probe_speed(config, device: torch.device, precision: str, layers: tuple[str, ...]) -> tuple[float, float]:
    """Seconds per forward FLOP: (forward+backward, forward only), timed on a 256 px random-weight
    copy of the backbone (global RNG untouched), once per process and setting."""
    key = (config.backbone, config.pooling, str(device), precision, layers)
    if key not in _SPEED:
        from .features import FeatureExtractor

        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            bb = backbones.get_backbone(config.backbone, config.pooling, backbones.RANDOM, device)
        ex = FeatureExtractor(bb, layers, precision)
        side = 256
        flops = _trace(config.backbone, config.pooling, layers, (side, side)).flops
        x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device)

        def fb():
            xi = x.clone().requires_grad_(True)
            feats = ex(xi)
            sum(gram_matrix(f).sum() for f in feats.values()).backward()

        def f_only():
            with torch.no_grad():
                ex(x)

        out = []
        for fn in (fb, f_only):
            fn()
            best = float("inf")
            for _ in range(2):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                best = min(best, time.perf_counter() - t0)
            out.append(best / flops)
        _SPEED[key] = (out[0], out[1])
    return _SPEED[key]


def seconds_per_step(config, est: Estimate, device, precision, layers) -> float:
    fb, fwd = _probe_speed(config, device, precision, layers)
    if not est.tiled:
        return fb * _trace(config.backbone, config.pooling, layers, tuple(est.hw)).flops
    plan = make_plan(config, est.hw, est.core)
    total = 0.0
    for t in plan.tiles((est.core // 2 // plan.align * plan.align,) * 2):
        f = _trace(config.backbone, config.pooling, layers, (t.y1 - t.y0, t.x1 - t.x0)).flops
        total += (fb + fwd) * f
    return total


# --------------------------------------------------------------------------- a run's estimate


def content_hw(path, size: int) -> tuple[int, int]:
    """The working size (h, w) of a content file at `size`, from its header (nothing decoded)."""
    from PIL import Image

    from .images import target_size

    with Image.open(path) as img:
        w, h = img.size
    nw, nh = target_size(w, h, size)
    return nh, nw


def estimate_run(config, hw: tuple[int, int], speed: bool = True) -> list[tuple[Estimate, bool]]:
    """Per scale of the coarse-to-fine schedule at content size `hw`: (its estimate, tiled?).

    Raises the `ConfigError` `plan_scale` raises when a scale cannot fit at all."""
    from .runtime import resolve_device, resolve_precision
    from .schedule import pyramid

    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    out = []
    for shw, steps in pyramid(config, tuple(hw)):
        plan, est = plan_scale(config, shw, steps, device, precision)
        if plan is not None:
            est = plan.estimate
        if speed:
            est.s_per_step = seconds_per_step(config, est, device, precision, _layers(config))
        out.append((est, plan is not None))
    return out


def summary(config, hw: tuple[int, int], speed: bool = True) -> str:
    """One line: the finest scale's estimate and which scales are tiled."""
    rows = estimate_run(config, hw, speed)
    est, _ = max(rows, key=lambda r: r[0].peak_bytes)
    tiled = [f"{r.hw[1]}x{r.hw[0]}" for r, t in rows if t]
    last = rows[-1][0]
    t = f", ~{last.s_per_step:.2f} s/step at {last.hw[1]}x{last.hw[0]}" if last.s_per_step is not None else ""
    how = f"tiled at {', '.join(tiled)} ({rows[-1][0].core} px + {rows[-1][0].halo} px halo)" if tiled else "untiled"
    return (f"peak ~{fmt_bytes(est.peak_bytes)} of {fmt_bytes(est.budget_bytes)} budget "
            f"({config.backbone}, {est.precision}, {est.device}){t}; {how}")
