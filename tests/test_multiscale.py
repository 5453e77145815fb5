"""Coarse-to-fine optimisation, the optimiser options, the mean-covariance loss and the time-to-quality benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nst import StyleConfig, stylize
from nst.cli import main as nst_main
from nst.config import make_config
from nst.errors import ConfigError
from nst.losses import MeanCovLoss, mean_cov
from nst.optimize import pyramid, run_steps

#: Numeric assertions: .ci/run runs these again as an AVX2-only CPU would (oneDNN/ATen capped).
pytestmark = pytest.mark.numeric

ROOT = Path(__file__).resolve().parents[1]


def test_multiscale_losses_fall_at_every_scale_and_output_has_the_requested_size(content48, starry48) -> None:
    seen = []
    cfg = StyleConfig(size=128, steps=5, scales=((0.5, 6),), device="cpu")
    r = stylize(content48, [starry48], cfg, callback=seen.append, image_every=1)
    assert r.image.shape == (1, 3, 96, 128) and 0 <= r.image.min() and r.image.max() <= 1
    assert [(st["size"], st["steps"]) for st in r.info["stages"]] == [([48, 64], 6), ([96, 128], 5)]
    assert len(r.history) == 11 and [s.step for s in seen] == list(range(1, 12)) and seen[-1].total_steps == 11
    coarse, fine = r.history[:6], r.history[6:]
    assert coarse[-1]["total"] < 0.7 * coarse[0]["total"] and fine[-1]["total"] < fine[0]["total"]
    # the full-size stage starts from the upsampled coarse result: lower style loss than the content
    plain = stylize(content48, [starry48], cfg.replace(scales=None, steps=1))
    assert fine[0]["style"] < plain.history[0]["style"]
    assert [tuple(s.image.shape[-2:]) for s in seen[5:7]] == [(48, 64), (96, 128)]
    assert r.timings["s_per_step"] > 0 and run_steps(cfg, (96, 128)) == 11


def test_pyramid_skips_tiny_and_empty_stages() -> None:
    cfg = make_config(size=512, steps=10, scales=((0.1, 5), (0.25, 0), (0.5, 7)))
    assert pyramid(cfg, (384, 512)) == [((192, 256), 7), ((384, 512), 10)]  # 51 px: skipped; 0 steps: skipped
    assert pyramid(cfg, (36, 48)) == [((36, 48), 10)]  # every coarse stage under 64 px
    assert pyramid(cfg, (384, 512), single=True) == [((384, 512), 10)]
    assert pyramid(cfg.replace(scales=None), (384, 512)) == [((384, 512), 10)]
    with pytest.raises(ConfigError, match="scales"):
        make_config(scales=((0.5, 3), (0.25, 3)))


def test_cli_scales_option(tmp_path, monkeypatch) -> None:
    from nst.data import image

    out = tmp_path / "o.png"
    argv = ["stylize", "--content", str(image("tubingen.jpg")), "--style", str(image("starry_night.jpg")),
            "--size", "72", "--steps", "2", "--scales", "0.9:1", "--quiet", "--out", str(out)]
    assert nst_main(argv) == 0 and out.exists()
    assert nst_main(argv[:-3] + ["none", "--quiet", "--out", str(out)]) == 0
    with pytest.raises(SystemExit):
        nst_main(argv[:-4] + ["0.5x3", "--quiet", "--out", str(out)])


def test_meancov_loss_and_option(content48, starry48) -> None:
    f, g = torch.rand(1, 6, 5, 5), torch.rand(1, 6, 5, 5) * 2
    loss = MeanCovLoss(mean_cov(f))
    assert float(loss(f)) < 1e-10 and float(loss(g)) > 0.1
    assert mean_cov(f).shape == (1, 6, 7)
    r = stylize(content48, [starry48], StyleConfig(size=48, steps=8, style_loss="meancov", device="cpu"))
    assert r.history[-1]["style"] < 0.7 * r.history[0]["style"]


def test_adam_iterate_average(content48, starry48) -> None:
    cfg = StyleConfig(size=48, steps=10, optimizer="adam", lr=0.05, device="cpu")
    plain = stylize(content48, [starry48], cfg).image
    avg = stylize(content48, [starry48], cfg.replace(ema_decay=0.5)).image
    assert not torch.equal(plain, avg) and (plain - avg).abs().mean() < 0.05  # an average of nearby iterates


def test_time_to_quality_quick_mode_prints_a_ratio(tmp_path) -> None:
    out = tmp_path / "ttq.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "time_to_quality.py"), "--quick", "--cache-dir", str(tmp_path),
         "--json", str(out), "--set", "steps=10", "--threads", "2"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "geometric-mean time-to-quality ratio nst/pastiche:" in proc.stdout
    data = json.loads(out.read_text())
    row = data["rows"][0]
    assert row["pastiche"]["steps"] == 6 and not row["pastiche"]["cached"] and row["pastiche"]["seconds"] > 0
    assert row["nst"]["seconds"] > 0 and row["nst"]["checkpoints"][-1][1] == 10
    assert row["ratio_default"] > 0 and data["geomean_ratio_default"] > 0
    # the reference is cached and reused on request
    again = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "time_to_quality.py"), "--quick", "--cache-dir", str(tmp_path),
         "--reuse-pastiche", "--pastiche-only", "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(out.read_text())["rows"][0]["pastiche"]["cached"]
