"""The image transformation network of Johnson et al. (2016), seed report's table.

9x9 conv (32) -> 3x3 stride-2 conv (64) -> 3x3 stride-2 conv (128) -> 5 residual
blocks (128) -> two nearest-upsample + 3x3 convs (64, 32) -> 9x9 conv (3).

* Reflection padding everywhere and upsample+conv instead of transposed conv:
  the seed report blames fractional strides for the border artefacts; both
  changes remove checkerboard/border patterns.
* Normalisation: instance norm (Ulyanov et al. 2016, the default), batch norm
  (for the comparison), or conditional instance norm (Dumoulin et al. 2017):
  one scale/shift per style, so one network holds N styles and blending the
  scale/shift vectors blends the styles at inference time.
* The output is linear (the report found the scaled tanh worse); clamp to
  [0, 1] only when an image is made.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, WeightsError
from ..images import atomic_write

FORMAT = "nst-fast/1"
NORMS = ("instance", "batch")


@dataclass(frozen=True)
class NetConfig:
    """Architecture: `width` is the first layer's filters (32 in the paper); the
    others scale with it (64, 128).  `n_styles` > 1 means conditional instance norm."""

    norm: str = "instance"
    n_styles: int = 1
    width: int = 32
    n_residual: int = 5

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"norm: unknown normalisation '{self.norm}' (use {', '.join(NORMS)})")
        if self.n_styles < 1:
            raise ConfigError(f"n_styles: must be >= 1, got {self.n_styles}")
        if self.n_styles > 1 and self.norm != "instance":
            raise ConfigError("n_styles > 1 needs norm='instance' (conditional instance norm)")
        if self.width < 1 or self.n_residual < 0:
            raise ConfigError(f"width/n_residual: invalid ({self.width}, {self.n_residual})")


class CondInstanceNorm(nn.Module):
    """Instance norm with one (scale, shift) per style; `style` is ``[S]`` or ``[N, S]`` mixing weights."""

    def __init__(self, channels: int, n_styles: int) -> None:
        super().__init__()
        self.n_styles = n_styles
        self.weight = nn.Parameter(torch.ones(n_styles, channels))
        self.bias = nn.Parameter(torch.zeros(n_styles, channels))

    def forward(self, x: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        x = F.instance_norm(x)
        if style is None:
            style = x.new_zeros(self.n_styles)
            style[0] = 1.0
        w = style.to(x.dtype)
        if w.dim() == 1:
            w = w.unsqueeze(0)
        gamma = (w @ self.weight.to(x.dtype))[:, :, None, None]
        beta = (w @ self.bias.to(x.dtype))[:, :, None, None]
        return x * gamma + beta


class Norm(nn.Module):
    """One norm layer that takes the style condition (ignored unless conditional)."""

    def __init__(self, channels: int, cfg: NetConfig) -> None:
        super().__init__()
        if cfg.n_styles > 1:
            self.norm: nn.Module = CondInstanceNorm(channels, cfg.n_styles)
        elif cfg.norm == "instance":
            self.norm = nn.InstanceNorm2d(channels, affine=True)
        else:
            self.norm = nn.BatchNorm2d(channels)
        self.conditional = cfg.n_styles > 1

    def forward(self, x: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        return self.norm(x, style) if self.conditional else self.norm(x)


class ConvNorm(nn.Module):
    """[upsample x2] -> reflection pad -> conv -> norm -> [ReLU]."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, cfg: NetConfig,
                 relu: bool = True, upsample: bool = False) -> None:
        super().__init__()
        self.upsample = upsample
        self.pad = nn.ReflectionPad2d(k // 2)
        self.conv = nn.Conv2d(cin, cout, k, stride)
        self.norm = Norm(cout, cfg)
        self.relu = relu

    def forward(self, x: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.norm(self.conv(self.pad(x)), style)
        return F.relu(x) if self.relu else x


class Residual(nn.Module):
    def __init__(self, channels: int, cfg: NetConfig) -> None:
        super().__init__()
        self.a = ConvNorm(channels, channels, 3, 1, cfg)
        self.b = ConvNorm(channels, channels, 3, 1, cfg, relu=False)

    def forward(self, x: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        return x + self.b(self.a(x, style), style)


class TransformNet(nn.Module):
    """RGB [0, 1] ``[N, 3, H, W]`` -> stylised RGB (unclamped) of the same size."""

    def __init__(self, cfg: NetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or NetConfig()
        w = cfg.width
        self.down = nn.ModuleList([
            ConvNorm(3, w, 9, 1, cfg),
            ConvNorm(w, 2 * w, 3, 2, cfg),
            ConvNorm(2 * w, 4 * w, 3, 2, cfg),
        ])
        self.res = nn.ModuleList([Residual(4 * w, cfg) for _ in range(cfg.n_residual)])
        self.up = nn.ModuleList([
            ConvNorm(4 * w, 2 * w, 3, 1, cfg, upsample=True),
            ConvNorm(2 * w, w, 3, 1, cfg, upsample=True),
        ])
        self.pad_out = nn.ReflectionPad2d(4)
        self.out = nn.Conv2d(w, 3, 9, 1)

    def style_vector(self, style: int | Sequence[float] | torch.Tensor | None, device=None) -> torch.Tensor | None:
        """Style index or blend weights -> the ``[S]`` (or ``[N, S]``) mixing vector (None for 1 style).

        Blend weights are normalised to sum 1, so ``[0.5, 0.5]`` is the midpoint.
        """
        n = self.cfg.n_styles
        if style is None:
            style = 0
        if isinstance(style, int):
            if not 0 <= style < n:
                raise ConfigError(f"style: index {style} out of range (the model has {_styles(n)})")
            if n == 1:
                return None
            v = torch.zeros(n)
            v[style] = 1.0
            return v.to(device)
        v = torch.as_tensor(style, dtype=torch.float32)
        if v.shape[-1] != n:
            raise ConfigError(f"style: {v.shape[-1]} blend weights for a model with {_styles(n)}")
        if (v < 0).any() or (v.sum(-1) <= 0).any():
            raise ConfigError("style: blend weights must be >= 0 and not all zero")
        if n == 1:
            return None
        return (v / v.sum(-1, keepdim=True)).to(device)

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        # Two stride-2 convs: pad to a multiple of 4 so the output has the input's size.
        ph, pw = (-h) % 4, (-w) % 4
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        for layer in self.down:
            x = layer(x, style)
        for block in self.res:
            x = block(x, style)
        for layer in self.up:
            x = layer(x, style)
        x = self.out(self.pad_out(x))
        return x[..., :h, :w]


def _styles(n: int) -> str:
    return "1 style" if n == 1 else f"{n} styles"


def model_payload(net: TransformNet, styles: Sequence[str], meta: dict | None = None) -> dict:
    """What a saved model holds: architecture, weights, style names and training config."""
    return {
        "format": FORMAT,
        "arch": asdict(net.cfg),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "styles": list(styles),
        "meta": dict(meta or {}),
    }


def save_model(net: TransformNet, path: str | os.PathLike, styles: Sequence[str], meta: dict | None = None) -> Path:
    """Save atomically (temp file, then rename): a crash never leaves half a model."""
    payload = model_payload(net, styles, meta)
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_payload(path: Path) -> dict:
    """A model file's payload (CPU tensors, weights_only); a file that is not a model is a `WeightsError`."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: not a model file ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightsError(f"{path}: not an nst fast model (expected format {FORMAT})")
    return payload


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[TransformNet, dict]:
    """Load a saved model in eval mode; returns (net, info) with info = styles + meta."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: model file not found")
    payload = read_payload(p)
    net = TransformNet(NetConfig(**payload["arch"]))
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise WeightsError(f"{p}: weights do not match the architecture ({str(exc).splitlines()[0]})") from None
    net.eval().to(device)
    return net, {"styles": payload.get("styles", []), "meta": payload.get("meta", {}), "arch": payload["arch"]}
