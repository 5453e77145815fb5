"""Gram matrices, relative distances and TV on known tensors."""

from __future__ import annotations

import pytest
import torch

from nst.losses import ContentLoss, StyleLoss, TVLoss, gram_matrix, normalised_layer_weights, relative_error

#: Numeric assertions: .ci/run runs these again as an AVX2-only CPU would (oneDNN/ATen capped).
pytestmark = pytest.mark.numeric


def test_gram_of_known_tensor() -> None:
    # two channels over 2x2 positions: a = [1,2,3,4], b = [1,0,1,0]
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, 0.0], [1.0, 0.0]]]])
    g = gram_matrix(f)
    expected = torch.tensor([[30.0, 4.0], [4.0, 2.0]]) / 4
    assert torch.allclose(g[0], expected)


def test_gram_is_size_normalised() -> None:
    f = torch.rand(1, 8, 10, 10)
    tiled = f.repeat(1, 1, 2, 2)  # same statistics, four times the area
    assert torch.allclose(gram_matrix(f), gram_matrix(tiled), atol=1e-5)


def test_masked_gram_equals_gram_of_the_region() -> None:
    f = torch.rand(1, 4, 6, 6)
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., :, :3] = 1
    region = f[..., :, :3]
    assert torch.allclose(gram_matrix(f, mask), gram_matrix(region), atol=1e-6)


def test_relative_distances_are_scale_free() -> None:
    x, t = torch.rand(1, 5, 4, 4), torch.rand(1, 5, 4, 4)
    assert torch.allclose(relative_error(x * 7, t * 7), relative_error(x, t))
    assert ContentLoss(t)(t) == 0
    g = gram_matrix(t)
    assert StyleLoss(g)(t) == 0 and StyleLoss(g)(x) > 0


def test_tv_zero_on_constant_positive_on_noise() -> None:
    assert TVLoss()(torch.full((1, 3, 8, 8), 0.3)) == 0
    assert TVLoss()(torch.rand(1, 3, 8, 8)) > 0.05


def test_layer_weights_normalised() -> None:
    w = normalised_layer_weights(["a", "b"], [1, 3])
    assert w == {"a": 0.25, "b": 0.75}
    assert normalised_layer_weights(["a", "b", "c", "d"], None)["c"] == 0.25
