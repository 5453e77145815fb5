"""Issue 14, "no floor": a larger style weight reaches a lower style distance (projected L-BFGS, weight-aware
full-size steps)."""

from __future__ import annotations

import pytest
import torch

from conftest import TEST_DEVICE
from nst import StyleConfig, stylize
from nst.config import make_config
from nst.evaluate import Evaluator
from nst.experiments import ID_NEUTRAL
from nst.lbfgs import BatchLBFGS
from nst.optimize import batch_key, pyramid

#: Numeric assertions: .ci/run runs these again as an AVX2-only CPU would (oneDNN/ATen capped).
pytestmark = pytest.mark.numeric


def test_full_size_steps_grow_with_the_weight_on_the_coarse_to_fine_schedule_only() -> None:
    cfg = make_config(size=512, steps=10)
    assert pyramid(cfg, (384, 512))[-1] == ((384, 512), 10)  # the default weight: the default schedule
    assert pyramid(cfg.replace(style_weight=48), (384, 512))[-1][1] == 20  # 10 x (48 / 12) ** 0.5
    assert pyramid(cfg.replace(style_weight=2), (384, 512))[-1][1] == 10  # never fewer
    assert pyramid(cfg.replace(style_weight=48, weight_steps=0), (384, 512))[-1][1] == 10
    assert pyramid(cfg.replace(style_weight=48, scales=None), (384, 512)) == [((384, 512), 10)]  # one scale
    assert pyramid(cfg.replace(style_weight=48), (384, 512), single=True) == [((384, 512), 10)]
    # jobs whose full-size steps differ never share a batch
    assert batch_key(cfg.replace(style_weight=48), (384, 512), 1) != batch_key(cfg, (384, 512), 1)
    assert ID_NEUTRAL["lbfgs_clamp"] is False and ID_NEUTRAL["weight_steps"] == 0.0


def test_projected_lbfgs_stays_in_the_box_and_reaches_the_projected_optimum() -> None:
    target = torch.tensor([[-0.5, 0.3, 1.7, 0.9]], dtype=torch.float64)
    x = torch.full_like(target, 0.5).requires_grad_(True)
    opt = BatchLBFGS(x, lr=1.0, history_size=10, bounds=(0.0, 1.0))
    scale = torch.tensor([[1.0, 4.0, 0.5, 2.0]], dtype=torch.float64)

    def closure():
        opt.zero_grad()
        loss = (scale * (x - target) ** 2).sum()
        loss.backward()
        return loss

    for _ in range(30):
        opt.step(closure)
        assert 0 <= float(x.detach().min()) and float(x.detach().max()) <= 1
    assert torch.allclose(x.detach(), target.clamp(0, 1), atol=1e-6)


def test_a_larger_style_weight_reaches_a_lower_style_distance(content48, starry48) -> None:
    """The default (coarse-to-fine) schedule at a small size: each larger weight scores a lower style
    distance on the fixed evaluator (before the fix: flat from the default weight on, then rising)."""
    ev = Evaluator(TEST_DEVICE, resolution=128)
    cfg = StyleConfig(size=128, steps=4, scales=((0.5, 8),), seed=0, device=TEST_DEVICE)
    scores = []
    for w in (12, 48, 192):
        r = stylize(content48, [starry48], cfg.replace(style_weight=w))
        scores.append(ev.score(r.image, content48, [starry48]))
    style = [s.style_distance for s in scores]
    content = [s.content_distance for s in scores]
    assert style[1] < 0.9 * style[0] and style[2] < 0.9 * style[1], style
    assert content[0] < content[1] < content[2], content  # the weight trades content for style
