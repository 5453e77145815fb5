"""Train a transformation network on COCO (or any image folder) with the shared perceptual losses.

`train(config, callback=...)` is a plain function: Prefect/MLflow adapters call
it and receive progress through the callback.  The loss network comes from
`nst.backbones` / `nst.features` and the loss is `nst.losses.PerceptualLoss`
(content targets change with every batch, so a loss object is made per step
around the style Gram targets that are computed once).

Determinism: the network initialisation, the sample order and every random
crop derive from `seed` and the global sample index, so a run resumed from a
checkpoint sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import backbones
from ..config import format_validation_error
from ..errors import ConfigError, DivergedError, ImageError
from ..features import FeatureExtractor, autocast_context, loss_network
from ..images import atomic_write, decode_jpeg, encode_jpeg, load_image, resize
from ..losses import PerceptualLoss, gram_matrix, normalised_layer_weights
from .network import NetConfig, TransformNet, model_payload, save_model

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CKPT_FORMAT = "nst-fast-ckpt/1"
#: Settings that may differ between a run and its resumption.
RESUMABLE = ("steps", "checkpoint", "checkpoint_every", "log_every", "val_every", "out", "resume", "workers", "device",
             "compile", "eval_photos", "eval_every", "eval_size", "keep_best")
#: `compile="auto"` compiles only runs at least this long: compiling costs ~45 s on a 2-core CPU (a few
#: seconds once inductor's cache holds the graphs) and saves ~0.1-0.2 s per step there.
COMPILE_MIN_STEPS = 300


class TrainConfig(BaseModel):
    """Every setting of one feed-forward training run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    styles: tuple[str, ...] = Field(..., min_length=1, description="style image files (several: conditional IN)")
    images: str = Field(..., description="folder of training images (COCO's train2014/ or any folder)")
    coco: Optional[str] = Field(None, description="COCO annotation JSON listing the images to use")
    size: int = Field(256, ge=16, le=2048, description="square training crop, pixels")
    style_size: Optional[int] = Field(None, gt=0, description="longest side of the style images (default: size)")
    batch_size: int = Field(4, ge=1, le=256)
    steps: int = Field(2000, ge=0, le=10_000_000)
    lr: float = Field(1e-3, gt=0)
    content_weight: float = Field(1.0, ge=0)
    style_weight: float = Field(10.0, ge=0)
    tv_weight: float = Field(0.0, ge=0)
    backbone: str = "vgg19"
    weights: Optional[str] = None
    pooling: Literal["max", "avg"] = "avg"
    content_layers: Optional[tuple[str, ...]] = Field(
        None, description="default: the backbone's feed-forward layers (VGG: relu2_2, Johnson et al.)")
    style_layers: Optional[tuple[str, ...]] = Field(
        None, description="default: the backbone's feed-forward layers (VGG: relu1_1 ... relu4_1)")
    norm: Literal["instance", "batch"] = NetConfig.norm
    width: int = Field(NetConfig.width, ge=1, le=256, description="filters of the first conv (32 in the paper)")
    n_residual: int = Field(NetConfig.n_residual, ge=0, le=32, description="residual blocks (5 in the paper)")
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    workers: int = Field(0, ge=0, le=64, description="data-loading processes")
    log_every: int = Field(1, ge=1)
    val_image: Optional[str] = Field(None, description="fixed validation image (default: the first training image)")
    val_size: int = Field(256, ge=16, le=4096)
    val_every: int = Field(0, ge=0, description="stylise the validation image every N steps (0: only at the end)")
    eval_photos: tuple[str, ...] = Field(
        (), description="validation photos (not training images) scored by the evaluator during training")
    eval_every: int = Field(0, ge=0, description="score the validation photos every N steps (0: only at the end)")
    eval_size: int = Field(512, ge=16, le=4096, description="longest side the validation photos are stylised at")
    keep_best: bool = Field(False, description="save the network of the best validation check (lowest content "
                                               "x style distance) instead of the last one")
    checkpoint: Optional[str] = Field(None, description="checkpoint file (written atomically)")
    checkpoint_every: int = Field(0, ge=0, description="write the checkpoint every N steps (0: only at the end)")
    resume: bool = True
    out: Optional[str] = Field(None, description="final model file")
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description=f"torch.compile the network and the loss (auto: runs of >= {COMPILE_MIN_STEPS} steps)")

    def net_config(self) -> NetConfig:
        """The transformation network this run trains (one style: instance/batch norm; several: conditional)."""
        return NetConfig(norm=self.norm, n_styles=len(self.styles), width=self.width, n_residual=self.n_residual)


def make_train_config(**values) -> TrainConfig:
    """Build a `TrainConfig`; invalid values become one-line `ConfigError`s."""
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "train")) from None


@dataclass
class TrainStep:
    """What the callback sees: losses of `step` and, on validation steps, the stylised validation image."""

    step: int  # 1-based
    total_steps: int
    losses: dict[str, float]
    elapsed: float
    images_per_s: float
    val_image: torch.Tensor | None = None  # [1, 3, H, W*n_styles] in [0, 1], CPU
    scores: dict[str, float] | None = None  # evaluator distances of the validation photos, on eval steps


@dataclass
class TrainResult:
    net: TransformNet
    history: list[dict[str, float]]
    timings: dict[str, float]
    info: dict[str, object]
    model_path: Path | None
    val_image: torch.Tensor | None
    scores: dict[str, float] | None = None  # the last evaluator scores of the validation photos
    #: (step, JPEG) of every validation image of the training, all sittings (`evolution_frames` decodes)
    evolution: list[tuple[int, torch.Tensor]] = field(default_factory=list)


# --------------------------------------------------------------------------- data


def training_files(images: str | os.PathLike, coco: str | os.PathLike | None = None) -> list[Path]:
    """The training images: those a COCO annotation file lists (pycocotools), or every image in a folder."""
    root = Path(images)
    if not root.is_dir():
        raise ImageError(f"{root}: training image folder not found")
    if coco is None:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise ImageError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        return files
    from pycocotools.coco import COCO

    ann = Path(coco)
    if not ann.is_file():
        raise ImageError(f"{ann}: COCO annotation file not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            api = COCO(str(ann))
    except Exception as exc:
        raise ImageError(f"{ann}: not a COCO annotation file ({type(exc).__name__}: {exc})") from None
    infos = api.loadImgs(sorted(api.getImgIds()))
    files = [root / info["file_name"] for info in infos]
    missing = [f for f in files if not f.is_file()]
    if not files:
        raise ImageError(f"{ann}: lists no images")
    if missing:
        raise ImageError(f"{root}: {len(missing)} of {len(files)} images listed in {ann.name} are missing, "
                         f"e.g. {missing[0].name}")
    return files


class CropDataset(torch.utils.data.Dataset):
    """Item k = a random square crop of the image at position k of a per-epoch shuffle.

    Everything random depends only on (seed, k): resumable and worker-count independent.
    """

    def __init__(self, files: list[Path], size: int, seed: int) -> None:
        self.files, self.size, self.seed = files, size, seed
        self._perms: dict[int, list[int]] = {}

    def __len__(self) -> int:  # indexed by global sample number; the sampler bounds it
        return 2**62

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(len(self.files), generator=g).tolist()}
        return self._perms[epoch]

    def __getitem__(self, k: int) -> torch.Tensor:
        n = len(self.files)
        path = self.files[self._order(k // n)[k % n]]
        img = load_image(path)
        h, w = img.shape[-2:]
        scale = self.size / min(h, w)
        nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        img = resize(img, (nh, nw))
        g = torch.Generator().manual_seed((self.seed * 2_654_435_761 + k) % (2**63))
        top = int(torch.randint(0, nh - self.size + 1, (1,), generator=g))
        left = int(torch.randint(0, nw - self.size + 1, (1,), generator=g))
        return img[0, :, top : top + self.size, left : left + self.size].contiguous()


def batches(dataset: CropDataset, batch_size: int, start_step: int, steps: int, workers: int):
    sampler = range(start_step * batch_size, steps * batch_size)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=False,
        persistent_workers=False, pin_memory=torch.cuda.is_available(),
    )


# --------------------------------------------------------------------------- training


def _style_name(path: str) -> str:
    return Path(path).stem


def _config_mismatch(saved: dict, config: TrainConfig) -> str | None:
    now = config.model_dump()
    for k, v in now.items():
        if k in RESUMABLE:
            continue
        old = saved.get(k)
        if isinstance(v, tuple):
            old = tuple(old) if old is not None else None
        if old != v:
            return f"{k} (checkpoint: {old!r}, now: {v!r})"
    return None


class StepTimer:
    """Seconds spent in each part of a training step, summed over steps (for benchmarks/bench_train.py).

    `lap(name)` charges the time since the previous lap to `name`; on CUDA it synchronises first, so
    asynchronous kernels are charged to the part that launched them.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}
        self._t = time.perf_counter()

    def start(self) -> None:
        self._sync()
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        self._sync()
        now = time.perf_counter()
        self.totals[name] = self.totals.get(name, 0.0) + now - self._t
        self._t = now

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass
class _Training:
    """Everything a training step needs, built once by `_prepare`."""

    config: TrainConfig
    device: torch.device
    precision: str
    backbone: backbones.Backbone
    content_layers: list[str]
    style_layers: list[str]
    content_weights: dict[str, float]
    style_weights: dict[str, float]
    extractor: FeatureExtractor
    content_extractor: FeatureExtractor
    losses: list[PerceptualLoss]  # one per style; content targets swapped per batch
    net: TransformNet
    opt: torch.optim.Optimizer
    style_vecs: list[torch.Tensor]
    files: list[Path]
    run_net: Callable[..., torch.Tensor]  # `net`, or its compiled form
    run_losses: list[Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]]
    compiled: bool = False
    best: dict | None = None  # keep_best: {"step", "state_dict", "scores"} of the best validation check
    #: the validation image at every validation step, as (step, JPEG bytes): the "evolution over the steps"
    #: figure, kept in the checkpoint (so it spans sittings) and in the model file
    evolution: list[tuple[int, torch.Tensor]] = field(default_factory=list)


def _prepare(config: TrainConfig) -> _Training:
    """Loss network, style Gram targets, transformation network and optimiser (seeded)."""
    for s in (*config.styles, *config.eval_photos):
        load_image(s, size=16)  # fail on a bad style or validation file before anything else
    files = training_files(config.images, config.coco)

    lossnet = loss_network(config, feed_forward=True)
    device, precision, backbone = lossnet.device, lossnet.precision, lossnet.backbone
    content_layers, style_layers, extractor = lossnet.content_layers, lossnet.style_layers, lossnet.extractor
    content_extractor = FeatureExtractor(backbone, content_layers, precision)
    content_weights = normalised_layer_weights(content_layers, None)
    style_weights = normalised_layer_weights(style_layers, None)

    style_size = config.style_size or config.size
    losses: list[PerceptualLoss] = []
    with torch.no_grad():
        probe = content_extractor(torch.zeros(1, 3, config.size, config.size, device=device))
        for s in config.styles:
            feats = extractor(load_image(s, size=style_size).to(device))
            grams = {k: gram_matrix(feats[k]).detach() for k in style_layers}
            losses.append(PerceptualLoss(probe, content_weights, [(1.0, grams)], style_weights,
                                         content_weight=config.content_weight, style_weight=config.style_weight,
                                         tv_weight=config.tv_weight))

    torch.manual_seed(config.seed)
    net = TransformNet(config.net_config()).to(device).to(memory_format=torch.channels_last)
    # fused: one kernel for all parameters instead of a dozen small ops per tensor (CPU and CUDA)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, fused=device.type in ("cpu", "cuda"))
    style_vecs = [net.style_vector(i, device) for i in range(len(config.styles))]
    t = _Training(config, device, precision, backbone, content_layers, style_layers, content_weights, style_weights,
                  extractor, content_extractor, losses, net, opt, style_vecs, files, net, list(losses))
    if _should_compile(config, device):
        _compile(t)
    return t


def _should_compile(config: TrainConfig, device: torch.device) -> bool:
    if config.compile == "off":
        return False
    if config.compile == "on":
        return True
    if device.type == "cpu" and shutil.which("g++") is None and shutil.which("c++") is None:
        return False  # inductor's CPU code needs a C++ compiler
    return config.steps >= COMPILE_MIN_STEPS


def _compile(t: _Training) -> None:
    """Compile the transformation network, the loss network and the loss terms (shapes never change)."""
    t.run_net = torch.compile(t.net)
    t.extractor.compile()
    t.content_extractor.compile()
    t.run_losses = [torch.compile(loss) for loss in t.losses]
    t.compiled = True


def _uncompile(t: _Training, exc: Exception) -> None:
    """`compile="auto"` and inductor failed (no headers, unsupported platform): train eagerly."""
    warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                  "training without it", RuntimeWarning, stacklevel=3)
    t.run_net = t.net
    t.extractor.uncompile()
    t.content_extractor.uncompile()
    t.run_losses = list(t.losses)
    t.compiled = False


def _train_step(t: _Training, batch: torch.Tensor, step: int,
                timer: StepTimer | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """One optimiser step on `batch` (1-based `step` picks the style, round robin as in Dumoulin et al.).

    Returns the loss terms (tensors, not yet synchronised) and the style index used.
    """
    cfg = t.config
    lap = timer.lap if timer is not None else (lambda name: None)
    x = batch.to(t.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    s = (step - 1) % len(cfg.styles)
    with torch.no_grad():
        content_feats = t.content_extractor(x)
    lap("content targets (loss network, no grad)")
    with autocast_context(t.device, t.precision):
        y = t.run_net(x, t.style_vecs[s])
    lap("transformer forward")
    t.losses[s].set_content_targets({k: content_feats[k] for k in t.content_layers})
    total, terms = t.run_losses[s](y.float(), t.extractor(y))
    lap("loss network forward + losses")
    if timer is not None and y.requires_grad:
        y.register_hook(lambda g: lap("loss network backward"))  # the gradient has reached the output
    t.opt.zero_grad(set_to_none=True)
    total.backward()
    lap("transformer backward")
    t.opt.step()
    lap("optimizer")
    return terms, s


def _first_or_next_step(t: _Training, batch: torch.Tensor, step: int, timer: StepTimer | None,
                        first: bool) -> tuple[dict[str, torch.Tensor], int]:
    """`_train_step`; the first compiled step of an `auto` run falls back to eager if inductor fails."""
    if not (first and t.compiled and t.config.compile == "auto"):
        return _train_step(t, batch, step, timer)
    try:
        return _train_step(t, batch, step, timer)
    except Exception as exc:  # noqa: BLE001 - any compiler failure; the eager retry re-raises real errors
        _uncompile(t, exc)
        return _train_step(t, batch, step, timer)


def train(
    config: TrainConfig | dict,
    *,
    callback: Callable[[TrainStep], None] | None = None,
    timer: StepTimer | None = None,
) -> TrainResult:
    """Train (or resume) a transformation network; returns it with its loss history and timings.

    `timer` (optional) collects where the time of each step goes, data loading included.
    """
    if isinstance(config, dict):
        config = make_train_config(**config)
    t0 = time.perf_counter()
    t = _prepare(config)
    start_step = 0
    history: list[dict[str, float]] = []
    ckpt_path = Path(config.checkpoint) if config.checkpoint else None
    if ckpt_path is not None and config.resume and ckpt_path.is_file():
        start_step, history, t.best, t.evolution = _load_checkpoint(ckpt_path, config, t.net, t.opt, t.device)

    val = _validation_image(config, t.files)
    dataset = CropDataset(t.files, config.size, config.seed)
    setup_s = time.perf_counter() - t0
    loop_start = time.perf_counter()
    val_image = None
    t.net.train()
    step = start_step
    if timer is not None:
        timer.start()
    for batch in batches(dataset, config.batch_size, start_step, config.steps, config.workers):
        step += 1
        if timer is not None:
            timer.lap("data loading")
        terms, s = _first_or_next_step(t, batch, step, timer, first=step == start_step + 1)
        made = _after_step(t, step, start_step, s, terms, loop_start, history, val, ckpt_path, callback)
        if made is not None:
            val_image = made
        if timer is not None:
            timer.lap("logging, validation, checkpoints")
    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)
    train_s = time.perf_counter() - loop_start
    if val_image is None:
        val_image = stylize_validation(t.net, val, len(config.styles), t.device)
    timings = _timings(config, start_step, setup_s, train_s, t0)
    info = _info(t, start_step)
    scored = [h for h in history if "val_style_distance" in h]
    scores = {k: v for k, v in scored[-1].items() if k.startswith("val_")} if scored else None
    if config.keep_best and t.best is not None:
        t.net.load_state_dict(t.best["state_dict"])
        scores, info["best_step"] = dict(t.best["scores"]), t.best["step"]
    t.net.eval()
    model_path = None
    if config.out:
        model_path = save_model(t.net, config.out, [_style_name(s) for s in config.styles],
                                model_meta(config, info, timings, t.evolution))
    return TrainResult(t.net, history, timings, info, model_path, val_image, scores, list(t.evolution))


def _info(t: _Training, start_step: int) -> dict[str, object]:
    return {
        "device": str(t.device),
        "precision": t.precision,
        "backbone": t.backbone.name,
        "weights_source": t.backbone.weights_source,
        "content_layers": t.content_layers,
        "style_layers": t.style_layers,
        "n_images": len(t.files),
        "start_step": start_step,
        "steps": t.config.steps,
        "parameters": sum(p.numel() for p in t.net.parameters()),
        "compiled": t.compiled,
    }


def _timings(config: TrainConfig, start_step: int, setup_s: float, train_s: float, t0: float) -> dict[str, float]:
    done = config.steps - start_step
    return {
        "setup_s": setup_s,
        "train_s": train_s,
        "total_s": time.perf_counter() - t0,
        "s_per_step": train_s / done if done > 0 else 0.0,
        "images_per_s": done * config.batch_size / train_s if done > 0 and train_s > 0 else 0.0,
    }


def _after_step(t: _Training, step: int, start_step: int, s: int, terms: dict[str, torch.Tensor], loop_start: float,
                history: list[dict[str, float]], val: torch.Tensor, ckpt_path: Path | None,
                callback: Callable[[TrainStep], None] | None) -> torch.Tensor | None:
    """Log, validate and checkpoint when due; returns the validation image when one was made."""
    config = t.config
    is_last = step == config.steps
    is_val = bool(config.val_every and step % config.val_every == 0) or is_last
    is_ckpt = bool(ckpt_path and ((config.checkpoint_every and step % config.checkpoint_every == 0) or is_last))
    is_eval = bool(config.eval_photos) and (bool(config.eval_every and step % config.eval_every == 0) or is_last)
    if not (step % config.log_every == 0 or is_last or is_val or is_ckpt or is_eval):
        return None
    losses = {k: float(v.detach()) for k, v in terms.items()}
    if not all(math.isfinite(v) for v in losses.values()):
        raise DivergedError(f"training diverged at step {step}: non-finite loss {losses}")
    elapsed = time.perf_counter() - loop_start
    ips = (step - start_step) * config.batch_size / max(elapsed, 1e-9)
    scores = score_validation(t.net, config) if is_eval else None
    if scores is not None and config.keep_best and (t.best is None or
                                                    _criterion(scores) < _criterion(t.best["scores"])):
        t.best = {"step": step, "state_dict": {k: v.detach().cpu().clone() for k, v in t.net.state_dict().items()},
                  "scores": scores}
    history.append({"step": float(step), "time": elapsed, "style_index": float(s), **losses, **(scores or {})})
    val_image = stylize_validation(t.net, val, len(config.styles), t.device) if is_val else None
    if val_image is not None:
        t.evolution.append((step, encode_jpeg(val_image)))
    if is_ckpt:
        _save_checkpoint(ckpt_path, t.net, t.opt, step, config, history, t.best, t.evolution)
    if callback is not None:
        callback(TrainStep(step, config.steps, losses, elapsed, ips, val_image, scores))
    return val_image


def model_meta(config: TrainConfig, info: dict, timings: dict,
               evolution: list[tuple[int, torch.Tensor]] | None = None) -> dict:
    """Provenance stored inside the model file (plain types and tensors only: loads with weights_only);
    ``evolution``: the validation image's steps and JPEG frames, when the training made any."""
    return {
        **({"evolution": {"steps": [s for s, _ in evolution], "jpeg": [j for _, j in evolution]}}
           if evolution else {}),
        "train_config": config.model_dump(mode="json"),
        "backbone": info["backbone"],
        "weights_source": info["weights_source"],
        "content_layers": info["content_layers"],
        "style_layers": info["style_layers"],
        "train_s": float(timings["train_s"]),
        **({"best_step": int(info["best_step"])} if "best_step" in info else {}),
    }


def evolution_frames(evolution: list[tuple[int, torch.Tensor]] | dict | None) -> list[tuple[int, torch.Tensor]]:
    """The validation images of a training as (step, image): from `TrainResult.evolution` or from a model
    file's ``meta["evolution"]`` (none for networks trained before it was recorded)."""
    if not evolution:
        return []
    pairs = zip(evolution["steps"], evolution["jpeg"]) if isinstance(evolution, dict) else evolution
    return [(int(step), decode_jpeg(jpeg)) for step, jpeg in pairs]


def _validation_image(config: TrainConfig, files: list[Path]) -> torch.Tensor:
    return load_image(config.val_image or files[0], size=config.val_size)


@torch.no_grad()
def stylize_validation(net: TransformNet, val: torch.Tensor, n_styles: int, device: torch.device) -> torch.Tensor:
    """The fixed validation image in each style, side by side (the "evolution over epochs" frames)."""
    was_training = net.training
    net.eval()
    outs = [net(val.to(device), net.style_vector(i, device)).float().clamp(0, 1).cpu() for i in range(n_styles)]
    net.train(was_training)
    return torch.cat(outs, dim=-1)


@torch.no_grad()
def score_validation(net: TransformNet, config: TrainConfig) -> dict[str, float]:
    """The evaluator's distances of the validation photos stylised by `net` in each of its styles, averaged
    over the photos: ``val_content_distance`` and ``val_style_distance`` (and ``..._<i>`` per style of a
    multi-style network).  The curve of these against the step says when a network is good enough."""
    from ..evaluate import shared_evaluator

    device = next(net.parameters()).device
    evaluator = shared_evaluator(device)
    was_training = net.training
    net.eval()
    per_style: list[tuple[float, float]] = []
    for i, style_file in enumerate(config.styles):
        style = load_image(style_file)
        content_d, style_d = [], []
        for photo_file in config.eval_photos:
            photo = load_image(photo_file, size=config.eval_size)
            out = net(photo.to(device), net.style_vector(i, device)).float().clamp(0, 1).cpu()
            sc = evaluator.score(out, photo, [style])
            content_d.append(sc.content_distance)
            style_d.append(sc.style_distance)
        per_style.append((sum(content_d) / len(content_d), sum(style_d) / len(style_d)))
    net.train(was_training)
    scores = {"val_content_distance": sum(c for c, _ in per_style) / len(per_style),
              "val_style_distance": sum(d for _, d in per_style) / len(per_style)}
    if len(per_style) > 1:
        for i, (c, d) in enumerate(per_style):
            scores[f"val_content_distance_{i}"], scores[f"val_style_distance_{i}"] = c, d
    return scores


def _criterion(scores: dict[str, float]) -> float:
    """keep_best's order: content x style distance, so a relative gain on either axis counts alike."""
    return scores["val_content_distance"] * scores["val_style_distance"]


def _save_checkpoint(path: Path, net, opt, step: int, config: TrainConfig, history, best: dict | None,
                     evolution: list[tuple[int, torch.Tensor]]) -> None:
    payload = {
        "format": CKPT_FORMAT,
        "model": model_payload(net, [_style_name(s) for s in config.styles]),
        "optimizer": opt.state_dict(),
        "step": step,
        "config": config.model_dump(mode="json"),
        "history": history,
        "best": best,
        "evolution": [[s, j] for s, j in evolution],
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _load_checkpoint(path: Path, config: TrainConfig, net, opt, device
                     ) -> tuple[int, list, dict | None, list[tuple[int, torch.Tensor]]]:
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path}: cannot read checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CKPT_FORMAT:
        raise ConfigError(f"{path}: not a training checkpoint")
    diff = _config_mismatch(payload["config"], config)
    if diff:
        raise ConfigError(f"{path}: checkpoint was made with different settings: {diff}")
    net.load_state_dict(payload["model"]["state_dict"])
    opt.load_state_dict(payload["optimizer"])
    evolution = [(int(s), j.cpu()) for s, j in payload.get("evolution", [])]  # older checkpoints: none
    return int(payload["step"]), list(payload.get("history", [])), payload.get("best"), evolution
