"""Run a backbone once per image and collect the named layers every loss needs.

The extractor stops at the deepest requested layer (no wasted conv work), runs
in channels_last memory format, and optionally under autocast (bf16/fp16):
the losses convert features back to fp32 before Gram matrices and distances.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

import torch

from .backbones import Backbone
from .errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_context(device: torch.device, precision: str):
    """Autocast for the forward pass, or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class FeatureExtractor:
    """Callable: image ``[N, 3, H, W]`` in [0, 1] -> ``{layer: features}`` for the requested layers."""

    def __init__(self, backbone: Backbone, layers: Iterable[str], precision: str = "fp32") -> None:
        wanted = list(dict.fromkeys(layers))
        if not wanted:
            raise ValueError("no layers requested")
        backbone.check_layers(wanted)
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision '{precision}' (use {', '.join(PRECISIONS)})")
        order = list(backbone.layers.keys())
        deepest = max(order.index(n) for n in wanted)
        self.backbone = backbone
        self.layers = tuple(wanted)
        self.stages = [(n, backbone.layers[n]) for n in order[: deepest + 1]]
        self.precision = precision
        self.device = next(backbone.parameters()).device
        self._compiled: torch.nn.Module | None = None

    def compile(self) -> None:
        """Run the stages as one `torch.compile` graph from now on (feed-forward training: every batch
        has the same shape, so it compiles once; ReLUs, pools and casts fuse around the convolutions)."""
        self._compiled = torch.compile(_Stages(self.stages, self.layers))

    def uncompile(self) -> None:
        """Back to the eager stages (the compiler failed on this machine)."""
        self._compiled = None

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = set(self.layers)
        out: dict[str, torch.Tensor] = {}
        x = image.to(self.device, memory_format=torch.channels_last)
        if self._compiled is not None:
            with autocast_context(self.device, self.precision):
                return self._compiled(x)
        with autocast_context(self.device, self.precision):
            for name, module in self.stages:
                try:
                    x = module(x)
                except RuntimeError as exc:  # pooling/strides shrank the image to nothing
                    if "too small" not in str(exc) and "can't be greater" not in str(exc):
                        raise
                    h, w = image.shape[-2:]
                    raise ConfigError(f"size: a {w}x{h} px image is too small for {self.backbone.name} (it vanishes "
                                      f"at layer {name}); use a larger size or shallower layers") from None
                if name in wanted:
                    out[name] = x
        return out

    def key(self) -> tuple:
        """Identity of what this extractor computes, for caching targets."""
        bb = self.backbone
        return (bb.name, bb.pooling, bb.weights_source, str(self.device), self.precision)


class _Stages(torch.nn.Module):
    """The extractor's stages as a module (what `torch.compile` traces): image -> {layer: features}."""

    def __init__(self, stages: list[tuple[str, torch.nn.Module]], layers: tuple[str, ...]) -> None:
        super().__init__()
        self.names = [n for n, _ in stages]
        self.stages = torch.nn.ModuleList(m for _, m in stages)
        self.wanted = frozenset(layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, module in zip(self.names, self.stages):
            x = module(x)
            if name in self.wanted:
                out[name] = x
        return out


def tensor_digest(t: torch.Tensor) -> str:
    """Content hash of a tensor (shape + bytes), to key cached targets by image content."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(tuple(t.shape)).encode())
    h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


class TargetCache:
    """An LRU of per-image targets (features or Gram matrices) keyed by
    (extractor, layers, kind, image content).

    Grid cells that share a style or content image at the same size and
    backbone reuse the targets instead of recomputing them.
    """

    def __init__(self, max_items: int = 64) -> None:
        self.max_items = max_items
        self._items: "OrderedDict[tuple, dict[str, torch.Tensor]]" = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple, compute) -> dict[str, torch.Tensor]:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        value = compute()
        with self._lock:
            self.misses += 1
            self._items[key] = value
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


#: Process-wide cache used by `stylize` unless given another.
DEFAULT_CACHE = TargetCache()


@dataclass
class LossNetwork:
    """A loss network on its device and precision, with its resolved (checked) layers and their extractor."""

    device: torch.device
    precision: str
    backbone: Backbone
    content_layers: list[str]
    style_layers: list[str]
    extractor: FeatureExtractor


def loss_network(config, feed_forward: bool = False) -> LossNetwork:
    """The loss network of a `StyleConfig` or `TrainConfig` (backbone, pooling, weights, layers, device, precision).

    Layers the config leaves unset are the backbone's defaults: for optimisation, or (`feed_forward`)
    those for training a transformation network.

    One place resolves device and precision, loads the backbone and checks the layer names, for
    optimisation and feed-forward training alike.
    """
    from .backbones import get_backbone
    from .runtime import resolve_device, resolve_precision

    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    backbone = get_backbone(config.backbone, config.pooling, config.weights, device)
    default_content, default_style = (backbone.feed_forward_layers if feed_forward else
                                      (backbone.default_content_layers, backbone.default_style_layers))
    content_layers = list(config.content_layers or default_content)
    style_layers = list(config.style_layers or default_style)
    backbone.check_layers(content_layers, "content layer")
    backbone.check_layers(style_layers, "style layer")
    extractor = FeatureExtractor(backbone, content_layers + style_layers, precision)
    return LossNetwork(device, precision, backbone, content_layers, style_layers, extractor)
