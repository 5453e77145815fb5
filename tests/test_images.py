"""Image loading across formats and modes, resizing, atomic saving, and bad-input errors."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst.cli import main
from nst.data import image
from nst.errors import ImageError
from nst.images import load_image, resize_longest, save_image, target_size


def _make(mode: str) -> Image.Image:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        arr = (rng.random((20, 30)) * 65535).astype(np.uint16)
        img = Image.fromarray(arr)
        assert img.mode == "I;16"
        return img
    base = Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8), "RGB")
    if mode == "P":
        return base.quantize(16)
    return base.convert(mode)


@pytest.mark.parametrize(
    "mode,ext",
    [("RGB", "jpg"), ("L", "png"), ("LA", "png"), ("P", "gif"), ("RGBA", "webp"), ("CMYK", "tiff"),
     ("I;16", "png"), ("RGB", "bmp"), ("RGBA", "png"), ("P", "png")],
)
def test_loads_every_common_mode_and_format_as_rgb(tmp_path: Path, mode: str, ext: str) -> None:
    path = tmp_path / f"img_{mode.replace(';', '')}.{ext}"
    _make(mode).save(path)
    t = load_image(path)
    assert t.shape == (1, 3, 20, 30)
    assert t.dtype == torch.float32
    assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0
    assert float(t.std()) > 0.01  # real content, not a blank conversion


def test_i16_keeps_full_range(tmp_path: Path) -> None:
    arr = np.array([[0, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    t = load_image(tmp_path / "x.png")
    assert t[0, 0, 0, 0] == 0.0 and t[0, 0, 0, 1] == pytest.approx(1.0)


def test_transparent_pixels_composite_over_white(tmp_path: Path) -> None:
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "a.png")
    assert torch.allclose(load_image(tmp_path / "a.png"), torch.ones(1, 3, 4, 4))


def test_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    t = load_image(tmp_path / "a.gif")
    assert t[0, 0].mean() > 0.9 and t[0, 2].mean() < 0.1


def test_resize_by_longest_side_and_by_pixels() -> None:
    t = load_image(image("tubingen.jpg"), size=64)
    assert t.shape[-2:] == (48, 64)
    t = load_image(image("tubingen.jpg"), pixels=48 * 64)
    assert t.shape[-2:] == (48, 64)
    assert target_size(1000, 500, size=100) == (100, 50)
    assert resize_longest(torch.rand(1, 3, 40, 20), 10).shape[-2:] == (10, 5)


def test_atomic_files_get_the_usual_mode(tmp_path: Path) -> None:
    """A file written by write-then-rename is readable like one written by open() (mkstemp alone gives 0600)."""
    import os

    from nst.images import _UMASK, atomic_write

    atomic_write(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("x"))
    (tmp_path / "b.txt").write_text("x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777
    assert _UMASK == (lambda m: (os.umask(m), m)[1])(os.umask(0o022))


def test_save_is_atomic_and_roundtrips(tmp_path: Path) -> None:
    t = torch.rand(1, 3, 10, 12)
    out = save_image(t, tmp_path / "sub" / "o.png")
    assert out.exists()
    assert [p.name for p in out.parent.iterdir()] == ["o.png"]  # no temp file left
    back = load_image(out)
    assert (back - t).abs().max() < 1 / 255 + 1e-6


def test_failed_save_leaves_nothing(tmp_path: Path) -> None:
    class Boom(Exception):
        pass

    from nst.images import atomic_write

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise Boom()

    with pytest.raises(Boom):
        atomic_write(tmp_path / "x.png", write)
    assert list(tmp_path.iterdir()) == []


def _huge_png_header(path: Path, w: int, h: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = tmp / "good.jpg"
    Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)).save(good)
    truncated = tmp / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    text = tmp / "notes.png"
    text.write_text("this is not an image\n")
    empty = tmp / "empty.png"
    empty.write_bytes(b"")
    huge = tmp / "huge.png"
    _huge_png_header(huge, 40000, 40000)
    return {
        "missing": (tmp / "nope.jpg", "no such file"),
        "truncated": (truncated, "truncated"),
        "not an image": (text, "not an image"),
        "zero-size": (empty, "empty file"),
        "absurdly large": (huge, "too large"),
    }


def test_bad_inputs_raise_image_error_naming_the_file(tmp_path: Path) -> None:
    for what, (path, phrase) in _bad_inputs(tmp_path).items():
        with pytest.raises(ImageError) as info:
            load_image(path)
        msg = str(info.value)
        assert str(path) in msg and phrase in msg, (what, msg)
        assert "\n" not in msg


def test_cli_bad_inputs_one_line_exit_2_nothing_written(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.png"
    for what, (path, phrase) in _bad_inputs(tmp_path).items():
        for role in ("content", "style"):
            args = ["stylize", "--content", str(image("tubingen.jpg")), "--style", str(image("starry_night.jpg")),
                    "--size", "32", "--steps", "2", "--quiet", "--out", str(out)]
            args[args.index(f"--{role}") + 1] = str(path)
            code = main(args)
            err = capsys.readouterr().err.strip()
            assert code == 2, (what, role)
            assert len(err.splitlines()) == 1 and err.startswith("nst: error:") and str(path) in err, err
            assert phrase in err
            assert not out.exists()
