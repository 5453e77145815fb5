"""Options of one grid method: the feed-forward network (`fast`) and the video modes (`video`).

A method that needs settings of its own has a pydantic model here
(`METHOD_OPTIONS`).  Its fields are top-level keys of experiments.yaml
(settings, axes, include entries), like the region keys of the region methods:

    fast:   train_images, train_coco, train_size, train_steps, batch_size, train_lr,
            norm, width, n_residual, val_every, model
    video:  mode (independent | temporal | fast), temporal_weight, stabilize,
            frames, frame_steps, flow, fps, and the fast keys (mode fast)

Each value is checked on its own where it is written (`parse_option`: type,
range, files relative to the YAML file), and each cell's set against its
method (`resolve`): a key another method owns is refused with its YAML path,
as are missing training data and settings the method cannot honour.  Keys
that the cell's method or mode does not use (``temporal_weight`` for
independent frames; the training keys when ``model`` is given) are dropped:
they are not part of the cell's id (so such cells collapse to one) and its
axis labels show ``-``.  Loss weights, backbone, layers, pooling, seed,
precision and ``size`` come from the cell's `StyleConfig` as for every
method; the optimiser keys (steps, optimizer, lr, init) only apply to the
video modes that optimise each frame.

A video cell's content is a clip: a video file or a folder of frame images
(`check_content`).  Pure: no Prefect or MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from .errors import ConfigError

#: Methods whose content is a clip (video file or folder of frames), not an image.
CLIP_METHODS = ("video",)


def _train_field(name: str, *more: Any, **grid: Any) -> Any:
    """The `TrainConfig` field `name` (type constraints, description, default) as a grid option; `more` and
    `grid` are what a grid cell changes (a tighter bound, a default sized for a cell rather than a model)."""
    from .fast.train import TrainConfig

    return FieldInfo.merge_field_infos(TrainConfig.model_fields[name], *more, **grid)


class TrainOptions(BaseModel):
    """Training of a transformation network inside a cell (Johnson et al.), or a trained one (`model`).

    Each field is a `nst.fast.train.TrainConfig` field (``train_*``: its name there without the prefix);
    the defaults that differ are a grid cell's (40 steps of batch 2, the evolution every 10 steps: a
    cell trains a small network in minutes; `nst train` trains the real one with TrainConfig's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_images: Optional[str] = _train_field("images", default=None)
    train_coco: Optional[str] = _train_field("coco")
    train_size: Optional[int] = _train_field("size", default=None,
                                             description="training crop (default: the cell's size)")
    train_steps: int = _train_field("steps", Field(ge=1), default=40)
    batch_size: int = _train_field("batch_size", default=2)
    train_lr: float = _train_field("lr", Field(le=1))
    norm: Literal["instance", "batch"] = _train_field("norm")
    width: int = _train_field("width")
    n_residual: int = _train_field("n_residual")
    val_every: int = _train_field("val_every", default=10,
                                  description="stylise the content image every N steps (the evolution)")
    model: Optional[str] = Field(None, description="a trained model file, or a shipped network's name "
                                 "(`nst models`): apply it, no training")

    def train_keys(self) -> set[str]:
        return {"model"} if self.model else set(TrainOptions.model_fields) - {"model"}

    def check_training(self, where: dict[str, str], what: str, config, n_styles: int) -> None:
        if not self.model and not self.train_images:
            raise ConfigError(f"{where.get('mode', where['method'])}: a feed-forward network needs train_images "
                              f"(a folder of training images, e.g. COCO's train2014/) or model (a trained network "
                              f"file) ({what})")
        if config.multi_style == "sequential":
            raise ConfigError(f"{where['style']}: a feed-forward network cannot apply styles one after another "
                              f"(mode: sequential); use a blend ({what})")
        if self.model:
            _check_model_styles(self.model, where.get("model", what), what, n_styles)
        if n_styles > 1 and self.norm == "batch" and not self.model:
            raise ConfigError(f"{where.get('norm', where['method'])}: several styles in one network need "
                              f"conditional instance norm (norm: instance) ({what})")
        if config.preserve_color == "histogram":
            raise ConfigError(f"{where['preserve_color']}: a feed-forward network keeps colours by luminance "
                              f"only (preserve_color: luminance) ({what})")

    def train_config(self, config, styles: list[Path], device: str, *, val_image: str | None = None,
                     out: str | None = None):
        """The `TrainConfig` of this cell: loss weights, network, layers, seed and precision from `config`."""
        from .fast.train import make_train_config

        size = self.train_size or config.size
        return make_train_config(
            styles=[str(s) for s in styles], images=self.train_images, coco=self.train_coco, size=size,
            style_size=round(size * config.style_scale) if config.style_scale != 1 else None,
            batch_size=self.batch_size, steps=self.train_steps, lr=self.train_lr,
            content_weight=config.content_weight, style_weight=config.style_weight, tv_weight=config.tv_weight,
            backbone=config.backbone, weights=config.weights, pooling=config.pooling,
            content_layers=config.content_layers, style_layers=config.style_layers, norm=self.norm,
            width=self.width, n_residual=self.n_residual, seed=config.seed, device=device,
            precision=config.precision, val_image=val_image, val_size=config.size, val_every=self.val_every,
            out=out,
        )

    def stylizer(self, net, config, n_styles: int, device: str):
        """A `Stylizer` for a trained network (or `self.model`): the cell's blend of its styles, luminance-only
        colour transfer with preserve_color: luminance, its precision."""
        import torch

        from .fast.infer import Stylizer
        from .runtime import resolve_precision

        style = list(config.style_weights or [1.0] * n_styles) if n_styles > 1 else None
        return Stylizer(net if net is not None else self.model, style=style,
                        preserve_color=config.preserve_color == "luminance",
                        precision=resolve_precision(config.precision, torch.device(device)), device=device)


def _check_model_styles(model: str, where: str, what: str, n_styles: int) -> None:
    """A network applies the blend of as many styles as it was trained on: caught when the grid is read,
    not when the cell runs."""
    from .errors import WeightsError
    from .fast.models import style_count

    try:
        n = style_count(model)
    except WeightsError as exc:
        raise ConfigError(f"{where}: {exc} ({what})") from None
    if n != n_styles:
        raise ConfigError(f"{where}: model '{Path(model).stem}' was trained for {n} style{'s' * (n != 1)}, this "
                          f"cell gives {n_styles} ({what})")


class FastOptions(TrainOptions):
    """Method `fast`: train a network on the training images, then stylise the content image with it."""

    def relevant(self) -> set[str]:
        return self.train_keys()

    def check(self, where: dict[str, str], what: str, config, n_styles: int) -> None:
        self.check_training(where, what, config, n_styles)


class VideoOptions(TrainOptions):
    """Method `video`: stylise a clip frame by frame and measure its flicker (the temporal warping error).

    Modes: ``independent`` (per-frame optimisation from the frame itself), ``temporal`` (Ruder et al.:
    start from the previous output warped by optical flow, plus the occlusion-masked temporal loss with
    `temporal_weight`; 0 = warped start only), ``fast`` (a feed-forward network per frame, trained in
    the cell from the training keys, or `model`; with `stabilize` > 0 each network frame is blended with
    the previous output warped into it where the occlusion mask allows, `nst.video.stabilise`).
    """

    mode: Literal["independent", "temporal", "fast"] = "temporal"
    temporal_weight: float = Field(200.0, ge=0, description="temporal loss weight (mode temporal)")
    stabilize: float = Field(0.0, ge=0, le=1, description="mode fast: weight of the previous output warped by "
                             "optical flow in each network frame, where the occlusion mask allows (0 = off)")
    frames: Optional[int] = Field(None, ge=2, le=1_000_000, description="first N frames of the clip (default: all)")
    frame_steps: Optional[int] = Field(None, ge=0, le=100_000,
                                       description="optimisation steps of every frame after the first (default: steps)")
    flow: Literal["dis", "raft"] = "dis"
    fps: float = Field(24.0, gt=0, le=1000, description="frame rate of a folder of frames")

    def relevant(self) -> set[str]:
        keys = {"mode", "frames", "flow", "fps"}
        if self.mode == "fast":
            return keys | {"stabilize"} | self.train_keys()
        return keys | {"frame_steps"} | ({"temporal_weight"} if self.mode == "temporal" else set())

    def check(self, where: dict[str, str], what: str, config, n_styles: int) -> None:
        if self.mode == "fast":
            self.check_training(where, what, config, n_styles)


METHOD_OPTIONS: dict[str, type[TrainOptions]] = {"fast": FastOptions, "video": VideoOptions}
#: Every option key, in the models' field order.
OPTION_KEYS: tuple[str, ...] = tuple(dict.fromkeys(k for m in METHOD_OPTIONS.values() for k in m.model_fields))
#: Option keys that name files or folders (resolved relative to the YAML file, hashed into the cell id).
PATH_KEYS = {"train_images": "folder", "train_coco": "file", "model": "file"}


def owners(key: str) -> list[str]:
    return [m for m, model in METHOD_OPTIONS.items() if key in model.model_fields]


def parse_option(key: str, value: Any, where: str, base: Path) -> tuple[str, Any]:
    """One option value -> (label, normalised value); paths become absolute and must exist."""
    model = METHOD_OPTIONS[owners(key)[0]]
    try:
        model.model_validate({key: value})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{where}: {err['msg']}") from None
    if key in PATH_KEYS and value is not None:
        kind = PATH_KEYS[key]
        p = Path(value).expanduser()
        p = p if p.is_absolute() else base / p
        if key == "model" and not p.is_file():
            return _shipped_model(value, where, p)
        if not (p.is_dir() if kind == "folder" else p.is_file()):
            raise ConfigError(f"{where}: {key} {kind} '{value}' not found (looked at {p})")
        return p.name if kind == "folder" else p.stem, str(p.resolve())
    if isinstance(value, float) or isinstance(value, int) and not isinstance(value, bool):
        return f"{value:g}", value
    return str(value).lower() if value is None or isinstance(value, bool) else str(value), value


def _shipped_model(value: Any, where: str, looked_at: Path) -> tuple[str, str]:
    """``model: the_scream``: a shipped network by name or alias (`nst models`) when no such file exists."""
    from .errors import WeightsError
    from .fast.models import looks_like_path, shipped_model

    if looks_like_path(value):
        raise ConfigError(f"{where}: model file '{value}' not found (looked at {looked_at})")
    try:
        p = shipped_model(str(value))
    except WeightsError as exc:
        raise ConfigError(f"{where}: {exc} (looked for a file at {looked_at})") from None
    return p.stem, str(p.resolve())


def check_content(method: str, content: Path, where: str, what: str) -> None:
    """Video methods take a clip (video file or folder of >= 2 frames); the others an image file."""
    from .video import FRAME_SUFFIXES, VIDEO_SUFFIXES

    is_clip = content.is_dir() or content.suffix.lower() in VIDEO_SUFFIXES
    if method in CLIP_METHODS:
        if not is_clip:
            raise ConfigError(f"{where}: method '{method}' takes a clip as content (a video file "
                              f"{'/'.join(VIDEO_SUFFIXES)} or a folder of frames), not '{content.name}' ({what})")
        if content.is_dir():
            n = sum(1 for f in content.iterdir() if f.is_file() and f.suffix.lower() in FRAME_SUFFIXES)
            if n < 2:
                raise ConfigError(f"{where}: folder '{content.name}' has {n} frame image(s); a clip needs at least "
                                  f"2 ({', '.join(FRAME_SUFFIXES)}) ({what})")
    elif is_clip:
        kind = "folder of frames" if content.is_dir() else "video"
        raise ConfigError(f"{where}: '{content.name}' is a clip ({kind}); "
                          f"only method {'/'.join(CLIP_METHODS)} takes clips, method '{method}' needs an image "
                          f"file ({what})")


def resolve(method: str, given: dict[str, Any], origin: dict[str, str], what: str, *, content: Path,
            config, n_styles: int) -> tuple[Optional[dict[str, Any]], set[str]]:
    """A cell's options for its method: (the options it uses, the given keys it ignores).

    `given` holds the cell's option keys (already checked one by one by `parse_option`), `origin`
    the YAML path of every key of the cell (messages name the entry to fix).
    """
    where = {**{k: origin.get(k, what) for k in ("method", "style", "preserve_color", "content")},
             **{k: origin[k] for k in given if k in origin}}
    check_content(method, content, where["content"], what)
    model = METHOD_OPTIONS.get(method)
    for k in given:
        if model is None or k not in model.model_fields:
            return _refuse(k, method, origin, what)
    if model is None:
        return None, set()
    opts = model.model_validate(given)
    opts.check(where, what, config, n_styles)
    relevant = opts.relevant()
    full = opts.model_dump(mode="json")
    return {k: full[k] for k in full if k in relevant}, set(given) - relevant


def _refuse(key: str, method: str, origin: dict[str, str], what: str):
    raise ConfigError(f"{origin.get(key, what)}: '{key}' is only for method {' and '.join(owners(key))}; "
                      f"this cell's method is '{method}' ({what})")


def describe(options: dict[str, Any]) -> dict[str, str]:
    """Options as flat MLflow params (file and folder names, not full paths)."""
    out = {}
    for k, v in options.items():
        if k in PATH_KEYS and v:
            v = Path(v).name
        out[k] = "none" if v is None else str(v)
    return out


def work(method: str, options: Optional[dict[str, Any]], steps: int) -> str:
    """What a cell runs, in a few words (for listings): '30 steps', '30 training steps', '8 frames x 30 steps'."""
    if not options:
        return f"{steps} steps"
    train = "trained model" if options.get("model") else f"{options.get('train_steps')} training steps"
    if method != "video":
        return train
    frames = f"{options['frames']} frames" if options.get("frames") else "all frames"
    if options.get("mode") == "fast":
        return f"{frames}, {train}"
    later = options.get("frame_steps")
    return f"{frames} x {steps} steps" + (f" ({later} after the first)" if later is not None else "")
