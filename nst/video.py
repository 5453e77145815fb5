"""Video style transfer: frames in and out (PyAV), optical flow, temporal consistency.

Modes
* ``fast``  — a trained transformation network applied to each frame.
* ``optim`` — per-frame optimisation (`nst.optimize.stylize`).  With
  ``temporal=True`` (Ruder et al. 2016) frame t starts from the stylised frame
  t-1 warped by optical flow and adds the occlusion-masked temporal loss
  (`nst.losses.TemporalLoss`); with ``temporal=False`` every frame is
  independent (the flickering baseline).

Optical flow comes from OpenCV's DIS (classical, no weights) or torchvision's
RAFT when its weights are on disk (explicit path or the torch hub cache; never
downloaded).  Every mode reports the temporal warping error: the mean masked
squared difference between each stylised frame and the previous stylised
frame warped into it, with flow and occlusion mask computed on the input
frames — so flicker is a number.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, ImageError, NSTError, WeightsError
from .images import load_image, resize
from .losses import TemporalLoss

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------- I/O


@dataclass
class VideoInfo:
    fps: Fraction
    frames: int  # as counted by the container (0 when unknown)
    width: int
    height: int
    has_audio: bool


def _open(path: Path):
    import av

    if not path.exists():
        raise ImageError(f"{path}: no such video file")
    try:
        return av.open(str(path))
    except Exception as exc:  # av.error.* for unreadable containers
        raise ImageError(f"{path}: cannot open video ({str(exc).splitlines()[0][:200]})") from None


def probe(path: str | os.PathLike, fps: float | None = None) -> VideoInfo:
    """Frame rate, frame count, size and audio presence of a video file or a folder of frames."""
    p = Path(path)
    if p.is_dir():
        files = frame_files(p)
        w, h = _pil_size(files[0])
        return VideoInfo(Fraction(fps or 24).limit_denominator(1001), len(files), w, h, False)
    with _open(p) as c:
        if not c.streams.video:
            raise ImageError(f"{p}: no video stream")
        v = c.streams.video[0]
        rate = v.average_rate or v.guessed_rate or Fraction(fps or 24)
        return VideoInfo(Fraction(rate), int(v.frames or 0), v.codec_context.width, v.codec_context.height,
                         bool(c.streams.audio))


def _pil_size(path: Path) -> tuple[int, int]:
    from .images import open_image

    return open_image(path).size


def frame_files(folder: Path) -> list[Path]:
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in FRAME_SUFFIXES and f.is_file())
    if not files:
        raise ImageError(f"{folder}: no frame images in the folder")
    return files


def work_size(width: int, height: int, size: int | None) -> tuple[int, int]:
    """(H, W) to process at: longest side `size` (or as is), both even (H.264 with yuv420p needs it)."""
    if size:
        s = size / max(width, height)
        width, height = round(width * s), round(height * s)
    return max(2, height - height % 2), max(2, width - width % 2)


def read_frames(path: str | os.PathLike, size: int | None = None,
                max_frames: int | None = None) -> Iterator[torch.Tensor]:
    """Frames as ``[1, 3, H, W]`` float tensors in [0, 1] (a video file, or a folder of frame images)."""
    p = Path(path)
    if p.is_dir():
        files = frame_files(p)[:max_frames]
        w, h = _pil_size(files[0])
        hw = work_size(w, h, size)
        for f in files:
            yield resize(load_image(f), hw)
        return
    with _open(p) as c:
        v = c.streams.video[0]
        hw = work_size(v.codec_context.width, v.codec_context.height, size)
        for i, frame in enumerate(c.decode(v)):
            if max_frames is not None and i >= max_frames:
                break
            arr = frame.to_ndarray(format="rgb24")
            t = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
            yield resize(t, hw)


def write_video(
    path: str | os.PathLike,
    frames: Iterable[torch.Tensor],
    fps: Fraction | float,
    audio_from: str | os.PathLike | None = None,
    crf: int = 18,
) -> int:
    """Encode frames (H.264, yuv420p) at `fps`, copying the audio of `audio_from` (up to the
    video's duration) when it has some.  Written to a temp file then renamed; returns the frame count."""
    import av

    dest = Path(path)
    if dest.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"{dest}: output must be a video file ({', '.join(VIDEO_SUFFIXES)})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(tmp, "w") as out:
            src = None
            src_audio = out_audio = None
            if audio_from is not None and Path(audio_from).is_file():
                src = av.open(str(audio_from))
                if src.streams.audio:
                    src_audio = src.streams.audio[0]
                    out_audio = out.add_stream_from_template(src_audio)
            try:
                count = _encode_frames(out, frames, rate, crf, dest)
                if src_audio is not None:
                    _copy_audio(src, src_audio, out, out_audio, count / rate)
            finally:
                if src is not None:
                    src.close()
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def _encode_frames(out, frames: Iterable[torch.Tensor], rate: Fraction, crf: int, dest: Path) -> int:
    """The frames as a new H.264 stream of `out` (sized by the first frame), flushed; returns their count."""
    import av

    stream = None
    count = 0
    for frame in frames:
        arr = (frame[0].clamp(0, 1).permute(1, 2, 0).mul(255).add(0.5).byte().cpu().numpy())
        if stream is None:
            stream = out.add_stream("libx264", rate=rate)
            stream.height, stream.width = arr.shape[:2]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
        for packet in stream.encode(vf):
            out.mux(packet)
        count += 1
    if stream is None:
        raise NSTError(f"{dest}: no frames to write")
    for packet in stream.encode():
        out.mux(packet)
    return count


def _copy_audio(src, src_audio, out, out_audio, duration: Fraction) -> None:
    """The packets of `src_audio` that start within the video's `duration` (seconds), into `out_audio`."""
    for packet in src.demux(src_audio):
        if packet.dts is None:
            continue
        if packet.pts is not None and packet.pts * packet.time_base >= duration:
            break
        packet.stream = out_audio
        out.mux(packet)


def count_frames(path: str | os.PathLike) -> int:
    """Decode and count the frames (the container's count can be missing)."""
    with _open(Path(path)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


# --------------------------------------------------------------------------- optical flow


def _gray_u8(image: torch.Tensor) -> np.ndarray:
    from .color import luminance

    return (luminance(image)[0, 0].clamp(0, 1).mul(255).add(0.5).byte().numpy())


class DISFlow:
    """OpenCV's Dense Inverse Search flow (classical, no weights).  ``flow(a, b)[y, x]`` is the
    displacement (dx, dy) with ``a(x) ~ b(x + flow(x))``."""

    name = "dis"

    def __init__(self, preset: str = "medium") -> None:
        import cv2

        presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                   "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
        if preset not in presets:
            raise ConfigError(f"flow preset: unknown '{preset}' (use {', '.join(presets)})")
        self._dis = cv2.DISOpticalFlow_create(presets[preset])

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        flow = self._dis.calc(_gray_u8(a), _gray_u8(b), None)
        return torch.from_numpy(flow)


class RAFTFlow:
    """torchvision RAFT (large), weights from a file or the torch hub cache only (never downloaded)."""

    name = "raft"

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> None:
        from torchvision.models.optical_flow import Raft_Large_Weights, raft_large

        from .backbones import hub_checkpoint

        enum = Raft_Large_Weights.C_T_SKHT_V2
        path = Path(weights).expanduser() if weights else hub_checkpoint(enum.url)
        if not path.is_file():
            where = f"file {path}" if weights else f"{path} (torch hub cache)"
            raise WeightsError(
                f"RAFT: optical-flow weights not found: {where}. Provide them with --flow-weights PATH "
                f"(torchvision {enum}, {os.path.basename(enum.url)}), or use --flow dis (OpenCV, no weights)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net = raft_large(weights=None, progress=False)
            net.load_state_dict(state)
        except Exception as exc:
            raise WeightsError(f"RAFT: cannot load weights from {path}: {str(exc).splitlines()[0][:200]}") from None
        self.device = torch.device(device)
        self.net = net.eval().to(self.device)

    @torch.inference_mode()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h, w = a.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        pa = F.pad(a, (0, pw, 0, ph), mode="replicate").to(self.device) * 2 - 1
        pb = F.pad(b, (0, pw, 0, ph), mode="replicate").to(self.device) * 2 - 1
        flow = self.net(pa, pb)[-1][0, :, :h, :w]
        return flow.permute(1, 2, 0).float().cpu()


def make_flow(method: str = "dis", weights: str | None = None, device: str | torch.device = "cpu"):
    if method == "dis":
        return DISFlow()
    if method == "raft":
        return RAFTFlow(weights, device)
    raise ConfigError(f"flow: unknown method '{method}' (use dis or raft)")


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: ``out(x) = image(x + flow(x))`` (bilinear, border pixels repeated)."""
    h, w = flow.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    gx = (xs + flow[..., 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[..., 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1).unsqueeze(0).to(image)
    return F.grid_sample(image, grid.expand(image.shape[0], -1, -1, -1), mode="bilinear",
                         padding_mode="border", align_corners=True)


def consistency_mask(flow_back: torch.Tensor, flow_fwd: torch.Tensor) -> torch.Tensor:
    """Ruder et al.'s reliability mask ``[1, 1, H, W]`` for ``flow_back`` (t -> t-1):

    0 where the forward-backward check fails (occlusion:
    ``|w~ + w|^2 > 0.01 (|w~|^2 + |w|^2) + 0.5``, w~ = the forward flow t-1 -> t sampled
    at the backward flow's target) or on motion boundaries
    (``|grad w|^2 > 0.01 |w|^2 + 0.002``), 1 elsewhere.
    """
    w = flow_back.permute(2, 0, 1).unsqueeze(0)  # [1, 2, H, W]
    wf = warp(flow_fwd.permute(2, 0, 1).unsqueeze(0), flow_back)
    occluded = (wf + w).pow(2).sum(1) > 0.01 * (wf.pow(2).sum(1) + w.pow(2).sum(1)) + 0.5
    gx = torch.zeros_like(w)
    gy = torch.zeros_like(w)
    gx[..., :, :-1] = w[..., :, 1:] - w[..., :, :-1]
    gy[..., :-1, :] = w[..., 1:, :] - w[..., :-1, :]
    boundary = (gx.pow(2) + gy.pow(2)).sum(1) > 0.01 * w.pow(2).sum(1) + 0.002
    return (~(occluded | boundary)).float().unsqueeze(1)


def warping_error(stylised: torch.Tensor, prev_stylised: torch.Tensor, flow_back: torch.Tensor,
                  mask: torch.Tensor) -> float:
    """Masked MSE between a stylised frame and the previous stylised frame warped into it."""
    return float(TemporalLoss(warp(prev_stylised, flow_back), mask)(stylised))


# --------------------------------------------------------------------------- stylisation


@dataclass
class VideoResult:
    frames: int
    warp_error: float  # mean over frame pairs (nan with one frame)
    frame_errors: list[float]
    seconds: float
    mode: str
    info: dict = field(default_factory=dict)

    @property
    def fps_processed(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


class FrameStylizer:
    """Stylises a stream of frames one at a time, keeping what the next frame needs
    (previous input and output, flow) and accumulating the warping error."""

    def __init__(
        self,
        mode: str,
        *,
        model=None,
        styles: Sequence | None = None,
        config=None,
        temporal: bool = True,
        temporal_weight: float = 200.0,
        frame_steps: int | None = None,
        flow=None,
        measure: bool = True,
    ) -> None:
        if mode not in ("fast", "optim"):
            raise ConfigError(f"mode: unknown '{mode}' (use fast or optim)")
        if mode == "fast" and model is None:
            raise ConfigError("mode fast needs a model (--model)")
        if mode == "optim" and not styles:
            raise ConfigError("mode optim needs at least one style image (--style)")
        if temporal_weight < 0:
            raise ConfigError("temporal_weight: must be >= 0")
        from .config import StyleConfig, make_config

        self.mode = mode
        self.model = model
        self.styles = list(styles or [])
        self.config = config if isinstance(config, StyleConfig) else make_config(**(config or {}))
        self.temporal = temporal
        self.temporal_weight = temporal_weight
        self.frame_steps = frame_steps
        self.flow = flow or DISFlow()
        self.measure = measure
        self.prev_in: torch.Tensor | None = None
        self.prev_out: torch.Tensor | None = None
        self.errors: list[float] = []

    def close(self) -> None:
        """Nothing to release any more (starting images are passed as tensors); kept for callers."""

    def __call__(self, frame: torch.Tensor) -> torch.Tensor:
        need_flow = self.prev_in is not None and (self.measure or (self.mode == "optim" and self.temporal))
        flow_back = mask = None
        if need_flow:
            flow_back = self.flow(frame, self.prev_in)  # t -> t-1
            flow_fwd = self.flow(self.prev_in, frame)  # t-1 -> t
            mask = consistency_mask(flow_back, flow_fwd)
        if self.mode == "fast":
            out = self.model(frame)
        else:
            out = self._optimise(frame, flow_back, mask)
        if self.measure and flow_back is not None:
            self.errors.append(warping_error(out, self.prev_out, flow_back, mask))
        self.prev_in, self.prev_out = frame, out
        return out

    def _optimise(self, frame: torch.Tensor, flow_back, mask) -> torch.Tensor:
        from .optimize import stylize

        cfg = self.config.replace(size=max(frame.shape[-2:]))
        extra = init = None
        if self.prev_out is not None and self.temporal:
            warped = warp(self.prev_out, flow_back).clamp(0, 1)
            if cfg.preserve_color == "luminance":  # the optimised image is grey in this mode
                from .color import gray3, luminance

                warped = gray3(luminance(warped)).clamp(0, 1)
            init = warped  # the frame starts from the previous output, warped into it
            if self.frame_steps is not None:
                cfg = cfg.replace(steps=self.frame_steps)
            if self.temporal_weight > 0:
                extra = [("temporal", self.temporal_weight, TemporalLoss(warped, mask))]
        elif self.prev_out is not None and self.frame_steps is not None:
            cfg = cfg.replace(steps=self.frame_steps)
        return stylize(frame, self.styles, cfg, extra_terms=extra, init=init).image

    def result(self, seconds: float) -> VideoResult:
        n = len(self.errors) + (1 if self.prev_out is not None else 0)
        err = float(np.mean(self.errors)) if self.errors else float("nan")
        return VideoResult(n, err, list(self.errors), seconds, self.mode,
                           {"temporal": self.mode == "optim" and self.temporal,
                            "temporal_weight": self.temporal_weight if self.mode == "optim" and self.temporal else 0.0,
                            "flow": getattr(self.flow, "name", "custom")})


def stylize_frames(frames: Iterable[torch.Tensor], stylizer: FrameStylizer,
                   sink: Callable[[torch.Tensor], None] | None = None, progress=None) -> VideoResult:
    """Run `stylizer` over `frames`, handing each output to `sink`; returns the warping-error summary."""
    t0 = time.perf_counter()
    try:
        for frame in progress(frames) if progress else frames:
            out = stylizer(frame)
            if sink is not None:
                sink(out)
    finally:
        stylizer.close()
    return stylizer.result(time.perf_counter() - t0)


def stylize_video(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    stylizer: FrameStylizer,
    *,
    size: int | None = None,
    max_frames: int | None = None,
    fps: float | None = None,
    progress=None,
) -> VideoResult:
    """Read `src` (video file or frame folder), stylise every frame, write `dest` with the same
    frame rate and the source's audio; returns the warping-error summary."""
    info = probe(src, fps)
    results: list[VideoResult] = []

    def outputs() -> Iterator[torch.Tensor]:
        gen = read_frames(src, size, max_frames)
        t0 = time.perf_counter()
        try:
            for frame in progress(gen) if progress else gen:
                yield stylizer(frame)
        finally:
            stylizer.close()
            results.append(stylizer.result(time.perf_counter() - t0))

    write_video(dest, outputs(), info.fps, audio_from=None if Path(src).is_dir() else src)
    res = results[0]
    res.info.update(fps=float(info.fps), has_audio=info.has_audio, source_frames=info.frames)
    return res


def film_strip(inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], n: int = 4,
               gap: int = 2) -> torch.Tensor:
    """`n` evenly spaced frames side by side: the input frames on top, the stylised ones below."""
    if not outputs:
        raise NSTError("film strip: no frames")
    k = min(n, len(outputs))
    idx = sorted({round(i * (len(outputs) - 1) / max(k - 1, 1)) for i in range(k)})
    h, w = outputs[0].shape[-2:]
    strip = torch.ones(1, 3, 2 * h + gap, len(idx) * (w + gap) - gap)
    for j, i in enumerate(idx):
        x = j * (w + gap)
        strip[..., :h, x : x + w] = resize(inputs[i].float().cpu(), (h, w)).clamp(0, 1)
        strip[..., h + gap :, x : x + w] = outputs[i].float().cpu().clamp(0, 1)
    return strip
