"""Luan et al.'s photorealism regulariser: the Matting Laplacian against Levin et al.'s per-window
formula, its algebra (symmetric, PSD, constants and affine recolourings in its null space), the
autograd gradient, and its effect inside `stylize` (one and two stages)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nst import StyleConfig, stylize
from nst.photoreal import (
    DEFAULT_EPSILON,
    PhotorealLoss,
    laplacian_for,
    matting_laplacian,
    photoreal_energy,
    quadratic_form,
    to_torch,
)

#: Numeric assertions: .ci/run runs these again as an AVX2-only CPU would (oneDNN/ATen capped).
pytestmark = pytest.mark.numeric

FAST = dict(size=48, steps=12, device="cpu")


def _image(h: int = 5, w: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def dense_laplacian(img: np.ndarray, eps: float) -> np.ndarray:
    """Levin et al. 2008, eq. 12, one 3x3 window at a time (windows fully inside the image)."""
    h, w, _ = img.shape
    lap = np.zeros((h * w, h * w))
    for y in range(1, h - 1):
        for x in range(1, w - 1):
            ids = [(y + dy) * w + (x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            win = img.reshape(-1, 3)[ids]  # 9 x 3
            mu = win.mean(axis=0)
            sigma = (win - mu).T @ (win - mu) / 9
            inv = np.linalg.inv(sigma + eps / 9 * np.eye(3))
            for a, i in enumerate(ids):
                for b, j in enumerate(ids):
                    lap[i, j] += (a == b) - (1 + (win[a] - mu) @ inv @ (win[b] - mu)) / 9
    return lap


@pytest.mark.parametrize("eps", [DEFAULT_EPSILON, 1e-3])
def test_sparse_laplacian_equals_the_per_window_formula(eps) -> None:
    img = _image()
    sparse = matting_laplacian(img, eps).toarray()
    dense = dense_laplacian(img[0].permute(1, 2, 0).double().numpy(), eps)
    assert sparse.shape == (30, 30)
    np.testing.assert_allclose(sparse, dense, atol=1e-6 * np.abs(dense).max())


def test_laplacian_is_symmetric_psd_with_constants_in_its_null_space() -> None:
    lap = matting_laplacian(_image(7, 8, seed=1))
    dense = lap.toarray()
    assert np.abs(dense - dense.T).max() < 1e-10
    assert np.linalg.eigvalsh(dense).min() > -1e-8
    assert np.abs(lap @ np.ones(lap.shape[0])).max() < 1e-9  # rows sum to 0
    # each pixel couples only with pixels at most two apart (its 5x5 neighbourhood)
    assert lap.getnnz(axis=1).max() <= 25


def test_affine_recolouring_costs_nothing_random_images_a_lot() -> None:
    content = _image(16, 20, seed=2)
    a = torch.tensor([[0.6, 0.3, -0.1], [0.1, 0.5, 0.2], [-0.2, 0.1, 0.9]])
    b = torch.tensor([0.1, -0.2, 0.3])
    affine = torch.einsum("ij,njhw->nihw", a, content) + b[None, :, None, None]
    e_affine = photoreal_energy(affine, content)
    e_random = photoreal_energy(_image(16, 20, seed=3), content)
    assert e_random > 0.1
    assert e_affine < 1e-6 * e_random
    assert photoreal_energy(torch.full_like(content, 0.4), content) < 1e-6 * e_random  # constants too (fp32)


def test_autograd_gradient_is_two_l_x() -> None:
    content, x = _image(9, 11, seed=4), _image(9, 11, seed=5).requires_grad_(True)
    lap = matting_laplacian(content)
    value = quadratic_form(x, to_torch(lap))
    value.backward()
    v = x.detach()[0].reshape(3, -1).double().numpy()  # channels x pixels
    lv = np.stack([lap @ v[c] for c in range(3)])
    assert value.item() == pytest.approx(float((v * lv).sum()), rel=1e-5)
    np.testing.assert_allclose(x.grad[0].reshape(3, -1).double().numpy(), 2 * lv, rtol=1e-4, atol=1e-6)
    # the loss term is the same per pixel, and its gradient follows
    x.grad = None
    loss = PhotorealLoss(content)(x)
    loss.backward()
    assert loss.item() == pytest.approx(value.item() / 99, rel=1e-5)
    np.testing.assert_allclose(x.grad[0].reshape(3, -1).double().numpy(), 2 * lv / 99, rtol=1e-4, atol=1e-6)


def test_laplacian_is_cached_per_content_size_and_epsilon() -> None:
    content = _image(12, 16, seed=6)
    a = laplacian_for(content)
    assert laplacian_for(content.clone()) is a
    assert laplacian_for(content, (6, 8)) is not a and laplacian_for(content, (6, 8)).lap.shape == (48, 48)
    assert laplacian_for(content, epsilon=1e-4) is not a
    # the term follows the size of the image it is given (coarse-to-fine optimisation)
    term = PhotorealLoss(content)
    assert torch.isfinite(term(_image(6, 8))) and torch.isfinite(term(_image(12, 16)))


def test_regulariser_in_stylize_lowers_the_outputs_energy(content48, starry48) -> None:
    plain = stylize(content48, [starry48], StyleConfig(**FAST))
    reg = stylize(content48, [starry48], StyleConfig(**FAST, photoreal_weight=1e4))
    assert "photoreal" not in plain.history[-1]
    assert "photoreal" in reg.history[-1]  # logged per step (MLflow: loss_photoreal)
    e_plain, e_reg = photoreal_energy(plain.image, content48), photoreal_energy(reg.image, content48)
    assert e_reg < 0.5 * e_plain


def test_two_stages_plain_then_regularised(content48, starry48) -> None:
    seen = []
    cfg = StyleConfig(**FAST, photoreal_weight=1e4, photoreal_two_stage=True)
    r = stylize(content48, [starry48], cfg, callback=seen.append)
    assert [s.step for s in seen] == list(range(1, 13)) and {s.total_steps for s in seen} == {12}
    assert [h["step"] for h in r.history] == list(range(1, 13)) and r.info["photoreal_stage1_steps"] == 6
    assert r.config == cfg and r.timings["s_per_step"] > 0
    plain = stylize(content48, [starry48], StyleConfig(**FAST))
    # the regulariser is logged in both stages, and falls once it weighs in
    assert r.history[-1]["photoreal"] < 0.5 * r.history[6]["photoreal"]  # step 7: the stage-1 output
    assert photoreal_energy(r.image, content48) < 0.5 * photoreal_energy(plain.image, content48)


def test_photoreal_grid_cells_log_the_energy_of_their_output_weight_zero_too() -> None:
    from pathlib import Path

    from nst.evaluate import shared_evaluator
    from nst.experiments import load_grid
    from nst.images import load_image
    from nst.methods import get
    from tasks.cell_log import method_metrics
    from tasks.inputs import CellInputs, method_inputs

    grid = load_grid(Path(__file__).resolve().parents[1] / "experiments.yaml", "photoreal",
                     overrides={"size": 32, "steps": 2})
    assert [(c.config.photoreal_weight > 0, c.config.photoreal_two_stage) for c in grid.cells] == [
        (False, False), (True, False), (True, True)]
    cell = grid.cells[0]  # the unregularised one
    content = load_image(cell.content, size=32)
    inputs = method_inputs(cell, CellInputs(content, [load_image(cell.styles[0], size=32)]), "cpu")
    res = get(cell.method).run(inputs)
    metrics = method_metrics(cell, get(cell.method), res, inputs, shared_evaluator("cpu"))
    assert metrics == {"photoreal_energy": pytest.approx(photoreal_energy(res.image, content))}
    assert metrics["photoreal_energy"] > 0
