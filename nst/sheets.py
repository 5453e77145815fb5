"""Image sheets: labelled images on one white PIL canvas.

The one implementation behind every sheet nst-lab draws:

* `grid` - thumbnails on a labelled grid (a grid report's contact sheet, `tasks.report.contact_sheet`,
  which decides from its table which cell goes where);
* `labelled` - whole images under their labels, wide ones one per row, tall ones side by side (a report
  figure's per-cell artifact panel, `tasks.figures`);
* `side_by_side` - images at one height, left to right, each with a caption below (the photorealism
  figure of `benchmarks/bench_photoreal.py`).

An image may be a file path, a PIL image or a ``[1, 3, H, W]`` / ``[3, H, W]`` tensor in [0, 1]. Pure PIL
and torch: no Prefect or MLflow; the callers save the returned image (`nst.images.save_image`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from .images import to_pil

#: Side of a contact sheet's square tile, pixels.
THUMB = 160

ImageSource = str | os.PathLike | Image.Image | torch.Tensor
#: A grid tile: an image (fitted and centred; a file as a Path), a status word (a str: a cell without an
#: image, drawn as a grey tile) or None (left blank).
Tile = Path | Image.Image | torch.Tensor | str | None


def rgb(src: ImageSource) -> Image.Image:
    """`src` as a loaded RGB PIL image."""
    if isinstance(src, torch.Tensor):
        return to_pil(src)
    if isinstance(src, Image.Image):
        return src.convert("RGB")
    with Image.open(src) as im:
        return im.convert("RGB")


def scaled(im: Image.Image, scale: float) -> Image.Image:
    """`im` resized by `scale` (Lanczos; each side at least 1 px)."""
    return _resized(im, round(im.width * scale), round(im.height * scale))


def _resized(im: Image.Image, w: int, h: int) -> Image.Image:
    return im.resize((max(1, w), max(1, h)), Image.LANCZOS)


def wrap(s: str, width: int) -> str:
    """`s` on at most two lines of `width` characters (the rest cut)."""
    return s if len(s) <= width else s[:width] + "\n" + s[width : 2 * width]


class _Canvas:
    """A white sheet, its drawing context and its font."""

    def __init__(self, w: int, h: int, font_px: int):
        self.image = Image.new("RGB", (w, h), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.font = ImageFont.load_default(size=font_px)

    def text(self, xy: tuple[int, int], s: str, fill=(0, 0, 0)) -> None:
        self.draw.text(xy, s, fill=fill, font=self.font)

    def fitted(self, src: ImageSource, x: int, y: int, box: int) -> None:
        """`src` fitted (enlarged too) and centred in the `box` x `box` tile at (x, y)."""
        im = rgb(src)
        im = scaled(im, box / max(im.size))
        self.image.paste(im, (x + (box - im.width) // 2, y + (box - im.height) // 2))

    def placeholder(self, x: int, y: int, box: int, status: str) -> None:
        """A grey tile with `status` in red: a cell without an image."""
        self.draw.rectangle([x, y, x + box, y + box], fill=(230, 230, 230))
        self.text((x + 8, y + box // 2 - 8), status, fill=(160, 0, 0))

    def tile(self, tile: Tile, x: int, y: int, box: int) -> None:
        if isinstance(tile, str):
            self.placeholder(x, y, box, tile)
        elif tile is not None:
            self.fitted(tile, x, y, box)


# --------------------------------------------------------------------------- the three layouts


def grid(tiles: Sequence[Sequence[Tile]], title: str, col_labels: Sequence[str],
         row_labels: Sequence[str] | None = None, lead: tuple[str, Sequence[Tile]] | None = None,
         thumb: int = THUMB) -> Image.Image:
    """`tiles[i][j]` in square `thumb` tiles under `title`, a label over each column and, with `row_labels`,
    one left of each row; `lead` (a label and one tile per row) is an extra first column (e.g. each row's
    region map)."""
    label_w = 110 if row_labels is not None else 0
    header_h, pad, top = 34, 4, 24
    first = 1 if lead else 0
    cv = _Canvas(label_w + (first + len(col_labels)) * (thumb + pad) + pad,
                 top + header_h + len(tiles) * (thumb + pad) + pad, 12)
    cv.text((pad, 4), title[:120])
    if lead:
        cv.text((label_w + pad, top), lead[0])
    for j, label in enumerate(col_labels):
        cv.text((label_w + pad + (first + j) * (thumb + pad), top), wrap(label, 24))
    for i, row in enumerate(tiles):
        y = top + header_h + i * (thumb + pad)
        if row_labels is not None:
            cv.text((pad, y + thumb // 2 - 8), wrap(row_labels[i], 15))
        if lead:
            cv.tile(lead[1][i], label_w + pad, y, thumb)
        for j, tile in enumerate(row):
            cv.tile(tile, label_w + pad + (first + j) * (thumb + pad), y, thumb)
    return cv.image


def labelled(rows: Sequence[tuple[str, ImageSource]], title: str, max_side: int = 1400) -> Image.Image:
    """Images under their labels, each shrunk to at most `max_side`: wide ones (a film strip) one per row,
    tall ones (an evolution column) side by side."""
    ims = []
    for label, src in rows:
        im = rgb(src)
        scale = min(1.0, max_side / max(im.size))
        ims.append((label, scaled(im, scale) if scale < 1 else im))
    pad, lab_h, top = 6, 20, 26
    tall = sum(im.height for _, im in ims) > 1.5 * sum(im.width for _, im in ims)
    if tall:
        col_w = [max(im.width, 7 * min(len(label), 40)) for label, im in ims]
        w, h = sum(col_w) + pad * (len(ims) + 1), top + lab_h + max(im.height for _, im in ims) + pad
    else:
        w, h = max(im.width for _, im in ims) + 2 * pad, top + sum(lab_h + im.height + pad for _, im in ims) + pad
    cv = _Canvas(w, h, 13)
    cv.text((pad, 6), title[:140])
    x, y = pad, top
    for k, (label, im) in enumerate(ims):
        if tall:
            cv.text((x, y + 2), label[:40], fill=(40, 40, 40))
            cv.image.paste(im, (x, y + lab_h))
            x += col_w[k] + pad
        else:
            cv.text((pad, y + 2), label[:160], fill=(40, 40, 40))
            cv.image.paste(im, (pad, y + lab_h))
            y += lab_h + im.height + pad
    return cv.image


def side_by_side(images: Sequence[ImageSource], labels: Sequence[str], height: int = 256) -> Image.Image:
    """The images at the same height, left to right, each with a caption below (several lines allowed)."""
    tiles = []
    for src in images:
        im = rgb(src)
        tiles.append(_resized(im, round(im.width * height / im.height), height))
    font_px = max(12, height // 16)
    pad, cap = 6, (font_px + 4) * max(1, max(lab.count("\n") + 1 for lab in labels))
    cv = _Canvas(sum(t.width for t in tiles) + pad * (len(tiles) + 1), height + cap + 2 * pad, font_px)
    x = pad
    for tile, label in zip(tiles, labels):
        cv.image.paste(tile, (x, pad))
        cv.draw.multiline_text((x, height + pad + 2), label, fill=(0, 0, 0), font=cv.font, spacing=4)
        x += tile.width + pad
    return cv.image
