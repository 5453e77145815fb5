"""Region methods end to end on tiny images; regions keep their own style; assignment errors; CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst.cli import main
from nst.data import image
from nst.errors import ConfigError
from nst.images import load_image
from nst.regions import (
    METHODS,
    assign_styles,
    border_weights,
    leakage,
    masked_style_distance,
    soft_masks,
    stitched_style,
    stylize_regions,
)
from nst.segment import RegionError, RegionMap

#: Numeric assertions: .ci/run runs these again as an AVX2-only CPU would (oneDNN/ATen capped).
pytestmark = pytest.mark.numeric

COCO_DIR = Path(__file__).parent / "data" / "coco"
FAST = dict(size=48, steps=4, device="cpu")


def halves(h: int = 36, w: int = 48) -> RegionMap:
    labels = torch.zeros(h, w, dtype=torch.long)
    labels[:, w // 2 :] = 1
    return RegionMap(labels, ["left", "right"], source="halves")


@pytest.mark.parametrize("method", METHODS)
def test_each_method_runs_end_to_end(method, content48, starry48, scream48) -> None:
    steps = []
    r = stylize_regions(content48, halves(), {"left": starry48, "right": scream48}, method, FAST,
                        callback=lambda i: steps.append((i.step, i.total_steps)))
    runs = 2 if method in ("per-region-composite", "portion") else 1
    assert r.image.shape == content48.shape and torch.isfinite(r.image).all()
    assert len(r.history) == 4 * runs and r.info["method"] == method and r.info["runs"] == runs
    assert [s for s, _ in steps] == list(range(1, 4 * runs + 1)) and steps[-1][1] == 4 * runs
    assert (r.image - content48).abs().mean() > 0.01  # something was stylised
    assert r.region_map.size == (36, 48) and r.timings["total_s"] > 0


@pytest.mark.parametrize("method", ["stitched", "guided-gram", "locality", "portion", "per-region-composite"])
def test_keep_region_stays_the_content(method, content48, starry48) -> None:
    r = stylize_regions(content48, halves(), {"left": starry48, "right": "keep"}, method, FAST, feather=0)
    assert torch.allclose(r.image[..., 24:], content48[..., 24:], atol=1e-6)
    assert (r.image[..., :24] - content48[..., :24]).abs().mean() > 0.01
    assert r.info["region_styles"]["right"] == "keep"


def test_portion_defaults_unassigned_regions_to_keep_with_a_soft_blend(content48, scream48) -> None:
    r = stylize_regions(content48, halves(), {"right": scream48}, "portion", FAST, feather=4)
    assert torch.allclose(r.image[..., :16], content48[..., :16], atol=1e-4)  # far from the border: content
    seam = (r.image[..., 20:24] - content48[..., 20:24]).abs().mean()
    inside = (r.image[..., 32:] - content48[..., 32:]).abs().mean()
    assert 0 < seam < inside  # blended, not cut


def test_guided_gram_keeps_each_style_in_its_region(content48, starry48, small_evaluator) -> None:
    rm = halves()
    ship = load_image(image("shipwreck.jpg"), size=48)
    styles = {"left": ship, "right": starry48}
    r = stylize_regions(content48, rm, styles, "guided-gram", {**FAST, "steps": 15, "style_weight": 50})
    left, right = rm.mask(0), rm.mask(1)
    d = {(reg, sty): masked_style_distance(r.image, s, m, small_evaluator)
         for reg, m in (("left", left), ("right", right)) for sty, s in (("ship", ship), ("starry", starry48))}
    assert d["left", "ship"] < 0.8 * d["left", "starry"]
    assert d["right", "starry"] < 0.8 * d["right", "ship"]
    lk = leakage(r.image, rm, styles, small_evaluator)
    base = leakage(content48, rm, styles, small_evaluator)
    assert lk["ratio"] < 1 and lk["ratio"] < base["ratio"]
    assert set(lk["regions"]) == {"left", "right"}


def test_stitched_style_fills_regions_with_textures(content48, starry48) -> None:
    s = stitched_style(content48, halves().labels, [starry48, None])
    assert torch.equal(s[..., 24:], content48[..., 24:])
    assert not torch.allclose(s[..., :24], content48[..., :24])


def test_masks_feathering_and_border_weights() -> None:
    rm = halves(8, 16)
    hard = soft_masks(rm.labels, 2, 0)
    soft = soft_masks(rm.labels, 2, 4)
    assert torch.allclose(soft.sum(0), torch.ones(8, 16))
    assert torch.equal(hard[1], rm.labels.float()) and 0.2 < soft[1, 0, 8] < 0.8 and soft[1, 0, 0] < 0.05
    w = border_weights(rm.mask(1), band=4)[0, 0]
    assert w[0, 8] == pytest.approx(0.25) and w[0, 15] == 1 and w[0, 0] == 0  # ramps up from the border


def test_assignment_errors_name_the_region(content48, starry48) -> None:
    rm = halves()
    with pytest.raises(RegionError, match="region 'right' .* has no style: give --style right=IMAGE or right=keep"):
        assign_styles(rm, {"left": starry48})
    with pytest.raises(RegionError, match="no region 'sky'.*regions: left, right"):
        assign_styles(rm, {"sky": starry48})
    with pytest.raises(RegionError, match="nothing to stylise"):
        assign_styles(rm, {"left": "keep", "right": "keep"})
    assert assign_styles(rm, {"left": "keep", "*": starry48})[1] is starry48
    with pytest.raises(ConfigError, match="unknown region method 'blur'"):
        stylize_regions(content48, rm, {"*": starry48}, "blur", FAST)
    with pytest.raises(RegionError, match="aspect ratios differ"):
        stylize_regions(content48, halves(40, 40), {"*": starry48}, "guided-gram", FAST)


def _run_cli(argv, capsys):
    rc = main(["stylize", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_coco_regions_and_mask_file(tmp_path, capsys) -> None:
    out = tmp_path / "o.png"
    common = ["--content", str(COCO_DIR / "000000547503.jpg"), "--size", "32", "--steps", "2", "--quiet"]
    rc, stdout, _ = _run_cli(common + [
        "--coco", str(COCO_DIR / "instances_547503.json"), "--regions", "coco:person",
        "--style", f"person={image('the_scream.jpg')}", "--style", f"background={image('starry_night.jpg')}",
        "--method", "stitched", "--out", str(out), "--save-regions"], capsys)
    assert rc == 0 and out.exists() and (tmp_path / "o_regions.png").exists()
    assert Image.open(out).size == (32, 24) and "stitched" in stdout
    arr = np.zeros((30, 40), np.uint8)
    arr[:, 20:] = 255
    Image.fromarray(arr).save(tmp_path / "mask.png")
    rc, stdout, _ = _run_cli(common + ["--regions", str(tmp_path / "mask.png"), "--style", "foreground=keep",
                                       "--style", str(image("wave.jpg")), "--out", str(tmp_path / "m.png")], capsys)
    assert rc == 0 and "foreground=keep" in stdout and "background=wave.jpg" in stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--regions", "coco:person", "--coco", "{coco}", "--style", "person={style}"], "region 'background'"),
        (["--regions", "coco:unicorn", "--coco", "{coco}", "--style", "{style}"], "unknown COCO category 'unicorn'"),
        (["--style", "person={style}"], "--style REGION=IMAGE needs --regions"),
        (["--regions", "{mask}", "--style", "{style}"], "aspect ratios differ"),
    ],
)
def test_cli_region_errors_are_one_line(tmp_path, capsys, extra, message) -> None:
    Image.fromarray(np.zeros((10, 40), np.uint8)).save(tmp_path / "wide.png")
    fill = {"coco": str(COCO_DIR / "instances_547503.json"), "style": str(image("wave.jpg")),
            "mask": str(tmp_path / "wide.png")}
    out = tmp_path / "o.png"
    argv = ["--content", str(COCO_DIR / "000000547503.jpg"), "--size", "32", "--steps", "1", "--quiet",
            "--out", str(out)] + [e.format(**fill) for e in extra]
    rc, _, err = _run_cli(argv, capsys)
    assert rc == 2 and message in err and err.count("\n") == 1 and not out.exists()


def test_cli_image_not_in_coco_file(tmp_path, capsys) -> None:
    rc, _, err = _run_cli(["--content", str(image("astronaut.jpg")), "--coco", str(COCO_DIR / "instances_547503.json"),
                           "--regions", "coco:person", "--style", str(image("wave.jpg")), "--size", "32",
                           "--steps", "1", "--quiet", "--out", str(tmp_path / "o.png")], capsys)
    assert rc == 2 and "'astronaut.jpg' is not in the COCO file" in err
