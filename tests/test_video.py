"""Video: PyAV round trip (frame count, fps, audio), fast mode through the CLI, temporal
consistency of the optimisation mode, stabilised network frames, the threaded pipeline, flow
warping, the folded output convolution, and RAFT's missing-weights error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nst import video
from nst.cli import main
from nst.data import image
from nst.errors import ConfigError, WeightsError
from nst.fast.fold import fold_output_conv
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
    assert summary["measured_pairs"] == 1  # fast mode without --stabilize: every 24th pair (pair 0 here)
    assert summary["stylize_frames_per_s"] > 0 and summary["command_frames_per_s"] > 0
    assert set(summary["ms_per_frame"]) == {"decode", "flow", "stylize", "temporal", "encode"}
    info = video.probe(out)
    assert video.count_frames(out) == 12 and info.fps == 24 and info.has_audio
    errors = {}
    for a in ("0", "0.8"):
        assert main(["video", "--in", str(clip), "--out", str(out), "--mode", "fast", "--model", str(model),
                     "--device", "cpu", "--stabilize", a, "--warp-error-every", "1", "--json", "--quiet"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["measured_pairs"] == 11 and summary["stabilize"] == float(a)
        errors[a] = summary["warp_error"]
    assert errors["0.8"] < 0.5 * errors["0"], errors
    assert main(["video", "--in", str(clip), "--out", str(tmp_path / "x.mp4"), "--mode", "fast", "--model",
                 str(model), "--stabilize", "1.5"]) == 2
    assert "--stabilize: must be between 0 and 1" in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()


@pytest.fixture(scope="module")
def sintel() -> list[torch.Tensor]:
    return list(video.read_frames(DATA / "sintel", size=96, max_frames=8))


def _net(seed: int = 0):
    """An untrained network as `nst video` runs one (a `Stylizer`: fp32 here, outputs clamped to [0, 1])."""
    from nst.fast.infer import Stylizer

    torch.manual_seed(seed)
    return Stylizer(TransformNet(NetConfig(width=4, n_residual=1)), precision="fp32", device="cpu")


def _outputs(frames, stylizer) -> list[torch.Tensor]:
    outs: list[torch.Tensor] = []
    video.stylize_frames(frames, stylizer, sink=outs.append)
    return outs


def test_stabilize_lowers_warping_error_and_zero_is_plain(sintel):
    net = _net()
    plain = [net(f) for f in sintel]
    res = {}
    outs = {}
    for a in (0.0, 0.8):
        fs = video.FrameStylizer("fast", model=net, stabilize=a)
        outs[a] = _outputs(sintel, fs)
        res[a] = fs.result(1.0)
        assert res[a].frames == 8 and len(res[a].frame_errors) == 7
    # a = 0: exactly the network's frames (measuring the error changes nothing)
    assert all(torch.equal(o, p) for o, p in zip(outs[0.0], plain))
    assert res[0.8].warp_error < 0.5 * res[0.0].warp_error, (res[0.8].warp_error, res[0.0].warp_error)
    # also on a flow the stabilisation did not use (DIS's ultrafast preset instead of medium)
    other = video.DISFlow("ultrafast")
    assert (sum(video.sequence_warping_errors(sintel, outs[0.8], other))
            < 0.7 * sum(video.sequence_warping_errors(sintel, outs[0.0], other)))
    # stabilised frames stay frames: in range, and the network's own frame where the flow is unreliable
    assert all(o.min() >= 0 and o.max() <= 1 for o in outs[0.8])
    assert torch.equal(outs[0.8][0], plain[0])


def test_stabilise_follows_the_mask():
    out, warped = torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)
    mask = torch.ones(1, 1, 16, 16)
    mask[..., :, :8] = 0  # left half occluded
    y = video.stabilise(out, warped, mask, 0.5)
    assert y[..., :, :8].max() == 0  # occluded: the network's frame
    assert torch.allclose(y[..., :, 10:], torch.full_like(y[..., :, 10:], 0.5))  # reliable: the blend
    assert torch.allclose(y[..., 0, 8:10], torch.tensor([0.3, 0.4]))  # a ramp, no seam, at the mask's edge
    assert torch.equal(video.stabilise(out, warped, mask, 0.0), out)


def test_measure_every_and_flows_only_when_needed(sintel):
    calls = []

    class Counting(video.DISFlow):
        def between(self, a, b):
            calls.append(1)
            return super().between(a, b)

    net = _net()
    fs = video.FrameStylizer("fast", model=net, flow=Counting(), measure_every=3)
    _outputs(sintel, fs)
    assert fs.result(1.0).info["measured_pairs"] == 3 and len(calls) == 6  # pairs 0, 3, 6: two flows each
    calls.clear()
    fs = video.FrameStylizer("fast", model=net, flow=Counting(), measure=False)
    _outputs(sintel, fs)
    assert calls == [] and fs.result(1.0).frames == 8
    with pytest.raises(ConfigError, match="stabilize: only for network frames"):
        video.FrameStylizer("optim", styles=[torch.rand(1, 3, 8, 8)], stabilize=0.5)


def test_threaded_pipeline_matches_serial_and_fails_cleanly(clip, tmp_path):
    net = _net()
    outs = {}
    errors = {}
    for name, kw in {"serial": dict(threads=False), "threads": dict(threads=True, workers=2)}.items():
        fs = video.FrameStylizer("fast", model=net, stabilize=0.5, measure_every=2)
        res = video.stylize_video(clip, tmp_path / f"{name}.mp4", fs, **kw)
        assert res.frames == 12 and res.info["steady_frames_per_s"] > 0 and res.info["measured_pairs"] == 6
        outs[name] = list(video.read_frames(tmp_path / f"{name}.mp4"))
        errors[name] = res.frame_errors
    # same frames in the same order, the workers' flows (their own DIS objects) equal to the serial ones
    assert all(torch.equal(a, b) for a, b in zip(outs["serial"], outs["threads"]))
    assert errors["serial"] == errors["threads"]

    calls = []

    def failing(frame):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("network broke on frame 5")
        return net(frame)

    dest = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError, match="frame 5"):
        video.stylize_video(clip, dest, video.FrameStylizer("fast", model=failing, measure=False), workers=2)
    assert not dest.exists() and not list(tmp_path.glob(".broken*"))


@torch.no_grad()
@pytest.mark.parametrize("hw", [(36, 64), (37, 51)])
def test_folded_output_conv_is_the_same_network(hw):
    net = TransformNet(NetConfig(width=4, n_residual=1))
    torch.manual_seed(1)
    x = torch.rand(2, 3, *hw)
    ref = net(x)
    fold_output_conv(net)
    assert type(net.out).__name__ == "PhaseConv"
    assert torch.allclose(net(x), ref, atol=1e-5)


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
