"""Bundled example images (see ATTRIBUTION.md) so demos and tests run offline on a fresh clone."""

from __future__ import annotations

from pathlib import Path

IMAGES = Path(__file__).resolve().parent / "images"


def image(name: str) -> Path:
    """Path of a bundled image, e.g. ``image("tubingen.jpg")``."""
    p = IMAGES / name
    if not p.exists():
        known = ", ".join(sorted(f.name for f in IMAGES.iterdir() if not f.name.startswith(".")))
        raise FileNotFoundError(f"no bundled image '{name}' (bundled: {known})")
    return p
