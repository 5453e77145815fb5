"""`nst.sheets`, the one implementation of the labelled image sheets: contact-sheet grid, per-cell
artifact panel, side-by-side figure. Layout sizes, where images land, and the tile kinds."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from nst import sheets


def _png(tmp_path, name: str, w: int, h: int, colour=(200, 30, 30)):
    p = tmp_path / name
    Image.new("RGB", (w, h), colour).save(p)
    return p


def test_grid_places_each_tile_in_its_cell(tmp_path) -> None:
    red = _png(tmp_path, "a.png", 40, 20)
    t = sheets.THUMB
    sheet = sheets.grid([[red, "FAILED"], [None, torch.zeros(1, 3, 8, 8)]], "title", ["c1", "c2"], ["r1", "r2"])
    label_w, pad, top = 110, 4, 24 + 34
    assert sheet.size == (label_w + 2 * (t + pad) + pad, top + 2 * (t + pad) + pad)
    px = np.asarray(sheet)

    def centre(i: int, j: int):
        return px[top + i * (t + pad) + t // 2, label_w + pad + j * (t + pad) + t // 2]

    assert tuple(centre(0, 0)) == (200, 30, 30)  # fitted (enlarged) and centred
    assert tuple(centre(1, 0)) == (255, 255, 255)  # None: blank
    assert tuple(centre(1, 1)) == (0, 0, 0)  # a tensor image
    assert tuple(px[top + 4, label_w + pad + t + pad + 4]) == (230, 230, 230)  # a status: a grey tile


def test_grid_lead_column_and_no_row_labels(tmp_path) -> None:
    blue = _png(tmp_path, "m.png", 10, 10, (0, 0, 255))
    sheet = sheets.grid([["missing"]], "t", [""], lead=("region map", [blue]), thumb=32)
    assert sheet.size == (2 * (32 + 4) + 4, 24 + 34 + 32 + 4 + 4)
    assert tuple(np.asarray(sheet)[24 + 34 + 16, 4 + 16]) == (0, 0, 255)


def test_labelled_stacks_wide_images_and_lines_up_tall_ones(tmp_path) -> None:
    wide = [("a", _png(tmp_path, "w1.png", 300, 40)), ("b", _png(tmp_path, "w2.png", 200, 50))]
    assert sheets.labelled(wide, "strips").size == (300 + 12, 26 + (20 + 40 + 6) + (20 + 50 + 6) + 6)
    tall = [("a", _png(tmp_path, "t1.png", 30, 300)), ("b", _png(tmp_path, "t2.png", 20, 200))]
    assert sheets.labelled(tall, "columns").size == (30 + 20 + 3 * 6, 26 + 20 + 300 + 6)
    assert sheets.labelled([("big", _png(tmp_path, "big.png", 1000, 100))], "t", max_side=500).width == 500 + 12


def test_side_by_side_puts_images_at_one_height() -> None:
    ims = [torch.rand(1, 3, 20, 40), torch.rand(3, 10, 10)]
    sheet = sheets.side_by_side(ims, ["one", "two\nlines"], height=50)
    assert sheet.size == (100 + 50 + 3 * 6, 50 + 2 * 16 + 2 * 6)
