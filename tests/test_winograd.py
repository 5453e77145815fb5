"""Winograd F(4x4,3x3) convs equal direct convs (values and input gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nst.winograd import WinogradConv2d, winogradize

#: Numeric assertions: .ci/run runs these again as an AVX2-only CPU would (oneDNN/ATen capped).
pytestmark = pytest.mark.numeric


@pytest.mark.parametrize("shape", [(1, 8, 37, 53), (2, 16, 20, 24), (1, 32, 9, 7)])
def test_matches_direct_conv_and_its_input_gradient(shape) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], 24, 3, padding=1).requires_grad_(False)
    wino = WinogradConv2d(conv)
    x1 = torch.randn(shape, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    ref, out = F.conv2d(x1, conv.weight, conv.bias, padding=1), wino(x2)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() / ref.abs().max() < 1e-4
    g = torch.randn_like(ref)
    ref.backward(g)
    out.backward(g)
    assert (x2.grad - x1.grad).abs().max() / x1.grad.abs().max() < 1e-4


def test_winogradize_swaps_only_eligible_convs() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1), nn.Conv2d(128, 128, 3, stride=2)
    ).requires_grad_(False)
    replaced = winogradize(net)
    assert replaced == ["2"]  # 3-channel input conv and the strided conv stay direct
    assert isinstance(net[2], WinogradConv2d) and isinstance(net[0], nn.Conv2d)


def test_backbone_with_winograd_gives_the_same_features(monkeypatch) -> None:
    from nst import backbones
    from nst.features import FeatureExtractor

    plain = backbones.get_backbone("vgg19", "avg", None, "cpu", fast_conv=False)
    fast = backbones.get_backbone("vgg19", "avg", None, "cpu", fast_conv=True)
    assert fast.fast_convs and not plain.fast_convs
    x = torch.rand(1, 3, 40, 56)
    a = FeatureExtractor(plain, ["relu4_2"])(x)["relu4_2"]
    b = FeatureExtractor(fast, ["relu4_2"])(x)["relu4_2"]
    assert (a - b).abs().max() / a.abs().max() < 1e-4
