"""Image I/O shared by every method: load any ordinary file, resize, save atomically.

Tensors are float32 RGB in [0, 1], shaped ``[1, 3, H, W]``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import ImageError

#: Refuse images above this many pixels before decoding them (a 16k x 16k photo
#: is 268 Mpx; anything beyond this is a mistake or a decompression bomb).
MAX_INPUT_PIXELS = 300_000_000
#: Refuse to *work* at more than this many pixels (about 8k x 8k).
MAX_WORK_PIXELS = 64_000_000

ImageFile.LOAD_TRUNCATED_IMAGES = False


def _to_rgb_array(img: Image.Image, path: Path) -> np.ndarray:
    """Convert a PIL image of any common mode to an HxWx3 float32 array in [0, 1]."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        gray = np.clip(arr / hi, 0.0, 1.0).astype(np.float32)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        gray = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Composite transparent pixels over white, as a viewer would show them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    rgb = img.convert("RGB")
    return np.asarray(rgb, dtype=np.float32) / 255.0


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file, turning every failure into one `ImageError`."""
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    if p.is_dir():
        raise ImageError(f"{p}: is a directory, not an image file")
    if p.stat().st_size == 0:
        raise ImageError(f"{p}: empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(p)
            w, h = img.size
            if w == 0 or h == 0:
                raise ImageError(f"{p}: image has zero size ({w}x{h})")
            if w * h > MAX_INPUT_PIXELS:
                raise ImageError(
                    f"{p}: image too large ({w}x{h} = {w * h / 1e6:.0f} Mpx, limit {MAX_INPUT_PIXELS / 1e6:.0f} Mpx)"
                )
            img.seek(0)  # first frame of animations (GIF, WebP, TIFF pages)
            img.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{p}: not an image file (format not recognised)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{p}: image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in msg.lower() or isinstance(exc, EOFError):
            raise ImageError(f"{p}: truncated or corrupt image ({msg})") from None
        raise ImageError(f"{p}: cannot decode image ({msg})") from None
    return img


def target_size(w: int, h: int, size: int | None = None, pixels: int | None = None) -> tuple[int, int]:
    """Size (w, h) after scaling so the longest side is `size` or the area is `pixels`."""
    if size is not None and pixels is not None:
        raise ValueError("give either size (longest side) or pixels, not both")
    scale = 1.0
    if size is not None:
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        scale = size / max(w, h)
    elif pixels is not None:
        if pixels <= 0:
            raise ValueError(f"pixels must be positive, got {pixels}")
        scale = (pixels / (w * h)) ** 0.5
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if nw * nh > MAX_WORK_PIXELS:
        raise ValueError(f"working size {nw}x{nh} exceeds the limit of {MAX_WORK_PIXELS / 1e6:.0f} Mpx")
    return nw, nh


def load_image(
    path: str | os.PathLike, size: int | None = None, pixels: int | None = None
) -> torch.Tensor:
    """Load an image file as a ``[1, 3, H, W]`` float tensor, optionally resized.

    `size` scales the longest side to that many pixels; `pixels` scales to about
    that many pixels in total. Any failure is an `ImageError` naming the file.
    """
    img = open_image(path)
    arr = _to_rgb_array(img, Path(path))
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).unsqueeze(0)
    if size is not None or pixels is not None:
        h, w = t.shape[-2:]
        try:
            nw, nh = target_size(w, h, size, pixels)
        except ValueError as exc:
            raise ImageError(f"{path}: {exc}") from None
        t = resize(t, (nh, nw))
    return t.contiguous()


def resize(image: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Resize a ``[N, C, H, W]`` tensor to (H, W), antialiased when shrinking."""
    if tuple(image.shape[-2:]) == tuple(hw):
        return image
    shrinking = hw[0] < image.shape[-2] or hw[1] < image.shape[-1]
    out = F.interpolate(image, size=hw, mode="bicubic", align_corners=False, antialias=shrinking)
    return out.clamp(0.0, 1.0)


def resize_longest(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the longest side is `size`, keeping the aspect ratio."""
    h, w = image.shape[-2:]
    nw, nh = target_size(w, h, size=size)
    return resize(image, (nh, nw))


def to_pil(image: torch.Tensor) -> Image.Image:
    """Convert a ``[1, 3, H, W]`` or ``[3, H, W]`` tensor in [0, 1] to a PIL RGB image."""
    t = image.detach()
    if t.dim() == 4:
        t = t[0]
    arr = (t.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def encode_jpeg(image: torch.Tensor, quality: int = 88) -> torch.Tensor:
    """The image as JPEG bytes in a uint8 tensor: small, and loadable with ``torch.load(weights_only=True)``
    (a training's evolution frames travel inside checkpoints and model files this way)."""
    import io

    buf = io.BytesIO()
    to_pil(image).save(buf, format="JPEG", quality=quality, subsampling=0)  # 4:4:4: stylised textures are colourful
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8).clone()


def decode_jpeg(data: torch.Tensor) -> torch.Tensor:
    """`encode_jpeg`'s inverse: ``[1, 3, H, W]`` float32 in [0, 1]."""
    import io

    arr = np.asarray(Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def _read_umask() -> int:
    """The process umask, read once at import: /proc where there is one (reading it there changes nothing;
    setting it to read it back would be a race with threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto `path`, so readers never see half a file."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file gets the mode open() would give it
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def save_image(image: torch.Tensor | Image.Image, path: str | os.PathLike) -> Path:
    """Save an image atomically (temp file in the same folder, then rename).

    The format follows the file suffix (PNG when there is none or it is unknown).
    """
    pil = image if isinstance(image, Image.Image) else to_pil(image)
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    return atomic_write(path, lambda tmp: pil.save(tmp, format=fmt))
