"""Label-map sources for localized style transfer: mask files, COCO, DeepLabv3, a person segmenter.

Every source returns a `RegionMap`: an integer label per pixel plus a name per
label (``background`` is label 0).  `nst.regions` turns a region map and a
``{region name: style}`` assignment into a stylised image.

* `from_mask_file` — a PNG (or any image) of labels: binary, grey levels,
  palette indices or flat RGB colours; resized with nearest neighbour.
* `from_coco` — pycocotools ``annToMask`` for the chosen category names.
* `from_deeplab` — torchvision DeepLabv3 (the seed report's choice); weights
  from a path or the torch hub cache, never downloaded.
* `from_person` — the MediaPipe selfie segmenter shipped in ``nst/data/models``
  (Apache-2.0), run with the ``ai-edge-litert`` interpreter: works offline.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import ConfigError, WeightsError
from .images import open_image

MODELS = Path(__file__).resolve().parent / "data" / "models"
PERSON_MODEL = MODELS / "selfie_segmentation.tflite"
PERSON_MODEL_LANDSCAPE = MODELS / "selfie_segmentation_landscape.tflite"
#: Relative aspect-ratio difference a mask may have from the content and still be resized onto it.
ASPECT_TOLERANCE = 0.03
#: More distinct values than this in a mask file means it is a photo, not a label image.
MAX_LABELS = 64


class RegionError(ConfigError):
    """A region map that cannot be used: wrong size, unknown category, unassigned label, ..."""


@dataclass
class RegionMap:
    """Integer labels ``[H, W]`` (0 .. len(names)-1) and the name of each label.

    `values` are the label values as found in the source (e.g. 0/255 in a
    binary PNG); they are accepted as region names too.
    """

    labels: torch.Tensor  # int64 [H, W]
    names: list[str]
    values: list[int] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        if not self.values:
            self.values = list(range(len(self.names)))

    @property
    def size(self) -> tuple[int, int]:
        return int(self.labels.shape[0]), int(self.labels.shape[1])

    def index(self, name: str) -> int:
        """Label index of a region given by name or by its source value; `RegionError` if unknown."""
        if name in self.names:
            return self.names.index(name)
        if name.lstrip("-").isdigit() and int(name) in self.values:
            return self.values.index(int(name))
        raise RegionError(f"no region '{name}' in the region map ({self.source}); regions: {', '.join(self.names)}")

    def mask(self, index: int) -> torch.Tensor:
        """``[1, 1, H, W]`` float mask of one label."""
        return (self.labels == index).float()[None, None]

    def area(self, index: int) -> float:
        return float((self.labels == index).float().mean())

    def resized(self, hw: tuple[int, int], what: str = "content") -> "RegionMap":
        """This map at ``(h, w)`` with nearest neighbour; `RegionError` if the aspect ratios differ."""
        hw = (int(hw[0]), int(hw[1]))
        if self.size == hw:
            return self
        check_aspect(self.size, hw, f"region map ({self.source})", what)
        lab = F.interpolate(self.labels[None, None].float(), size=hw, mode="nearest")[0, 0].long()
        return RegionMap(lab, list(self.names), list(self.values), self.source)


def check_aspect(src: tuple[int, int], dst: tuple[int, int], name: str, what: str) -> None:
    ra, rb = src[1] / src[0], dst[1] / dst[0]
    if abs(ra - rb) / rb > ASPECT_TOLERANCE:
        raise RegionError(
            f"{name} is {src[1]}x{src[0]} but the {what} is {dst[1]}x{dst[0]}: aspect ratios differ "
            f"({ra:.3f} vs {rb:.3f}), a mask must have the image's shape (any size)"
        )


# --------------------------------------------------------------------------- mask files


def from_mask_file(path: str | os.PathLike, size: tuple[int, int] | None = None) -> RegionMap:
    """Labels from an image file: grey/binary values, palette indices or flat RGB colours.

    Label 0 is the lowest value (black), named ``background``; a binary mask's
    other label is ``foreground``; multi-label images name labels by value.
    """
    p = Path(path)
    img = open_image(p)
    if img.mode == "P":
        raw = np.asarray(img).astype(np.int64)
    elif img.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L"):
        raw = np.asarray(img).astype(np.int64)
    else:
        rgb = np.asarray(img.convert("RGB")).astype(np.int64)
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            raw = rgb[..., 0]
        else:
            raw = rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]
    uniq, inverse = np.unique(raw, return_inverse=True)
    if len(uniq) > MAX_LABELS:
        raise RegionError(
            f"{p}: {len(uniq)} distinct values; a label image has at most {MAX_LABELS} "
            "(flat colours, no antialiasing or JPEG compression; save masks as PNG)"
        )
    values = [int(v) for v in uniq]
    if len(values) == 2:
        names = ["background", "foreground"]
    else:
        names = ["background" if i == 0 else str(v) for i, v in enumerate(values)]
    rm = RegionMap(torch.from_numpy(inverse.reshape(raw.shape)).long(), names, values, str(p))
    return rm.resized(size) if size is not None else rm


# --------------------------------------------------------------------------- COCO


def _load_coco(annotations: str | os.PathLike):
    from pycocotools.coco import COCO

    p = Path(annotations)
    if not p.is_file():
        raise RegionError(f"COCO annotations {p}: no such file")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            return COCO(str(p))
    except Exception as exc:  # invalid JSON, wrong structure
        raise RegionError(f"COCO annotations {p}: cannot be read ({type(exc).__name__}: {exc})") from None


def from_coco(
    annotations: str | os.PathLike,
    image_file: str | os.PathLike,
    categories: Sequence[str],
    size: tuple[int, int] | None = None,
) -> RegionMap:
    """Labels for one COCO image (matched by file name): label i+1 = `categories[i]`, 0 = the rest.

    Where instances overlap, smaller ones are painted over larger ones (they
    are usually in front).
    """
    coco = _load_coco(annotations)
    name = Path(image_file).name
    imgs = [i for i in coco.dataset.get("images", []) if Path(i.get("file_name", "")).name == name]
    if not imgs:
        raise RegionError(f"image '{name}' is not in the COCO file {annotations} (matched by file name)")
    info = imgs[0]
    by_name = {c["name"]: c["id"] for c in coco.dataset.get("categories", [])}
    cats = [c.strip() for c in categories if c.strip()]
    if not cats:
        raise RegionError("coco: no category named (e.g. coco:person or coco:person,bus)")
    for c in cats:
        if c not in by_name:
            raise RegionError(f"unknown COCO category '{c}' in {annotations}; known: {', '.join(sorted(by_name))}")
    if "background" in cats:
        raise RegionError("coco: 'background' is the name of everything else, not a category")
    h, w = int(info["height"]), int(info["width"])
    labels = np.zeros((h, w), dtype=np.int64)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[info["id"]], catIds=[by_name[c] for c in cats], iscrowd=None))
    label_of = {by_name[c]: i + 1 for i, c in enumerate(cats)}
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy= deprecation, not ours to fix
        warnings.simplefilter("ignore", DeprecationWarning)
        for ann in sorted(anns, key=lambda a: -float(a.get("area", 0.0))):
            labels[coco.annToMask(ann).astype(bool)] = label_of[ann["category_id"]]
    rm = RegionMap(torch.from_numpy(labels), ["background", *cats], source=f"coco:{','.join(cats)} {name}")
    return rm.resized(size) if size is not None else rm


# --------------------------------------------------------------------------- DeepLabv3

DEEPLAB_ARCHS = {
    "resnet50": ("deeplabv3_resnet50", "DeepLabV3_ResNet50_Weights"),
    "resnet101": ("deeplabv3_resnet101", "DeepLabV3_ResNet101_Weights"),
    "mobilenet_v3_large": ("deeplabv3_mobilenet_v3_large", "DeepLabV3_MobileNet_V3_Large_Weights"),
}


def deeplab_classes() -> list[str]:
    """The 21 Pascal VOC class names DeepLabv3's torchvision weights predict (index 0 = background)."""
    from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights

    return ["background", *DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["categories"][1:]]


def load_deeplab(arch: str = "resnet50", weights: str | os.PathLike | None = None) -> tuple[torch.nn.Module, str]:
    """A DeepLabv3 model in eval mode with weights from `weights` (a file) or the torch hub cache."""
    import torchvision.models.segmentation as seg

    from .backbones import RANDOM, resolve_torchvision_state

    if arch not in DEEPLAB_ARCHS:
        raise ConfigError(f"deeplab: unknown architecture '{arch}'; known: {', '.join(DEEPLAB_ARCHS)}")
    if weights == RANDOM:
        raise WeightsError("deeplab: weights=random gives meaningless regions; give a weights file")
    fn, enum = DEEPLAB_ARCHS[arch]
    display = f"deeplabv3-{arch}"
    if weights is None:
        from .backbones import hub_checkpoint

        cached = hub_checkpoint(getattr(seg, enum).COCO_WITH_VOC_LABELS_V1.url)
        if not cached.exists():
            raise WeightsError(
                f"{display}: weights not found offline (expected {cached}); give a torchvision DeepLabV3 state "
                f"dict with --seg-weights PATH, fetch it once online (python -c \"import torchvision; "
                f"torchvision.models.segmentation.{fn}(weights='COCO_WITH_VOC_LABELS_V1')\"), "
                "or use --regions person (offline person segmenter)"
            )
    state, source = resolve_torchvision_state(display, getattr(seg, enum).COCO_WITH_VOC_LABELS_V1,
                                              None if weights is None else str(weights))
    model = getattr(seg, fn)(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("aux_classifier.")]
    if missing or [k for k in unexpected if not k.startswith("aux_classifier.")]:
        bad = (missing or unexpected)[0]
        raise WeightsError(f"{display}: {source} is not a DeepLabv3 {arch} state dict (e.g. key {bad})")
    return model.eval(), source


@torch.no_grad()
def from_deeplab(
    image: torch.Tensor,
    classes: Sequence[str] = ("person",),
    weights: str | os.PathLike | None = None,
    arch: str = "resnet50",
    device: str | torch.device = "cpu",
    resolution: int = 520,
) -> RegionMap:
    """Labels from DeepLabv3's per-pixel argmax: label i+1 = `classes[i]` (VOC names), 0 = the rest."""
    known = deeplab_classes()
    classes = [c.strip() for c in classes if c.strip()]
    for c in classes:
        if c not in known[1:]:
            raise RegionError(f"unknown DeepLabv3 class '{c}'; known: {', '.join(known[1:])}")
    model, _source = load_deeplab(arch, weights)
    model = model.to(device)
    h, w = image.shape[-2:]
    scale = resolution / min(h, w)
    x = F.interpolate(image.float(), size=(max(1, round(h * scale)), max(1, round(w * scale))),
                      mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    logits = model(((x - mean) / std).to(device))["out"].float().cpu()
    pred = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).argmax(1)[0]
    labels = torch.zeros_like(pred)
    for i, c in enumerate(classes):
        labels[pred == known.index(c)] = i + 1
    return RegionMap(labels.long(), ["background", *classes], source=f"deeplabv3-{arch}:{','.join(classes)}")


# --------------------------------------------------------------------------- MediaPipe person


_INTERPRETERS: dict[str, object] = {}


@contextlib.contextmanager
def _quiet_stderr():
    """Silence native-library logging on file descriptor 2 (Python-level errors still propagate)."""
    try:
        saved = os.dup(2)
    except OSError:  # no real fd 2 (embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _interpreter(path: Path):
    key = str(path)
    if key not in _INTERPRETERS:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise WeightsError(
                "person segmenter: the 'ai-edge-litert' package is not installed (pip install 'nst-lab[regions]')"
            ) from None
        if not path.is_file():
            raise WeightsError(f"person segmenter: model file missing: {path}")
        with _quiet_stderr():  # the TFLite runtime logs "INFO: Created ... delegate" on fd 2
            it = Interpreter(model_path=str(path))
            it.allocate_tensors()
        _INTERPRETERS[key] = it
    return _INTERPRETERS[key]


def person_probability(image: torch.Tensor, model: str = "auto") -> torch.Tensor:
    """MediaPipe selfie segmentation: person probability ``[H, W]`` in [0, 1] for a ``[1,3,H,W]`` image.

    `model`: ``general`` (256x256 input), ``landscape`` (144x256), or ``auto``
    (landscape for images wider than 4:3).
    """
    h, w = image.shape[-2:]
    if model == "auto":
        model = "landscape" if w / h > 4 / 3 else "general"
    if model not in ("general", "landscape"):
        raise ConfigError(f"person segmenter: unknown model '{model}' (general, landscape, auto)")
    it = _interpreter(PERSON_MODEL_LANDSCAPE if model == "landscape" else PERSON_MODEL)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    ih, iw = int(inp["shape"][1]), int(inp["shape"][2])
    x = F.interpolate(image.float().cpu(), size=(ih, iw), mode="bilinear", align_corners=False, antialias=True)
    it.set_tensor(inp["index"], np.ascontiguousarray(x.clamp(0, 1)[0].permute(1, 2, 0).numpy()[None]))
    with _quiet_stderr():
        it.invoke()
    p = torch.from_numpy(np.array(it.get_tensor(out["index"]), dtype=np.float32)).reshape(1, 1, ih, iw)
    return F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)


def from_person(image: torch.Tensor, threshold: float = 0.5, model: str = "auto") -> RegionMap:
    """Person (label 1) vs background (label 0) with the shipped MediaPipe model; offline."""
    p = person_probability(image, model)
    return RegionMap((p > threshold).long(), ["background", "person"], source="person (mediapipe selfie)")


# --------------------------------------------------------------------------- one entry point


def region_map(
    spec: str,
    content: torch.Tensor,
    *,
    content_path: str | os.PathLike | None = None,
    coco: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    arch: str = "resnet50",
    device: str | torch.device = "cpu",
) -> RegionMap:
    """A region map at the content's size from a spec string (the CLI's ``--regions``).

    ``coco:CAT[,CAT...]`` (needs `coco` and `content_path`), ``person``,
    ``deeplab[:CLASS,...]`` (default person), or the path of a label image.
    """
    hw = tuple(content.shape[-2:])
    if spec.startswith("coco:"):
        if coco is None:
            raise RegionError(f"--regions {spec} needs --coco ANNOTATIONS.json")
        if content_path is None:
            raise RegionError("coco regions need the content's file name to find it in the COCO file")
        return from_coco(coco, content_path, spec[5:].split(","), size=hw)
    if spec == "person" or spec.startswith("person:"):
        model = spec.split(":", 1)[1] if ":" in spec else "auto"
        return from_person(content, model=model)
    if spec == "deeplab" or spec.startswith("deeplab:"):
        classes = spec.split(":", 1)[1].split(",") if ":" in spec else ["person"]
        return from_deeplab(content, classes, weights=weights, arch=arch, device=device)
    if not Path(spec).exists():
        raise RegionError(
            f"--regions '{spec}': neither coco:CATEGORY, person, deeplab[:CLASS,...] nor an existing mask file"
        )
    return from_mask_file(spec, size=hw)


#: Distinct colours for drawing region maps (label 0 dark grey).
PALETTE = [(40, 40, 40), (230, 80, 60), (70, 150, 230), (240, 200, 60), (90, 190, 110),
           (170, 90, 200), (240, 140, 40), (60, 200, 200)]


def colorize(rm: RegionMap) -> torch.Tensor:
    """The region map as a ``[1, 3, H, W]`` colour image (for contact sheets next to outputs)."""
    pal = torch.tensor([PALETTE[i % len(PALETTE)] for i in range(len(rm.names))], dtype=torch.float32) / 255
    return pal[rm.labels].permute(2, 0, 1)[None].contiguous()


def save_label_png(rm: RegionMap, path: str | os.PathLike) -> None:
    """Write the labels (0..K-1) as an 8-bit PNG that `from_mask_file` reads back (atomically)."""
    from .images import atomic_write

    arr = rm.labels.numpy().astype(np.uint8)
    atomic_write(Path(path), lambda tmp: Image.fromarray(arr, mode="L").save(tmp, format="PNG"))
