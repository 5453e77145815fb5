"""experiments.yaml: the schema of named grids, their validation and their expansion into cells.

A grid is a set of axes whose cartesian product gives the cells, on top of
fixed settings (file `defaults` < named `presets` < the grid's `settings`).
Everything is checked before any work starts: unknown keys, missing files,
unknown backbones or layers, negative weights and empty axes are reported
with the YAML path of the offending entry, e.g.
``grids.demo.axes.backbone[2]: unknown backbone 'vgg99'``.

Region methods (`nst.regions.METHODS`) take ``regions`` (a spec for
`nst.segment.region_map`), ``coco`` (annotations of ``coco:`` specs) and
``region_styles`` ({region: style image or keep}); other methods refuse them.

Each cell gets a stable id: a hash of its resolved settings and of the bytes
of its input files (mask and COCO files included), so renaming a file keeps
the id and editing it changes it.
Pure: no Prefect or MLflow here (the flows import this).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import backbones
from .config import StyleConfig, make_config
from .errors import ConfigError, NSTError

#: Keys that are not StyleConfig fields but may appear in settings, axes and include entries.
CELL_KEYS = ("content", "style", "weights", "backbone_weights", "method", "regions", "coco", "region_styles")
#: Keys that only region methods (`nst.regions.METHODS`) take.
REGION_KEYS = ("regions", "coco", "region_styles")
#: StyleConfig fields set through other keys (style mixes, loss weight sets, the runner's device).
_INDIRECT = {"weights", "style_weights", "multi_style", "device"}
CONFIG_KEYS = tuple(k for k in StyleConfig.model_fields if k not in _INDIRECT)
ALLOWED_KEYS = CELL_KEYS + CONFIG_KEYS
DEFAULT_METHOD = "gatys"


# --------------------------------------------------------------------------- schema


class StyleMix(BaseModel):
    """Several style images: blended with weights, or applied one after another."""

    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(min_length=1)
    weights: Optional[list[float]] = None
    mode: Literal["blend", "sequential"] = "blend"
    label: Optional[str] = None


class WeightSet(BaseModel):
    """Loss weights of one cell; the ones left out keep the settings' values."""

    model_config = ConfigDict(extra="forbid")
    content: Optional[float] = Field(None, ge=0)
    style: Optional[float] = Field(None, ge=0)
    tv: Optional[float] = Field(None, ge=0)
    label: Optional[str] = None


class ContactSheet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: Optional[str] = None
    cols: Optional[str] = None


class GridSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""
    preset: Union[str, list[str], None] = None
    settings: dict[str, Any] = Field(default_factory=dict)
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    repeats: int = Field(1, ge=1, le=1000)
    include: list[dict[str, Any]] = Field(default_factory=list)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    contact_sheet: ContactSheet = Field(default_factory=ContactSheet)
    summary_by: Optional[str] = None
    evaluate: bool = True
    eval_resolution: int = Field(512, ge=16, le=4096)
    intermediate_images: int = Field(3, ge=0, le=50)


class ExperimentsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = 1
    defaults: dict[str, Any] = Field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    grids: dict[str, GridSpec] = Field(min_length=1)


# --------------------------------------------------------------------------- cells


@dataclass
class Cell:
    """One unit of work: resolved inputs, method and engine settings."""

    grid: str
    index: int
    cell_id: str
    method: str
    content: Path
    styles: list[Path]
    config: StyleConfig
    labels: dict[str, str]  # axis -> short label, in axis order
    options: dict[str, Any] = field(default_factory=dict)  # grid-level: evaluate, eval_resolution, ...
    #: Region methods only: {"spec": region spec (mask files absolute), "coco": annotations path or None,
    #: "styles": {region name: style path or "keep"}}.
    regions: Optional[dict[str, Any]] = None

    @property
    def name(self) -> str:
        return " | ".join(f"{k}={v}" for k, v in self.labels.items()) or self.cell_id

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the logged cell config; a deployment run's parameter)."""
        return {
            "grid": self.grid,
            "index": self.index,
            "cell_id": self.cell_id,
            "method": self.method,
            "content": str(self.content),
            "styles": [str(s) for s in self.styles],
            "config": self.config.model_dump(mode="json"),
            "labels": dict(self.labels),
            "options": dict(self.options),
            "regions": self.regions,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cell":
        return cls(
            grid=d["grid"],
            index=int(d["index"]),
            cell_id=d["cell_id"],
            method=d["method"],
            content=Path(d["content"]),
            styles=[Path(s) for s in d["styles"]],
            config=make_config(**d["config"]),
            labels=dict(d["labels"]),
            options=dict(d.get("options", {})),
            regions=d.get("regions"),
        )


@dataclass
class Grid:
    name: str
    spec: GridSpec
    cells: list[Cell]
    axes: list[str]  # axis names in order (including 'seed' added by repeats)
    source: Path


@dataclass
class Experiments:
    path: Path
    grids: dict[str, GridSpec]
    raw: ExperimentsFile

    def grid(self, name: str) -> Grid:
        if name not in self.grids:
            raise ConfigError(f"{self.path}: no grid '{name}' (grids: {', '.join(self.grids)})")
        return expand(self, name)


# --------------------------------------------------------------------------- loading


def loc_path(loc: Iterable[Any], prefix: str = "") -> str:
    """('grids', 'demo', 'axes', 'backbone', 2) -> 'grids.demo.axes.backbone[2]'."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _pydantic_message(exc: ValidationError, prefix: str) -> str:
    errs = exc.errors()
    first = errs[0]
    # Union branches add the branch name to the location; drop those technical parts.
    loc = [p for p in first["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "StyleMix")))]
    msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{loc_path(loc, prefix)}: {msg}{more}"


def load_experiments(path: str | Path) -> Experiments:
    """Parse and validate the file's structure (cells are checked by `expand`)."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise ConfigError(f"{path}: no such experiments file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}:{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping with a 'grids' key at the top")
    try:
        raw = ExperimentsFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{p.name}: {_pydantic_message(exc, '')}") from None
    return Experiments(p, raw.grids, raw)


# --------------------------------------------------------------------------- entries


def _file(value: Any, where: str, base: Path, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a {what} file path, got {value!r}")
    p = Path(value).expanduser()
    p = p if p.is_absolute() else (base / p)
    if not p.is_file():
        raise ConfigError(f"{where}: {what} file '{value}' not found (looked at {p})")
    return p.resolve()


def _num(v: float) -> str:
    return f"{v:g}"


def parse_entry(key: str, value: Any, where: str, base: Path, methods: Iterable[str] | None) -> tuple[str, dict]:
    """One setting or axis value -> (label, overrides of the cell's fields)."""
    if key not in ALLOWED_KEYS:
        hint = " (the network's weights are 'backbone_weights')" if key == "weights" else ""
        raise ConfigError(f"{where}: unknown key '{key}'{hint} (known: {', '.join(ALLOWED_KEYS)})")
    if key == "content":
        p = _file(value, where, base, "content")
        return p.stem, {"content": p}
    if key == "style":
        if isinstance(value, str):
            p = _file(value, where, base, "style")
            return p.stem, {"styles": [p], "style_weights": None, "multi_style": "blend"}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a style image path or a mapping {{images, weights, mode}}")
        try:
            mix = StyleMix.model_validate(value)
        except ValidationError as exc:
            raise ConfigError(_pydantic_message(exc, where)) from None
        paths = [_file(v, f"{where}.images[{i}]", base, "style") for i, v in enumerate(mix.images)]
        if mix.weights is not None:
            if len(mix.weights) != len(paths):
                raise ConfigError(f"{where}.weights: {len(mix.weights)} weights for {len(paths)} images")
            for i, w in enumerate(mix.weights):
                if w < 0:
                    raise ConfigError(f"{where}.weights[{i}]: weight {w:g} is negative (must be >= 0)")
            if sum(mix.weights) <= 0:
                raise ConfigError(f"{where}.weights: must not all be zero")
            if mix.mode == "sequential":
                raise ConfigError(f"{where}.weights: blend weights have no meaning with mode: sequential")
        sep = ">" if mix.mode == "sequential" else "+"
        label = mix.label or sep.join(p.stem for p in paths) + (
            f" ({'/'.join(_num(w) for w in mix.weights)})" if mix.weights else ""
        )
        return label, {
            "styles": paths,
            "style_weights": tuple(mix.weights) if mix.weights else None,
            "multi_style": mix.mode,
        }
    if key == "weights":
        if not isinstance(value, dict):
            raise ConfigError(
                f"{where}: expected a mapping {{content, style, tv}} of loss weights, got {value!r}"
                " (the network's weights are 'backbone_weights')"
            )
        try:
            ws = WeightSet.model_validate(value)
        except ValidationError as exc:
            raise ConfigError(_pydantic_message(exc, where)) from None
        over = {k: v for k, v in (("content_weight", ws.content), ("style_weight", ws.style), ("tv_weight", ws.tv))
                if v is not None}
        label = ws.label or "/".join(f"{k[0]}{_num(v)}" for k, v in over.items())
        return label, over
    if key == "backbone_weights":
        if value is None or value == "random":
            return str(value or "default"), {"weights": value}
        return Path(str(value)).name, {"weights": str(_file(value, where, base, "backbone weights"))}
    if key == "regions":
        return _parse_regions(value, where, base)
    if key == "coco":
        p = _file(value, where, base, "COCO annotations")
        return p.name, {"coco": p}
    if key == "region_styles":
        return _parse_region_styles(value, where, base)
    if key == "method":
        if not isinstance(value, str) or (methods is not None and value not in set(methods)):
            known = f" (known: {', '.join(methods)})" if methods is not None else ""
            raise ConfigError(f"{where}: unknown method {value!r}{known}")
        return value, {"method": value}
    if key == "backbone":
        from . import backbones

        if value not in backbones.names():
            raise ConfigError(f"{where}: unknown backbone {value!r} (known: {', '.join(backbones.names())})")
        return value, {"backbone": value}
    if key == "init" and isinstance(value, str) and value not in ("content", "noise"):
        return Path(value).stem, {"init": str(_file(value, where, base, "init image"))}
    # Any other engine option: let StyleConfig check it on its own.
    try:
        make_config(**{key: value})
    except ConfigError as exc:
        msg = str(exc).split(": ", 1)[-1]
        raise ConfigError(f"{where}: {msg} (got {value!r})") from None
    if isinstance(value, list):
        value = tuple(value)
    label = ",".join(map(str, value)) if isinstance(value, tuple) else ("off" if value is None else str(value))
    return label, {key: value}


def _parse_regions(value: Any, where: str, base: Path) -> tuple[str, dict]:
    """A region spec as `nst.segment.region_map` takes it; mask files resolved against the YAML's folder."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a region spec (coco:CATEGORY[,..], person, deeplab[:CLASS,..] "
                          f"or a mask file), got {value!r}")
    spec = value.strip()
    head, _, rest = spec.partition(":")
    if head == "coco":
        cats = [c.strip() for c in rest.split(",") if c.strip()]
        if not cats:
            raise ConfigError(f"{where}: 'coco:' names no category (e.g. coco:person or coco:person,cup)")
        return spec, {"regions": "coco:" + ",".join(cats)}
    if head == "person":
        if rest and rest not in ("general", "landscape", "auto"):
            raise ConfigError(f"{where}: unknown person segmenter model '{rest}' (general, landscape, auto)")
        return spec, {"regions": spec}
    if head == "deeplab":
        if rest:
            from .segment import deeplab_classes

            known = deeplab_classes()[1:]
            for c in rest.split(","):
                if c.strip() not in known:
                    raise ConfigError(f"{where}: unknown DeepLabv3 class '{c.strip()}' (known: {', '.join(known)})")
        return spec, {"regions": spec}
    p = Path(spec).expanduser()
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise ConfigError(
            f"{where}: region spec '{spec}' is neither coco:CATEGORY, person, deeplab[:CLASS,...] "
            f"nor an existing mask file (looked at {p})"
        )
    return p.stem, {"regions": str(p.resolve())}


def _parse_region_styles(value: Any, where: str, base: Path) -> tuple[str, dict]:
    """{region name: style image or keep} ('*' = every region not named)."""
    from .regions import KEEP

    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: expected a mapping {{region name: style image or {KEEP}}}, got {value!r}")
    styles: dict[str, str] = {}
    for name, style in value.items():
        name = str(name)
        if style == KEEP:
            styles[name] = KEEP
        else:
            styles[name] = str(_file(style, f"{where}.{name}", base, "style"))
    if all(v == KEEP for v in styles.values()):
        raise ConfigError(f"{where}: every region is '{KEEP}': nothing to stylise")
    label = ",".join(f"{k}={'keep' if v == KEEP else Path(v).stem}" for k, v in styles.items())
    return label, {"region_styles": styles}


@functools.lru_cache(maxsize=64)
def _coco_index(path: str, digest: str) -> tuple[frozenset[str], frozenset[str]]:
    """(image file names, category names) of a COCO annotations file, for checks before work starts."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return (frozenset(Path(i.get("file_name", "")).name for i in data.get("images", [])),
            frozenset(c["name"] for c in data.get("categories", [])))


def _region_names(spec: str) -> list[str] | None:
    """The names a region map from `spec` will have (None when only the mask file can tell)."""
    head, _, rest = spec.partition(":")
    if head == "coco":
        return ["background", *rest.split(",")]
    if head == "person":
        return ["background", "person"]
    if head == "deeplab":
        return ["background", *(rest.split(",") if rest else ["person"])]
    from .segment import from_mask_file

    rm = from_mask_file(spec)
    return [*rm.names, *map(str, rm.values)]


def _check_regions(cell_over: dict[str, Any], method: str, region_methods: tuple[str, ...],
                   origin: dict[str, str], content: Path, what: str) -> Optional[dict[str, Any]]:
    """Region keys of one cell: required by region methods, refused by the others; COCO checked."""
    present = [k for k in REGION_KEYS if k in cell_over]
    if method not in region_methods:
        if present:
            k = present[0]
            raise ConfigError(f"{origin.get(k, what)}: '{k}' is only for the region methods "
                              f"({', '.join(region_methods)}); this cell's method is '{method}' ({what})")
        return None
    m_where = origin.get("method", what)
    missing = [k for k in ("regions", "region_styles") if k not in cell_over]
    if missing:
        raise ConfigError(f"{m_where}: region method '{method}' needs {' and '.join(missing)} "
                          f"(a region map and a style per region) ({what})")
    spec, styles = cell_over["regions"], cell_over["region_styles"]
    coco = cell_over.get("coco")
    if spec.startswith("coco:"):
        if coco is None:
            raise ConfigError(f"{origin['regions']}: '{spec}' needs 'coco' (a COCO annotations file) ({what})")
        try:
            files, cats = _coco_index(str(coco), file_digest(coco))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{origin['coco']}: COCO annotations {coco.name} cannot be read ({exc})") from None
        if content.name not in files:
            raise ConfigError(f"{origin['coco']}: content image '{content.name}' is not in {coco.name} "
                              f"(matched by file name) ({what})")
        for c in spec[5:].split(","):
            if c not in cats:
                raise ConfigError(f"{origin['regions']}: unknown COCO category '{c}' in {coco.name} ({what})")
    elif coco is not None:
        raise ConfigError(f"{origin['coco']}: 'coco' is only used with regions: coco:CATEGORY ({what})")
    try:
        names = _region_names(spec)
    except NSTError as exc:  # an unreadable mask file or one with too many values
        raise ConfigError(f"{origin['regions']}: {exc}") from None
    from .regions import DEFAULT_KEY

    for name in styles:
        if name != DEFAULT_KEY and names is not None and name not in names:
            raise ConfigError(f"{origin['region_styles']}.{name}: no region '{name}' in '{Path(spec).name}' "
                              f"(regions: {', '.join(dict.fromkeys(names))}; '*' = every other region)")
    return {"spec": spec, "coco": str(coco) if coco is not None else None, "styles": dict(styles)}


# --------------------------------------------------------------------------- expansion


def _matches(rule: dict[str, Any], raw: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(raw.get(k, object()) == v or labels.get(k) == str(v) for k, v in rule.items())


def file_digest(path: Path) -> str:
    st = path.stat()
    return _digest(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    if size > 64 * 2**20:  # big weight files: name and size, not 500 MB of hashing per cell
        h.update(f"{Path(path).name}:{size}".encode())
    else:
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def cell_id(method: str, config: StyleConfig, content: Path, styles: list[Path],
            regions: Optional[dict[str, Any]] = None) -> str:
    """Hash of the resolved settings and the input files' bytes (the device is not part of it).

    Region cells add their spec, the bytes of a mask or COCO file and the style of every region.
    """
    cfg = config.model_dump(mode="json", exclude={"device"})
    for k in ("weights", "init"):
        v = cfg.get(k)
        if isinstance(v, str) and v not in ("random", "content", "noise") and Path(v).is_file():
            cfg[k] = "sha256:" + file_digest(Path(v))
    payload = {
        "method": method,
        "config": cfg,
        "content": file_digest(content),
        "styles": [file_digest(s) for s in styles],
    }
    if regions is not None:
        spec = regions["spec"]
        payload["regions"] = {
            "spec": "sha256:" + file_digest(Path(spec)) if Path(spec).is_absolute() else spec,
            "coco": file_digest(Path(regions["coco"])) if regions.get("coco") else None,
            "styles": {k: v if v == "keep" else file_digest(Path(v)) for k, v in regions["styles"].items()},
        }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _entry_dict(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict) or not entry:
        raise ConfigError(f"{where}: expected a non-empty mapping of axis values")
    return entry


def expand(exp: Experiments, name: str, methods: Iterable[str] | None = None) -> Grid:
    """Validate grid `name` completely and return its cells (product - exclude + include, x repeats)."""
    spec = exp.grids[name]
    base = exp.path.parent
    gp = f"grids.{name}"
    methods = tuple(methods) if methods is not None else None
    from .regions import METHODS as region_methods

    # fixed settings: defaults < presets < settings, each remembered with its YAML path
    fixed: dict[str, tuple[Any, str]] = {}
    layers_from: dict[str, str] = {}
    preset_names = [spec.preset] if isinstance(spec.preset, str) else list(spec.preset or [])
    sources = [(exp.raw.defaults, "defaults")]
    for i, pn in enumerate(preset_names):
        if pn not in exp.raw.presets:
            where = f"{gp}.preset" + (f"[{i}]" if not isinstance(spec.preset, str) else "")
            raise ConfigError(f"{where}: unknown preset '{pn}' (presets: {', '.join(exp.raw.presets) or 'none'})")
        sources.append((exp.raw.presets[pn], f"presets.{pn}"))
    sources.append((spec.settings, f"{gp}.settings"))
    for mapping, prefix in sources:
        for k, v in mapping.items():
            fixed[k] = (v, f"{prefix}.{k}")

    base_over: dict[str, Any] = {}
    for k, (v, where) in fixed.items():
        _, over = parse_entry(k, v, where, base, methods)
        base_over.update(over)
        layers_from[k] = where  # where each setting came from, for per-cell messages

    # axes
    axes: list[tuple[str, list[tuple[str, dict, Any, str]]]] = []
    for k, values in spec.axes.items():
        where = f"{gp}.axes.{k}"
        if k not in ALLOWED_KEYS:
            parse_entry(k, None, where, base, methods)  # raises the unknown-key message
        if not values:
            raise ConfigError(f"{where}: empty axis (give at least one value, or remove it)")
        parsed = []
        for i, v in enumerate(values):
            label, over = parse_entry(k, v, f"{where}[{i}]", base, methods)
            parsed.append((label, over, v, f"{where}[{i}]"))
        raws = [json.dumps(p[2], sort_keys=True, default=str) for p in parsed]
        dup = next((i for i, r in enumerate(raws) if raws.index(r) != i), None)
        if dup is not None:
            raise ConfigError(f"{where}[{dup}]: value {values[dup]!r} appears twice in the axis")
        axes.append((k, parsed))
    axis_names = [k for k, _ in axes]
    if spec.repeats > 1:
        if "seed" in axis_names:
            raise ConfigError(f"{gp}.repeats: use either repeats or a seed axis, not both")
        seed0 = int(base_over.get("seed", 0))
        axes.append(("seed", [(str(seed0 + r), {"seed": seed0 + r}, seed0 + r, f"{gp}.repeats") for r in range(spec.repeats)]))
        axis_names.append("seed")
    for which in ("rows", "cols"):
        a = getattr(spec.contact_sheet, which)
        if a is not None and a not in axis_names:
            raise ConfigError(f"{gp}.contact_sheet.{which}: '{a}' is not an axis (axes: {', '.join(axis_names)})")
    if spec.summary_by is not None and spec.summary_by not in axis_names:
        raise ConfigError(f"{gp}.summary_by: '{spec.summary_by}' is not an axis (axes: {', '.join(axis_names)})")

    for kind, rules in (("exclude", spec.exclude), ("include", spec.include)):
        for i, rule in enumerate(rules):
            _entry_dict(rule, f"{gp}.{kind}[{i}]")
            for k in rule:
                if kind == "exclude" and k not in axis_names:
                    raise ConfigError(f"{gp}.{kind}[{i}].{k}: not an axis (axes: {', '.join(axis_names)})")

    combos: list[list[tuple[str, str, dict, Any, str]]] = []
    for combo in itertools.product(*[[(k, *p) for p in parsed] for k, parsed in axes]):
        raw = {k: v for k, _, _, v, _ in combo}
        labels = {k: lab for k, lab, _, _, _ in combo}
        if any(_matches(rule, raw, labels) for rule in spec.exclude):
            continue
        combos.append(list(combo))
    for i, rule in enumerate(spec.include):
        extra = []
        for k, v in rule.items():
            w = f"{gp}.include[{i}].{k}"
            label, over = parse_entry(k, v, w, base, methods)
            extra.append((k, label, over, v, w))
        given = {e[0] for e in extra}
        free = [[(k, *p) for p in parsed] for k, parsed in axes if k not in given]
        for rest in itertools.product(*free):
            combos.append(list(rest) + extra)

    options = {
        "evaluate": spec.evaluate,
        "eval_resolution": spec.eval_resolution,
        "intermediate_images": spec.intermediate_images,
    }
    cells: list[Cell] = []
    seen: set[str] = set()
    for combo in combos:
        over = dict(base_over)
        origin = dict(layers_from)
        for k, _, o, _, w in combo:
            over.update(o)
            origin[k] = w
        labels = {k: lab for k, lab, _, _, _ in combo}
        labels = {**{k: labels[k] for k in axis_names if k in labels},
                  **{k: v for k, v in labels.items() if k not in axis_names}}
        what = f"{gp} cell [{', '.join(f'{k}={v}' for k, v in labels.items())}]"
        if "content" not in over:
            raise ConfigError(f"{gp}: no content image (set settings.content or a content axis)")
        method = over.pop("method", DEFAULT_METHOD)
        content = over.pop("content")
        region_over = {k: over.pop(k) for k in REGION_KEYS if k in over}
        regions = _check_regions(region_over, method, region_methods, origin, content, what)
        if regions is not None:
            if "styles" in over:
                raise ConfigError(f"{origin.get('style', what)}: region method '{method}' takes its styles from "
                                  f"region_styles, not style ({what})")
            over["styles"] = list(dict.fromkeys(Path(v) for v in regions["styles"].values() if v != "keep"))
        if "styles" not in over:
            raise ConfigError(f"{gp}: no style image (set settings.style or a style axis)")
        styles = over.pop("styles")
        try:
            config = make_config(**over)
        except ConfigError as exc:
            raise ConfigError(f"{what}: {exc}") from None
        _check_layers(config, origin, what)
        cid = cell_id(method, config, content, styles, regions)
        if cid in seen:
            continue
        seen.add(cid)
        cells.append(Cell(name, len(cells), cid, method, content, list(styles), config, labels, dict(options),
                          regions))
    if not cells:
        raise ConfigError(f"{gp}: no cells left (every combination is excluded)")
    return Grid(name, spec, cells, axis_names, exp.path)


def _check_layers(config: StyleConfig, origin: dict[str, str], what: str) -> None:
    names = backbones.layer_names(config.backbone)
    for key in ("content_layers", "style_layers"):
        for i, layer in enumerate(getattr(config, key) or ()):
            if layer not in names:
                where = f"{origin.get(key, what)}[{i}]"
                raise ConfigError(
                    f"{where}: unknown layer '{layer}' for backbone '{config.backbone}' "
                    f"(known: {', '.join(names)})" + (f" in {what}" if origin.get(key) else "")
                )


def load_grid(path: str | Path, name: str, methods: Iterable[str] | None = None) -> Grid:
    """Load `path` and expand grid `name`, checking everything before any work starts."""
    exp = load_experiments(path)
    if name not in exp.grids:
        raise ConfigError(f"{exp.path.name}: no grid '{name}' (grids: {', '.join(exp.grids)})")
    return expand(exp, name, methods)
