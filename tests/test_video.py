"""Video: PyAV round trip (frame count, fps, audio), fast mode through the CLI, temporal
consistency of the optimisation mode, flow warping, and RAFT's missing-weights error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nst import video
from nst.cli import main
from nst.data import image
from nst.errors import WeightsError
from nst.fast.network import NetConfig, TransformNet, save_model

DATA = Path("/work/shared/data/video")
pytestmark = pytest.mark.skipif(not (DATA / "bunny.mp4").is_file(), reason="video data not present")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """The first 12 frames of bunny.mp4 at 64 px, with its audio, written by our own writer."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    n = video.write_video(path, video.read_frames(DATA / "bunny.mp4", size=64, max_frames=12), 24,
                          audio_from=DATA / "bunny.mp4")
    assert n == 12
    return path


def test_clip_keeps_fps_frames_and_audio(clip):
    info = video.probe(clip)
    assert (info.fps, info.width, info.height, info.has_audio) == (24, 64, 36, True)
    assert video.count_frames(clip) == 12


def test_cli_video_fast_mode(clip, tmp_path, capsys):
    torch.manual_seed(0)
    model = save_model(TransformNet(NetConfig(width=4, n_residual=1)), tmp_path / "m.pt", ["random"])
    out = tmp_path / "out.mp4"
    assert main(["video", "--in", str(clip), "--out", str(out), "--mode", "fast", "--model", str(model),
                 "--device", "cpu", "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames"] == 12 and summary["fps"] == 24 and summary["warp_error"] > 0
    info = video.probe(out)
    assert video.count_frames(out) == 12 and info.fps == 24 and info.has_audio


def test_warp_follows_known_motion():
    frame = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    shifted = torch.roll(frame, shifts=3, dims=-1)  # content moved 3 px right
    flow = torch.zeros(24, 32, 2)
    flow[..., 0] = -3.0  # pixel x of `shifted` came from x-3 of `frame`
    warped = video.warp(frame, flow)
    assert torch.allclose(warped[..., 3:], shifted[..., 3:], atol=1e-5)
    back = flow.clone()
    fwd = -flow
    mask = video.consistency_mask(back, fwd)
    assert mask[..., 2:-2, 2:-2].min() == 1  # consistent flow: nothing masked inside
    assert video.consistency_mask(back, torch.zeros_like(fwd)).mean() < 0.1  # inconsistent: masked


def test_temporal_loss_reduces_warping_error():
    frames = list(video.read_frames(DATA / "sintel", size=64, max_frames=3))
    cfg = dict(steps=12, style_weight=20, device="cpu", precision="fp32", content_layers=["relu2_2"],
               style_layers=["relu1_1", "relu2_1", "relu3_1"])
    styles = [image("starry_night.jpg")]
    errors = {}
    for temporal in (False, True):
        fs = video.FrameStylizer("optim", styles=styles, config=cfg, temporal=temporal, temporal_weight=200,
                                 frame_steps=8)
        res = video.stylize_frames(frames, fs)
        assert res.frames == 3 and len(res.frame_errors) == 2
        errors[temporal] = res.warp_error
    assert errors[True] < 0.5 * errors[False], errors


def test_raft_missing_weights_is_clear(tmp_path, monkeypatch, clip, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(WeightsError, match=r"RAFT: optical-flow weights not found: .*torch hub cache.*--flow dis"):
        video.RAFTFlow()
    out = tmp_path / "o.mp4"
    assert main(["video", "--in", str(clip), "--out", str(out), "--mode", "optim", "--style",
                 str(image("wave.jpg")), "--flow", "raft", "--flow-weights", str(tmp_path / "raft.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nst: error: RAFT") and "raft.pth" in err and not out.exists()
