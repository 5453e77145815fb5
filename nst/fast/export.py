"""ONNX export of a transformation network (`nst export --onnx`), for onnxruntime and other runtimes.

The graph takes ``image`` ``[N, 3, H, W]`` float32 RGB in [0, 1] (any H and W of at least 4 px; the
batch, height and width axes are dynamic) and, for a multi-style network, ``style_weights`` ``[S]``:
blend weights over its styles, normalised to sum 1 inside the graph as `TransformNet.style_vector` does
(a one-hot vector picks one style).  Its output ``stylized`` ``[N, 3, H, W]`` is clamped to [0, 1], as
`Stylizer` makes it.  The style names and the network's provenance are in the model's metadata
(``nst.styles``, ``nst.provenance``, JSON).  Needs the ``export`` extra (onnx; onnxruntime to run it).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, NSTError
from ..images import atomic_write
from .models import resolve_model
from .network import TransformNet, load_model

OPSET = 17
INPUT, STYLE_INPUT, OUTPUT = "image", "style_weights", "stylized"


class ExportNet(nn.Module):
    """`TransformNet` with the size handling and the blend normalisation written as graph operations.

    `TransformNet.forward` pads to a multiple of 4 only when needed (a Python branch, which a trace would
    fix at the example's size); here the padding (reflect, 0-3 px) is always there, so every size runs."""

    def __init__(self, net: TransformNet) -> None:
        super().__init__()
        self.net = net.eval()
        self.n_styles = net.cfg.n_styles

    def forward(self, image: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        h, w = image.shape[-2], image.shape[-1]
        x = F.pad(image, (0, (4 - w % 4) % 4, 0, (4 - h % 4) % 4), mode="reflect")
        style = None if style_weights is None else style_weights / style_weights.sum()
        y = self.net(x, style)
        return y[..., :h, :w].clamp(0, 1)


def export_onnx(model: str | os.PathLike | TransformNet, out: str | os.PathLike, *, opset: int = OPSET) -> Path:
    """Write `model` (a model file, a shipped network's name, or a network) to `out` as ONNX, atomically."""
    try:
        import onnx
    except ImportError:
        raise NSTError("ONNX export needs the onnx package: pip install 'nst-lab[export]'") from None
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"{out}: the ONNX file's name must end in .onnx")
    if out.is_dir():
        raise ConfigError(f"{out}: is a folder")
    if isinstance(model, TransformNet):
        net, info = model, {"styles": [], "meta": {}}
    else:
        net, info = load_model(resolve_model(model), "cpu")
    net = net.float().cpu().eval()
    wrapped = ExportNet(net)
    n = net.cfg.n_styles
    example = torch.rand(1, 3, 64, 64)
    args = (example,) if n == 1 else (example, torch.full((n,), 1.0 / n))
    names = [INPUT] if n == 1 else [INPUT, STYLE_INPUT]
    axes = {INPUT: {0: "batch", 2: "height", 3: "width"}, OUTPUT: {0: "batch", 2: "height", 3: "width"}}
    meta = {"nst.format": "nst-fast-onnx/1", "nst.styles": json.dumps(list(info.get("styles") or [])),
            "nst.arch": json.dumps(asdict(net.cfg)),
            "nst.provenance": json.dumps((info.get("meta") or {}).get("provenance") or {})}

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            # The TorchScript-based exporter (it needs only the onnx package; the torch.export one needs
            # onnxscript too) warns that it is deprecated, and the trace that shape arithmetic is traced.
            warnings.simplefilter("ignore")
            with torch.no_grad():
                torch.onnx.export(wrapped, args, tmp, dynamo=False, input_names=names, output_names=[OUTPUT],
                                  dynamic_axes=axes, opset_version=opset)
        proto = onnx.load(tmp)
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)

    return atomic_write(out, write)
