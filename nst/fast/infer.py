"""Apply a saved transformation network: no autograd, channels_last, optional bf16.

`Stylizer` holds a loaded model and stylises tensors (video frames use it too);
`stylize_file` / `stylize_folder` are the file-level conveniences behind `nst fast`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from .. import color
from ..errors import ConfigError, ImageError
from ..features import autocast_context
from ..images import load_image, save_image
from ..runtime import resolve_device, resolve_precision
from .models import resolve_model
from .network import TransformNet, load_model
from .train import IMAGE_SUFFIXES


class Stylizer:
    """A loaded model plus the inference settings: call it with ``[N, 3, H, W]`` images in [0, 1]."""

    def __init__(
        self,
        model: str | os.PathLike | TransformNet,  # a model file, a shipped network's name, or a network
        *,
        style: int | Sequence[float] | None = None,
        preserve_color: bool = False,
        precision: str = "fp32",
        device: str = "auto",
        compile: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision: unknown '{precision}' (use auto, fp32, bf16 or fp16)")
        if precision == "fp16" and self.device.type == "cpu":
            raise ConfigError("precision: fp16 is not supported on CPU (use bf16 or fp32)")
        precision = resolve_precision(precision, self.device)
        if isinstance(model, TransformNet):
            self.net, self.info = model.eval(), {"styles": [], "meta": {}}
        else:
            path = resolve_model(model)  # a file, or a shipped network's name (`nst models`)
            self.net, self.info = load_model(path, "cpu")
        self.net = self.net.to(self.device).to(memory_format=torch.channels_last).eval()
        if self.device.type == "cpu" and not isinstance(model, TransformNet):
            from .fold import fold_output_conv

            fold_output_conv(self.net)  # a loaded network is ours: its 3-channel output conv, computed faster
        try:
            self.style = self.net.style_vector(style if style is not None else 0, self.device)
        except ConfigError as exc:  # name the model and its styles: the line says which file the blend misfits
            if isinstance(model, TransformNet):
                raise
            styles = ", ".join(self.info.get("styles") or []) or "not recorded"
            raise ConfigError(f"{path}: {exc} (its styles: {styles})") from None
        self.preserve_color = preserve_color
        self.precision = precision
        # compiled: the network's pads, norms, ReLUs and casts fused around its convolutions (~1.8x faster
        # at 512 px on a 2-core CPU in bf16); compiling takes ~30 s once per image size (inductor caches
        # it on disk), so it pays for videos and folders, not for one image.
        self._run = torch.compile(self.net) if compile else self.net
        self.compiled = compile

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Stylised image(s), CPU float32 in [0, 1]; with colour preservation the content's chroma is kept."""
        # inference_mode tensors cannot enter a compiled graph's autograd-aware wrapper: no_grad there
        with torch.no_grad() if self.compiled else torch.inference_mode():
            return self._stylize(image)

    def _stylize(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(self.device).contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.precision):
            y = self._run(x, self.style)
        y = y.float().clamp(0, 1).cpu()
        if self.preserve_color:
            y = color.combine_luminance(y, image.float().cpu())
        return y.contiguous()


def stylize_file(stylizer: Stylizer, content: str | os.PathLike, out: str | os.PathLike,
                 size: int | None = None) -> Path:
    image = load_image(content, size=size)
    return save_image(stylizer(image), out)


def image_files(folder: str | os.PathLike) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise ImageError(f"{root}: input folder not found")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageError(f"{root}: no image files in the folder")
    return files


def stylize_folder(
    stylizer: Stylizer, in_dir: str | os.PathLike, out_dir: str | os.PathLike, size: int | None = None, progress=None
) -> list[Path]:
    """Stylise every image of a folder into `out_dir` as PNGs with the same stems."""
    files = image_files(in_dir)
    out = Path(out_dir)
    written = []
    for f in progress(files) if progress else files:
        written.append(stylize_file(stylizer, f, out / f"{f.stem}.png", size))
    return written
