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
the settings being compared.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from . import backbones
from .color import luminance
from .features import FeatureExtractor, TargetCache, tensor_digest
from .images import resize, resize_longest
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

    @torch.no_grad()
    def score(
        self,
        output: torch.Tensor,
        content: torch.Tensor,
        styles: Sequence[torch.Tensor],
        style_weights: Sequence[float] | None = None,
    ) -> Scores:
        """Score `output` (any size) against `content` and `styles` (``[1, 3, H, W]`` in [0, 1])."""
        out = resize_longest(output.float().cpu(), self.resolution)
        ref = resize(content.float().cpu(), tuple(out.shape[-2:]))
        fo = self._features(out)
        fc = self.cache.get(("content", tensor_digest(ref)), lambda: self._features(ref))
        content_d = sum(float(relative_error(fo[k], fc[k])) for k in EVAL_CONTENT_LAYERS) / len(EVAL_CONTENT_LAYERS)
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
            ssim=ssim(luminance(out), luminance(ref)),
            style_distances=per_style,
            resolution=self.resolution,
            evaluator=self.id,
        )


_SHARED: dict[tuple[str, int], Evaluator] = {}
_SHARED_LOCK = threading.Lock()


def shared_evaluator(device: str | torch.device = "cpu", resolution: int = EVAL_RESOLUTION) -> Evaluator:
    """The process-wide evaluator of a device and resolution, built once (its network and target cache
    are shared by every caller; the lock keeps concurrent first callers from building two)."""
    key = (str(device), int(resolution))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Evaluator(device, resolution)
        return _SHARED[key]


def evaluate(
    output: torch.Tensor,
    content: torch.Tensor,
    styles: Sequence[torch.Tensor],
    style_weights: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
) -> Scores:
    """Score with the process-wide default evaluator (built once per device)."""
    return shared_evaluator(device).score(output, content, styles, style_weights)
