"""Pretrained feed-forward networks shipped with the package, and how a trained one becomes one.

A shipped network is a model file of `nst train` (format ``nst-fast/1``, see `network.save_model`) in
``nst/data/models/<name>.pt``, rewritten by `pack_model`: fp16 weights (half the size; `load_model`
casts them back to fp32) and ``meta["provenance"]``, everything one needs to know where it came from:

    styles         [{"name", "file"}]: the style images it was trained on, in its style order
    training_data  {"folder", "images", "credit"}: the training photographs and whose they are
    steps, wall_s  training steps and wall time (seconds)
    commit         the nst-lab commit (``git rev-parse HEAD``, "-dirty" with local changes; "unknown")
    scores         the evaluator's scores on validation photos (content_distance and style_distance, or
                   their val_ names as training reports them; see `score`)
    packed         {"dtype", "source", "date"}

`shipped_models` lists them (`nst models`), `resolve_model` turns a model argument (a file, a shipped
name or an alias such as ``the_starry_night``) into a file: `nst fast --model`, `nst video --model`
and a grid's ``model:`` all go through it.  ``NST_MODELS_DIR`` points elsewhere (tests).
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import ConfigError, WeightsError
from ..images import atomic_write
from .network import read_payload

#: Where the shipped networks are (package data); ``NST_MODELS_DIR`` overrides it.
MODELS_DIR = Path(__file__).resolve().parents[1] / "data" / "models"
MODELS_ENV = "NST_MODELS_DIR"
SUFFIX = ".pt"
#: The credits of the training photographs and style images, shipped next to the networks.
LICENSES = "nst/data/models/LICENSES.md"

#: Names that mean the same network: a shipped file whose stem is any name of a group answers to all of
#: them (`nst train` names a file after its style image: starry_night.pt, wave.pt, the_scream.pt, ...).
#: Compared after `normalise` (lower case, '-' and spaces as '_').
ALIASES: tuple[tuple[str, ...], ...] = (
    ("starry_night", "the_starry_night", "starry"),
    ("the_scream", "scream"),
    ("wave", "the_great_wave", "great_wave", "the_great_wave_off_kanagawa"),
    ("kandinsky", "composition_vii", "composition_7"),
    ("udnie",),
    ("woman_with_hat", "woman_with_a_hat", "woman_with_hat_matisse", "matisse"),
    ("shipwreck", "the_shipwreck_of_the_minotaur", "minotaur"),
)


@dataclass(frozen=True)
class ModelInfo:
    """One shipped network: its name (the file stem), file, style names (in the network's order), file size
    in bytes and ``meta["provenance"]`` ({} for a file that was not packed)."""

    name: str
    file: Path
    styles: list[str]
    size: int
    provenance: dict = field(default_factory=dict)
    arch: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "file": str(self.file), "styles": list(self.styles), "size": self.size,
                "aliases": list(aliases(self.name)), "arch": dict(self.arch), "provenance": dict(self.provenance)}


def models_dir() -> Path:
    env = os.environ.get(MODELS_ENV)
    return Path(env).expanduser() if env else MODELS_DIR


def normalise(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def aliases(name: str) -> tuple[str, ...]:
    """The other names a shipped network called `name` answers to."""
    n = normalise(name)
    for group in ALIASES:
        if n in group:
            return tuple(a for a in group if a != n)
    return ()


def _files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix == SUFFIX and not p.name.startswith("."))


def shipped_models(root: str | os.PathLike | None = None, broken: list[str] | None = None) -> list[ModelInfo]:
    """The networks in `root` (default `models_dir()`), by name.  A broken file there is a `WeightsError`,
    or, given a `broken` list, its one-line reason is appended there and the others are still listed."""
    out = []
    for p in _files(Path(root) if root is not None else models_dir()):
        try:
            payload = read_payload(p)
        except WeightsError as exc:
            if broken is None:
                raise
            broken.append(str(exc))
            continue
        meta = payload.get("meta") or {}
        out.append(ModelInfo(p.stem, p, list(payload.get("styles", [])), p.stat().st_size,
                             dict(meta.get("provenance") or {}), dict(payload.get("arch") or {})))
    return out


def shipped_names(root: str | os.PathLike | None = None) -> list[str]:
    return [p.stem for p in _files(Path(root) if root is not None else models_dir())]


def shipped_model(name: str, root: str | os.PathLike | None = None) -> Path:
    """The file of the shipped network called `name` (or one of its `ALIASES`); a `WeightsError` naming the
    shipped ones otherwise."""
    folder = Path(root) if root is not None else models_dir()
    files = _files(folder)
    wanted = normalise(name)
    group = next((g for g in ALIASES if wanted in g), (wanted,))
    for f in files:
        if normalise(f.stem) in group:
            return f
    if files:
        raise WeightsError(f"model '{name}': no such file and no shipped network of that name "
                           f"(shipped: {', '.join(f.stem for f in files)}; see `nst models`)")
    raise WeightsError(f"model '{name}': no such file, and no shipped networks are installed (none in {folder})")


def _header(model: str | os.PathLike) -> tuple[int, tuple[str, ...]]:
    """(number of styles, recorded style files) of a network: read once per file version, however many grid
    cells ask."""
    path = resolve_model(model)
    st = path.stat()
    return _read_header(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _read_header(path: str, mtime_ns: int, size: int) -> tuple[int, tuple[str, ...]]:
    payload = read_payload(Path(path))
    recorded = ((payload.get("meta") or {}).get("train_config") or {}).get("styles") or []
    return int((payload.get("arch") or {}).get("n_styles", 1)), tuple(recorded)


def style_count(model: str | os.PathLike) -> int:
    """How many styles network `model` (a file or a shipped name) holds."""
    return _header(model)[0]


def style_images(model: str | os.PathLike) -> list[Path]:
    """The style images network `model` (a file or a shipped name) was trained on, in its style order: each
    recorded path when it is on this machine, else the bundled image of that file name (the shipped networks
    were trained on nst/data/images copies), else a `WeightsError` naming the model and the missing image."""
    from ..data import IMAGES

    recorded = _header(model)[1]
    if not recorded:
        raise WeightsError(f"model '{model}': records no style images (not trained by `nst train`?)")
    out = []
    for r in recorded:
        p = Path(r)
        found = next((c for c in (p, IMAGES / p.name) if c.is_file()), None)
        if found is None:
            raise WeightsError(f"model '{model}': its style image {r} is not on this machine "
                               f"(nor bundled as {IMAGES / p.name})")
        out.append(found)
    return out


def looks_like_path(value: str | os.PathLike) -> bool:
    """'models/x.pt', 'x.pt', '~/x': meant as a file (a missing one is 'not found'); 'wave': maybe a name."""
    text = str(value)
    return "/" in text or os.sep in text or text.startswith("~") or bool(Path(text).suffix)


def resolve_model(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """A model argument -> its file: an existing file wins; else a shipped network's name or alias.

    Anything else is a one-line `WeightsError`: a path that is not there, or a name that is not shipped
    (naming the shipped ones)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        raise WeightsError(f"{p}: is a folder, not a model file")
    if looks_like_path(name_or_path):
        raise WeightsError(f"{p}: model file not found")
    return shipped_model(str(name_or_path), root)


# --------------------------------------------------------------------------- packing


def _portable(path: str | os.PathLike) -> str:
    """A path as recorded in a shipped file: relative to the checkout ('nst/data/images/wave.jpg',
    '../shared/data/train') when it is in or next to it, else as given."""
    repo = Path(__file__).resolve().parents[2]
    p = Path(path).expanduser()
    p = p.resolve() if p.is_absolute() or p.exists() else p
    checkout = (repo / "pyproject.toml").is_file()
    if checkout and p.is_absolute() and (p == repo.parent or repo.parent in p.parents):
        return Path(os.path.relpath(p, repo)).as_posix()
    return str(path)


def _training_data(train_config: Mapping[str, Any]) -> dict:
    from .train import training_files

    folder = train_config.get("images")
    if not folder:
        raise ConfigError("pack_model: the model's training config names no image folder; "
                          "pass provenance={'training_data': {...}}")
    n = len(training_files(folder, train_config.get("coco")))
    where = _portable(folder)
    return {"folder": where, "coco": _portable(train_config["coco"]) if train_config.get("coco") else None,
            "images": n, "credit": f"trained on {n} photographs from {where}, see {LICENSES}"}


def score(scores: Mapping[str, Any], key: str) -> float | None:
    """``scores[key]``, or the training's validation name for it (``val_<key>``, `nst.fast.train`)."""
    v = scores.get(key, scores.get(f"val_{key}"))
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _check_scores(scores: Any) -> dict:
    if not isinstance(scores, Mapping):
        raise ConfigError("pack_model: provenance needs 'scores', the evaluator's scores on validation photos "
                          "(a dict with content_distance and style_distance, or val_content_distance and "
                          "val_style_distance as TrainResult.scores has them)")
    for k in ("content_distance", "style_distance"):
        if score(scores, k) is None:
            raise ConfigError(f"pack_model: scores need a number '{k}' (or 'val_{k}'), got {dict(scores)!r}")
    return dict(scores)


def pack_model(src: str | os.PathLike, dst: str | os.PathLike, provenance: Mapping[str, Any] | None = None) -> Path:
    """Rewrite the `nst train` model `src` as a shipped network `dst`: fp16 weights, ``meta["provenance"]``.

    The provenance is read from the model's own meta (style files, training folder and its image count,
    steps, ``train_s``) and this checkout's commit.  `provenance` adds ``scores``, the evaluator's on
    validation photos (``content_distance``/``style_distance`` as `nst.evaluate.Scores.to_dict` names
    them, or ``val_content_distance``/``val_style_distance`` as `nst.fast.train` reports them; required,
    unless the model's meta has a ``scores`` entry), and overrides any derived entry: ``wall_s`` for a
    training that resumed over several sittings (the model's ``train_s`` is its last sitting only),
    ``commit`` when the training ran at another commit.  Written atomically; `src` is left as it is.
    """
    from ..provenance import git_commit

    src, given = Path(src), dict(provenance or {})
    if not src.is_file():
        raise WeightsError(f"{src}: model file not found")
    payload = read_payload(src)
    meta = dict(payload.get("meta") or {})
    cfg = dict(meta.get("train_config") or {})
    names = list(payload.get("styles", []))
    files = list(cfg.get("styles") or [])
    prov: dict[str, Any] = {
        "styles": [{"name": n, "file": _portable(f) if f else None}
                   for n, f in zip(names, files + [None] * (len(names) - len(files)))],
        "steps": cfg.get("steps"),
        "wall_s": meta.get("train_s"),
        "commit": git_commit(),
    }
    if "training_data" not in given:
        prov["training_data"] = _training_data(cfg)
    prov.update(given)
    prov["scores"] = _check_scores(prov.get("scores", meta.get("scores")))
    prov["packed"] = {"dtype": "float16", "source": src.name,
                      "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    meta["provenance"] = prov
    state = {k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(f"{src}: weights out of fp16 range ({', '.join(bad[:3])}); cannot pack it")
    packed = {**payload, "state_dict": state, "meta": meta}
    return atomic_write(dst, lambda tmp: torch.save(packed, tmp))
