"""The optimisation engine: losses fall, determinism, multi-style, colour preservation, errors."""

from __future__ import annotations

import pytest
import torch

from conftest import TEST_DEVICE
from nst import StyleConfig, stylize
from nst.color import chroma, luminance, match_color
from nst.errors import ConfigError, DivergedError

#: Numeric assertions: .ci/run runs these again as an AVX2-only CPU would (oneDNN/ATen capped).
pytestmark = pytest.mark.numeric

FAST = dict(size=48, steps=12, device=TEST_DEVICE)  # cpu unless NST_TEST_DEVICE


def test_lbfgs_losses_fall_and_history_is_complete(content48, starry48) -> None:
    seen = []
    r = stylize(content48, [starry48], StyleConfig(**FAST), callback=seen.append, image_every=6)
    assert len(r.history) == 12 and [s.step for s in seen] == list(range(1, 13))
    assert r.history[-1]["total"] < 0.5 * r.history[0]["total"]
    assert r.history[-1]["style"] < r.history[0]["style"]
    assert [s.step for s in seen if s.image is not None] == [6, 12]
    assert r.image.shape == (1, 3, 36, 48) and 0 <= r.image.min() and r.image.max() <= 1
    assert r.timings["s_per_step"] > 0 and r.info["weights_source"].startswith("caffe-vgg19")


def test_adam_from_noise_falls(content48, starry48) -> None:
    r = stylize(content48, [starry48], StyleConfig(**{**FAST, "steps": 20}, optimizer="adam", init="noise", lr=0.05))
    assert r.history[-1]["total"] < 0.7 * r.history[0]["total"]


def test_same_seed_same_image_other_seed_differs(content48, starry48) -> None:
    cfg = StyleConfig(**{**FAST, "steps": 4}, init="noise", seed=3)
    a = stylize(content48, [starry48], cfg).image
    b = stylize(content48, [starry48], cfg).image
    c = stylize(content48, [starry48], cfg.replace(seed=4)).image
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-3


def test_init_from_file(tmp_path, content48, starry48) -> None:
    from nst.images import save_image

    save_image(starry48, tmp_path / "init.png")
    r = stylize(content48, [starry48], StyleConfig(**{**FAST, "steps": 1}, init=str(tmp_path / "init.png")))
    assert r.image.shape == (1, 3, 36, 48)
    with pytest.raises(ConfigError, match="init"):
        stylize(content48, [starry48], StyleConfig(**FAST, init=str(tmp_path / "missing.png")))


def test_blend_weights_move_the_result_toward_each_style(content48, starry48, scream48, small_evaluator) -> None:
    base = dict(**{**FAST, "steps": 25})
    toward_a = stylize(content48, [starry48, scream48], StyleConfig(**base, style_weights=(0.9, 0.1))).image
    toward_b = stylize(content48, [starry48, scream48], StyleConfig(**base, style_weights=(0.1, 0.9))).image
    sa = small_evaluator.score(toward_a, content48, [starry48, scream48]).style_distances
    sb = small_evaluator.score(toward_b, content48, [starry48, scream48]).style_distances
    assert sa[0] < sb[0]  # closer to style A when A weighs more
    assert sb[1] < sa[1]  # closer to style B when B weighs more


def test_sequential_runs_one_stage_per_style(content48, starry48, scream48) -> None:
    r = stylize(content48, [starry48, scream48], StyleConfig(**{**FAST, "steps": 3}, multi_style="sequential"))
    assert [h["stage"] for h in r.history] == [0, 0, 0, 1, 1, 1]
    assert [h["step"] for h in r.history] == [1, 2, 3, 4, 5, 6]


def test_luminance_transfer_keeps_the_content_chroma(content48, starry48) -> None:
    r = stylize(content48, [starry48], StyleConfig(**FAST, preserve_color="luminance"))
    plain = stylize(content48, [starry48], StyleConfig(**FAST))
    kept = (chroma(r.image) - chroma(content48)).abs().mean()
    changed = (chroma(plain.image) - chroma(content48)).abs().mean()
    assert kept < 0.01 < changed
    assert (luminance(r.image) - luminance(content48)).abs().mean() > 0.02  # luminance was stylised


def test_histogram_matching_gives_the_style_the_content_colours(content48, starry48) -> None:
    matched = match_color(starry48, content48)
    for img in (matched,):
        mu, ref = img.flatten(2).mean(-1), content48.flatten(2).mean(-1)
        assert (mu - ref).abs().max() < 0.03
    c_m = torch.cov(matched[0].reshape(3, -1))
    c_c = torch.cov(content48[0].reshape(3, -1))
    assert (c_m - c_c).abs().max() < 0.01
    r = stylize(content48, [starry48], StyleConfig(**{**FAST, "steps": 3}, preserve_color="histogram"))
    assert r.image.shape == content48.shape


def test_divergence_is_reported(content48, starry48) -> None:
    bad = content48.clone()
    bad[..., 0, 0] = float("nan")
    with pytest.raises(DivergedError, match="diverged at step 1"):
        stylize(bad, [starry48], StyleConfig(**{**FAST, "steps": 2}))


def test_config_errors_name_the_field() -> None:
    from nst.config import make_config

    with pytest.raises(ConfigError, match="style_weight"):
        make_config(style_weight=-1)
    with pytest.raises(ConfigError, match="colour: unknown key"):
        make_config(colour="x")
    with pytest.raises(ConfigError, match="unknown style layer 'relu9_1'"):
        stylize(torch.rand(1, 3, 32, 32), [torch.rand(1, 3, 32, 32)],
                StyleConfig(size=32, steps=1, style_layers=("relu9_1",)))


def test_shared_targets_are_computed_once(content48, starry48) -> None:
    from nst.features import TargetCache

    cache = TargetCache()
    stylize(content48, [starry48], StyleConfig(**{**FAST, "steps": 1}), cache=cache)
    stylize(content48, [starry48], StyleConfig(**{**FAST, "steps": 1}, style_weight=5), cache=cache)
    assert cache.misses == 2 and cache.hits == 2  # content + style targets reused by the second run


def test_evaluator_scores(content48, starry48, small_evaluator) -> None:
    same = small_evaluator.score(content48, content48, [starry48])
    assert same.content_distance == pytest.approx(0, abs=1e-6) and same.ssim == pytest.approx(1, abs=1e-4)
    styled = stylize(content48, [starry48], StyleConfig(**{**FAST, "steps": 20})).image
    s = small_evaluator.score(styled, content48, [starry48])
    assert s.style_distance < same.style_distance  # transfer moved it toward the style
    assert s.content_distance > 0 and s.ssim < 1


def test_lbfgs_line_search_uses_torch_lbfgs_and_falls(content48, starry48) -> None:
    """The strong-Wolfe option runs alone through torch's LBFGS (more evaluations than steps)."""
    r = stylize(content48, [starry48], StyleConfig(**{**FAST, "steps": 4}, lbfgs_line_search=True, scales=None))
    assert len(r.history) == 4 and r.history[-1]["total"] < r.history[0]["total"]
    assert r.info["stages"][-1]["evals"] >= 4 and r.info["batch"] == 1
