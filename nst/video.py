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

import functools
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
#: libx264's presets, fastest first (`write_video`'s `preset`).
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


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
    timings: dict | None = None,
    preset: str = "medium",
) -> int:
    """Encode frames (H.264, yuv420p) at `fps`, copying the audio of `audio_from` (up to the
    video's duration) when it has some.  Written to a temp file then renamed; returns the frame count.
    `preset`: x264's speed/size trade-off (`X264_PRESETS`; at one `crf` a faster preset makes a somewhat larger
    file of about the same quality: ``veryfast`` encodes a 640x360 stylised frame in half ``medium``'s time).
    `timings`: ``encode_s`` is increased by the wall seconds spent converting and encoding frames."""
    import av

    dest = Path(path)
    if dest.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"{dest}: output must be a video file ({', '.join(VIDEO_SUFFIXES)})")
    if preset not in X264_PRESETS:
        raise ConfigError(f"preset: unknown x264 preset '{preset}' (use {', '.join(X264_PRESETS)})")
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
                count = _encode_frames(out, frames, rate, crf, dest, timings, preset)
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


def _encode_frames(out, frames: Iterable[torch.Tensor], rate: Fraction, crf: int, dest: Path,
                   timings: dict | None = None, preset: str = "medium") -> int:
    """The frames as a new H.264 stream of `out` (sized by the first frame), flushed; returns their count."""
    import av

    stream = None
    count = 0
    spent = 0.0
    for frame in frames:
        t = time.perf_counter()
        # round(clamp(x, 0, 1) * 255) in one new tensor, clamped in place: the same bytes, a few times faster
        arr = frame[0].float().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        if stream is None:
            stream = out.add_stream("libx264", rate=rate)
            stream.height, stream.width = arr.shape[:2]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": preset}
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")  # HWC bytes
        for packet in stream.encode(vf):
            out.mux(packet)
        count += 1
        spent += time.perf_counter() - t
    if stream is None:
        raise NSTError(f"{dest}: no frames to write")
    t = time.perf_counter()
    for packet in stream.encode():
        out.mux(packet)
    if timings is not None:
        timings["encode_s"] = timings.get("encode_s", 0.0) + spent + time.perf_counter() - t
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
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(presets[preset])

    def clone(self) -> "DISFlow":
        """The same flow for another thread (one OpenCV DIS object must not run two frames at once)."""
        return DISFlow(self.preset)

    def prepare(self, image: torch.Tensor) -> np.ndarray:
        """What the flow reads of a frame (its 8-bit luminance): computed once per frame, used for both
        directions of a pair (`flow_pair`)."""
        return _gray_u8(image)

    def between(self, a: np.ndarray, b: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self._dis.calc(a, b, None))

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.between(self.prepare(a), self.prepare(b))


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


def flow_pair(flow, frame: torch.Tensor, prev: torch.Tensor, frame_prep=None, prev_prep=None):
    """``(flow t -> t-1, flow t-1 -> t, frame's prepared form, prev's prepared form)`` for a flow
    method; one with ``prepare``/``between`` (`DISFlow`) prepares each frame once (pass what an
    earlier pair prepared to reuse it), any other callable is called twice."""
    if not (hasattr(flow, "prepare") and hasattr(flow, "between")):
        return flow(frame, prev), flow(prev, frame), None, None
    frame_prep = flow.prepare(frame) if frame_prep is None else frame_prep
    prev_prep = flow.prepare(prev) if prev_prep is None else prev_prep
    return flow.between(frame_prep, prev_prep), flow.between(prev_prep, frame_prep), frame_prep, prev_prep


@functools.lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel coordinates (xs, ys) of an H x W image (cached: every frame of a clip warps at one size)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return xs, ys


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: ``out(x) = image(x + flow(x))`` (bilinear, border pixels repeated).  The one warp of
    the module: the temporal loss's start image, the warping error, the stabilisation of network frames."""
    h, w = flow.shape[:2]
    xs, ys = _pixel_grid(h, w)
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
                  mask: torch.Tensor, warped: torch.Tensor | None = None) -> float:
    """Masked MSE between a stylised frame and the previous stylised frame warped into it (`warped`:
    ``warp(prev_stylised, flow_back)`` when the caller has it already)."""
    if warped is None:
        warped = warp(prev_stylised, flow_back)
    return float(TemporalLoss(warped, mask)(stylised))


def soft_mask(mask: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """The consistency mask with a ramp inside its reliable regions: a pixel's weight is the share of
    reliable pixels in its (2r+1)^2 neighbourhood, 0 where the mask is 0.  Blending with it leaves no seam
    where a stabilised region meets a disoccluded one, and never reaches across an occlusion."""
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    return F.avg_pool2d(mask, k, stride=1, padding=radius, count_include_pad=False) * mask


def stabilise(out: torch.Tensor, warped_prev: torch.Tensor, mask: torch.Tensor, strength: float) -> torch.Tensor:
    """Temporal stabilisation of a network frame: ``(1 - a m) out + a m warped_prev`` with a = `strength`
    (0..1) and m = `soft_mask` of the occlusion mask: the previous output, carried along the flow, where the
    flow is reliable; the network's own frame where it is not (disocclusions, motion boundaries)."""
    if strength <= 0:
        return out
    return torch.lerp(out, warped_prev.to(out.dtype), soft_mask(mask).to(out.dtype) * strength)


def sequence_warping_errors(inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], flow=None) -> list[float]:
    """The warping error of every consecutive pair of `outputs`, flow and mask from `inputs` (by `flow`,
    default DIS): to score a clip's outputs afterwards, or with another flow than the one that made them."""
    flow = flow or DISFlow()
    errors, prep = [], None
    for t in range(1, min(len(inputs), len(outputs))):
        back, fwd, cur, _ = flow_pair(flow, inputs[t], inputs[t - 1], None, prep)
        prep = cur
        errors.append(warping_error(outputs[t], outputs[t - 1], back, consistency_mask(back, fwd)))
    return errors


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
    (previous input and output, flow) and accumulating the warping error.

    * `measure_every`: the warping error of every N-th frame pair (1: all); its flows are computed for
      those pairs only, unless the frame needs them anyway (stabilisation, the temporal optimisation).
    * `stabilize` (fast mode, 0..1): each network frame blended with the previous output warped into it
      where the occlusion mask allows (`stabilise`); 0 = the network's frames as they are.
    """

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
        measure_every: int = 1,
        stabilize: float = 0.0,
    ) -> None:
        if mode not in ("fast", "optim"):
            raise ConfigError(f"mode: unknown '{mode}' (use fast or optim)")
        if mode == "fast" and model is None:
            raise ConfigError("mode fast needs a model (--model)")
        if mode == "optim" and not styles:
            raise ConfigError("mode optim needs at least one style image (--style)")
        if temporal_weight < 0:
            raise ConfigError("temporal_weight: must be >= 0")
        if not 0 <= stabilize <= 1:
            raise ConfigError(f"stabilize: must be between 0 and 1, got {stabilize:g}")
        if stabilize and mode != "fast":
            raise ConfigError("stabilize: only for network frames (mode fast); the optimisation's temporal mode "
                              "has the temporal loss (temporal_weight)")
        if measure_every < 1:
            raise ConfigError(f"measure_every: must be >= 1, got {measure_every}")
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
        self.measure_every = measure_every
        self.stabilize = float(stabilize)
        self.prev_in: torch.Tensor | None = None
        self.prev_out: torch.Tensor | None = None
        self._prev_prep = None  # the flow's prepared form of prev_in, when it was computed
        self.pairs = 0  # frame pairs seen
        self.errors: list[float] = []
        #: wall seconds in each part: the first frame's network or optimisation (a compiled network compiles
        #: then), the later frames', their flows and masks, and their blend + warping error
        self.timings = {"first_frame_s": 0.0, "stylize_s": 0.0, "flow_s": 0.0, "temporal_s": 0.0}

    def close(self) -> None:
        """Nothing to release any more (starting images are passed as tensors); kept for callers."""

    def wants_flow(self, index: int) -> bool:
        """Whether frame `index` (0 = the first) needs the flows between it and the frame before."""
        if index == 0:
            return False
        measure = self.measure and (index - 1) % self.measure_every == 0
        return measure or self.stabilize > 0 or (self.mode == "optim" and self.temporal)

    def __call__(self, frame: torch.Tensor, styled: torch.Tensor | None = None, flows=None) -> torch.Tensor:
        """The output frame for `frame`.  `styled`, `flows`: the network's output for it and ``(flow t -> t-1,
        consistency mask)`` when they were computed elsewhere (fast mode: `stylize_video`'s parallel
        workers), so only the temporal part runs here."""
        index = self.pairs + 1 if self.prev_in is not None else 0
        measure = index > 0 and self.measure and self.pairs % self.measure_every == 0
        flow_back = mask = prep = None
        t0 = time.perf_counter()
        if flows is not None:
            flow_back, mask = flows
        elif self.wants_flow(index):
            flow_back, flow_fwd, prep, _ = flow_pair(self.flow, frame, self.prev_in, None, self._prev_prep)
            mask = consistency_mask(flow_back, flow_fwd)  # flow_back: t -> t-1, flow_fwd: t-1 -> t
        t1 = time.perf_counter()
        if self.mode == "fast":
            out = self.model(frame) if styled is None else styled
        else:
            out = self._optimise(frame, flow_back, mask)
        t2 = time.perf_counter()
        warped = None
        if flow_back is not None and (self.stabilize > 0 or measure):
            warped = warp(self.prev_out, flow_back)
            out = stabilise(out, warped, mask, self.stabilize)
        if measure:
            self.errors.append(warping_error(out, self.prev_out, flow_back, mask, warped=warped))
        self.timings["flow_s"] += t1 - t0
        if styled is None:
            self.timings["first_frame_s" if index == 0 else "stylize_s"] += t2 - t1
        self.timings["temporal_s"] += time.perf_counter() - t2
        self.pairs += index > 0
        self.prev_in, self.prev_out, self._prev_prep = frame, out, prep
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
        n = self.pairs + (1 if self.prev_out is not None else 0)
        err = float(np.mean(self.errors)) if self.errors else float("nan")
        return VideoResult(n, err, list(self.errors), seconds, self.mode,
                           {"temporal": self.mode == "optim" and self.temporal,
                            "temporal_weight": self.temporal_weight if self.mode == "optim" and self.temporal else 0.0,
                            "stabilize": self.stabilize, "flow": getattr(self.flow, "name", "custom"),
                            "measured_pairs": len(self.errors), "pairs": self.pairs, **self.timings})


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
    threads: bool | None = None,
    workers: int = 1,
    preset: str = "medium",
) -> VideoResult:
    """Read `src` (video file or frame folder), stylise every frame, write `dest` with the same
    frame rate and the source's audio; returns the warping-error summary.

    With `threads` (default: in fast mode, whose frames take milliseconds) decoding, stylising and
    encoding run in three threads with a few frames in flight between them, so the network is not idle
    while a frame is decoded or encoded; with `workers` > 1 (fast mode) that many threads run the network
    on consecutive frames at once, each with 1/`workers` of torch's intra-op threads (on a 2-core CPU two
    single-threaded networks beat one two-threaded one: no thread waits on the other inside a layer); the
    flows and stabilisation stay in frame order.  `preset`: the x264 preset (`write_video`).

    ``info``: the wall seconds of each part in its own thread(s): ``decode_s``, ``first_frame_s`` (the first
    frame's network: compiling it), then for the later frames ``stylize_s`` and ``flow_s`` (summed over the
    workers, which compute a frame's flows too), ``temporal_s``, and ``encode_s``; ``first_output_s`` (from
    the start to the first frame out) and ``steady_frames_per_s`` (the frames after the first, per second)."""
    if workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {workers}")
    info = probe(src, fps)
    threads = stylizer.mode == "fast" if threads is None else threads
    workers = workers if stylizer.mode == "fast" else 1
    timings = {"decode_s": 0.0, "encode_s": 0.0}
    frames: Iterable[torch.Tensor] = _timed(read_frames(src, size, max_frames), timings, "decode_s")
    if threads:
        frames = _threaded(frames, 8, "nst-video-decode")
    if workers > 1:
        pipeline: Iterable[torch.Tensor] = (stylizer(f, styled=o, flows=fl)
                                             for f, o, fl in _parallel_network(frames, stylizer, workers))
    else:
        pipeline = map(stylizer, frames)
    if threads:
        pipeline = _threaded(pipeline, 4, "nst-video-stylize")
    marks: list[float] = []
    intra = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(max(1, intra // workers))
    t0 = time.perf_counter()
    try:
        clocked = _clocked(pipeline, marks)
        write_video(dest, progress(clocked) if progress else clocked, info.fps,
                    audio_from=None if Path(src).is_dir() else src, timings=timings, preset=preset)
    finally:
        if hasattr(pipeline, "close"):
            pipeline.close()  # stops the threads when encoding failed
        stylizer.close()
        torch.set_num_threads(intra)
    res = stylizer.result(time.perf_counter() - t0)
    steady = (marks[2] - 1) / (marks[1] - marks[0]) if marks and marks[1] > marks[0] else 0.0
    res.info.update(fps=float(info.fps), has_audio=info.has_audio, source_frames=info.frames, threads=threads,
                    workers=workers, first_output_s=marks[0] - t0 if marks else 0.0, steady_frames_per_s=steady,
                    **timings)
    return res


def _clocked(iterable: Iterable, marks: list[float]) -> Iterator:
    """`iterable`'s items; `marks` becomes [time of the first, time of the last, count]."""
    for item in iterable:
        now = time.perf_counter()
        marks[:] = [now, now, 1] if not marks else [marks[0], now, marks[2] + 1]
        yield item


def _parallel_network(frames: Iterable[torch.Tensor], stylizer: FrameStylizer,
                      workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, object]]:
    """``(frame, network output, flows or None)`` in frame order, `workers` frames in the network at once
    (the first frame alone: a compiled network compiles on it).  The flows a frame needs (`wants_flow`) are
    computed by the same worker when the flow method can be cloned for a thread (DIS), else left to the
    stylizer (None)."""
    import threading
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()
    local = threading.local()
    clonable = hasattr(stylizer.flow, "clone")

    def run(index: int, frame: torch.Tensor, prev: torch.Tensor | None):
        t0 = time.perf_counter()
        out = stylizer.model(frame)
        t1 = time.perf_counter()
        flows = None
        if clonable and stylizer.wants_flow(index):
            if not hasattr(local, "flow"):
                local.flow = stylizer.flow.clone()
            back, fwd, _, _ = flow_pair(local.flow, frame, prev)
            flows = (back, consistency_mask(back, fwd))
        with lock:
            stylizer.timings["first_frame_s" if index == 0 else "stylize_s"] += t1 - t0
            stylizer.timings["flow_s"] += time.perf_counter() - t1
        return out, flows

    it = iter(frames)
    prev = next(it, None)
    if prev is None:
        return
    yield (prev, *run(0, prev, None))
    with ThreadPoolExecutor(workers, thread_name_prefix="nst-video-network") as pool:
        pending: deque = deque()
        try:
            for index, frame in enumerate(it, start=1):
                pending.append((frame, pool.submit(run, index, frame, prev)))
                prev = frame
                if len(pending) > workers:
                    f, job = pending.popleft()
                    yield (f, *job.result())
            while pending:
                f, job = pending.popleft()
                yield (f, *job.result())
        finally:
            for _, job in pending:
                job.cancel()


def _timed(iterable: Iterable, timings: dict, key: str) -> Iterator:
    """`iterable`'s items, adding the wall seconds spent producing them to ``timings[key]``."""
    it = iter(iterable)
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            timings[key] += time.perf_counter() - t
        yield item


_END = object()


def _threaded(iterable: Iterable, depth: int, name: str) -> Iterator:
    """`iterable` iterated in a background thread, up to `depth` items ahead of the consumer; its
    exception is raised here, and closing this generator stops the thread (after its current item)."""
    import queue
    import threading

    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in iterable:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # handed to the consumer
            put((_END, exc))
        finally:
            if hasattr(iterable, "close"):
                iterable.close()

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item, exc = items.get()
            if item is _END:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        worker.join()


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
