"""Region-map sources: label files, COCO annotations, the shipped person segmenter, DeepLabv3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst.data import image
from nst.errors import WeightsError
from nst.images import load_image
from nst.segment import (
    RegionError,
    colorize,
    from_coco,
    from_deeplab,
    from_mask_file,
    from_person,
    region_map,
    save_label_png,
)

COCO_DIR = Path(__file__).parent / "data" / "coco"
COCO_JSON = COCO_DIR / "instances_547503.json"
COCO_IMG = COCO_DIR / "000000547503.jpg"


def _two_region_png(path: Path, w: int = 40, h: int = 30) -> np.ndarray:
    arr = np.zeros((h, w), dtype=np.uint8)
    arr[:, w // 2 :] = 255
    arr[: h // 3, : w // 4] = 255  # a second patch of the same label
    Image.fromarray(arr).save(path)
    return arr


def test_binary_mask_file_gives_known_labels_and_resizes(tmp_path) -> None:
    arr = _two_region_png(tmp_path / "m.png")
    rm = from_mask_file(tmp_path / "m.png")
    assert rm.names == ["background", "foreground"] and rm.values == [0, 255]
    assert torch.equal(rm.labels, torch.from_numpy(arr > 0).long())
    big = rm.resized((60, 80))
    assert big.size == (60, 80) and abs(big.area(1) - rm.area(1)) < 0.01
    assert big.index("255") == 1 and big.index("foreground") == 1


def test_multi_label_palette_and_rgb_files(tmp_path) -> None:
    lab = np.zeros((20, 30), dtype=np.uint8)
    lab[:, 10:20], lab[:, 20:] = 1, 2
    pal = Image.fromarray(lab, mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    pal.save(tmp_path / "p.png")
    pal.convert("RGB").save(tmp_path / "rgb.png")
    for f in ("p.png", "rgb.png"):
        rm = from_mask_file(tmp_path / f)
        assert len(rm.names) == 3 and rm.names[0] == "background"
        assert [rm.area(i) for i in range(3)] == pytest.approx([1 / 3] * 3)
    rgb = from_mask_file(tmp_path / "rgb.png")
    # Labels follow the packed 0xRRGGBB value: black (0) < blue (0x0000ff) < red (0xff0000).
    assert torch.equal(rgb.labels, torch.from_numpy(np.array([0, 2, 1])[lab]).long())


def test_mask_file_errors_are_one_line(tmp_path) -> None:
    _two_region_png(tmp_path / "m.png", 40, 30)
    with pytest.raises(RegionError, match="aspect ratios differ") as e:
        from_mask_file(tmp_path / "m.png", size=(40, 40))
    assert "\n" not in str(e.value) and "m.png" in str(e.value)
    noise = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "photo.png")
    with pytest.raises(RegionError, match="distinct values"):
        from_mask_file(tmp_path / "photo.png")
    with pytest.raises(RegionError, match="neither coco"):
        region_map(str(tmp_path / "missing.png"), torch.zeros(1, 3, 30, 40))


def test_label_png_round_trip(tmp_path) -> None:
    _two_region_png(tmp_path / "m.png")
    rm = from_mask_file(tmp_path / "m.png")
    save_label_png(rm, tmp_path / "out.png")
    assert torch.equal(from_mask_file(tmp_path / "out.png").labels, rm.labels)
    assert colorize(rm).shape == (1, 3, 30, 40)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_coco_regions_match_the_annotations() -> None:
    from pycocotools.coco import COCO

    rm = from_coco(COCO_JSON, COCO_IMG, ["person", "wine glass"])
    assert rm.names == ["background", "person", "wine glass"] and rm.size == (375, 500)
    coco = COCO(str(COCO_JSON))
    person = np.zeros((375, 500), bool)
    for a in coco.loadAnns(coco.getAnnIds(imgIds=[547503], catIds=[1])):
        person |= coco.annToMask(a).astype(bool)
    ours = (rm.labels == 1).numpy()
    # Same pixels, except where a (smaller) wine glass is painted over a person.
    assert (ours & ~person).sum() == 0
    assert (person & ~ours).sum() <= (rm.labels == 2).sum()
    assert 0.25 < rm.area(1) < 0.40 and rm.area(2) > 0
    small = region_map("coco:person", load_image(COCO_IMG, size=64), content_path=COCO_IMG, coco=COCO_JSON)
    assert small.size == (48, 64) and abs(small.area(1) - from_coco(COCO_JSON, COCO_IMG, ["person"]).area(1)) < 0.03


def test_coco_errors_name_the_problem() -> None:
    with pytest.raises(RegionError, match="unknown COCO category 'persn'"):
        from_coco(COCO_JSON, COCO_IMG, ["persn"])
    with pytest.raises(RegionError, match="'astronaut.jpg' is not in the COCO file"):
        from_coco(COCO_JSON, image("astronaut.jpg"), ["person"])
    with pytest.raises(RegionError, match="needs --coco"):
        region_map("coco:person", torch.zeros(1, 3, 8, 8), content_path=COCO_IMG)


def test_person_segmenter_finds_the_astronaut() -> None:
    img = load_image(image("astronaut.jpg"), size=128)
    rm = from_person(img)
    assert rm.names == ["background", "person"] and rm.size == (128, 128)
    assert 0.4 < rm.area(1) < 0.7
    assert rm.labels[30, 50] == 1  # face
    assert rm.labels[5, 120] == 0 and rm.labels[15, 100] == 0  # background, top right
    assert torch.equal(region_map("person", img).labels, rm.labels)


def test_deeplab_without_weights_is_a_clear_error(tmp_path) -> None:
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(WeightsError, match="not found offline.*--seg-weights") as e:
            from_deeplab(torch.zeros(1, 3, 32, 32))
        assert "\n" not in str(e.value)
    finally:
        torch.hub.set_dir(old)
    with pytest.raises(WeightsError, match="weights file not found"):
        from_deeplab(torch.zeros(1, 3, 32, 32), weights=tmp_path / "nope.pth")


def test_deeplab_forward_with_weights_from_a_file(tmp_path) -> None:
    import torchvision.models.segmentation as seg

    torch.manual_seed(0)
    model = seg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    torch.save(model.state_dict(), tmp_path / "dl.pth")
    img = load_image(image("astronaut.jpg"), size=48)
    rm = from_deeplab(img, ["person", "cat"], weights=tmp_path / "dl.pth", arch="mobilenet_v3_large", resolution=64)
    assert rm.names == ["background", "person", "cat"] and rm.size == (48, 48)
    # The labels are the saved model's argmax mapped to our regions (VOC person = 15, cat = 8).
    with torch.no_grad():
        x = torch.nn.functional.interpolate(img, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        logits = model.eval()(((x - mean) / std))["out"]
        pred = torch.nn.functional.interpolate(logits, size=(48, 48), mode="bilinear", align_corners=False).argmax(1)[0]
    expected = torch.zeros_like(pred)
    expected[pred == 15], expected[pred == 8] = 1, 2
    assert torch.equal(rm.labels, expected)
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="not a DeepLabv3"):
        from_deeplab(img, weights=tmp_path / "bad.pth", arch="mobilenet_v3_large")
    with pytest.raises(RegionError, match="unknown DeepLabv3 class 'astronaut'"):
        from_deeplab(img, ["astronaut"], weights=tmp_path / "dl.pth", arch="mobilenet_v3_large")
