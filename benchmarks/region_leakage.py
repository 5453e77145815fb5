"""Leakage of the region methods on a real COCO photo: each region's style distance to its own
style vs to the other region's style (fixed evaluator, masked Gram), plus wall time.

    python benchmarks/region_leakage.py --size 160 --steps 80 --out reports/regions

Prints a Markdown table; saves each output, the region map and a CSV under --out.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from nst.data import image
from nst.evaluate import Evaluator
from nst.images import load_image, save_image
from nst.regions import METHODS, leakage, stylize_regions
from nst.segment import colorize, from_coco

COCO = Path("/work/shared/data/coco")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--coco", default=str(COCO / "instances_ccby2.json"))
    p.add_argument("--content", default=str(COCO / "images" / "000000547503.jpg"))
    p.add_argument("--category", default="person")
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--eval-resolution", type=int, default=256)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--out", default="reports/regions")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    content = load_image(a.content, size=a.size)
    rm = from_coco(a.coco, a.content, [a.category], size=tuple(content.shape[-2:]))
    save_image(colorize(rm), out / "regions.png")
    styles = {a.category: image("the_scream.jpg"), "background": image("starry_night.jpg")}
    ev = Evaluator(resolution=a.eval_resolution)
    rows = []
    base = leakage(content, rm, styles, ev)
    rows.append({"method": "(content, unstyled)", "own": base["own"], "other": base["other"],
                 "ratio": base["ratio"], "wall_s": 0.0, "steps": 0})
    for m in a.methods:
        t = time.perf_counter()
        r = stylize_regions(content, rm, styles, m, dict(size=a.size, steps=a.steps, device="cpu"))
        wall = time.perf_counter() - t
        save_image(r.image, out / f"{m}.png")
        lk = leakage(r.image, rm, styles, ev)
        rows.append({"method": m, "own": lk["own"], "other": lk["other"], "ratio": lk["ratio"],
                     "wall_s": wall, "steps": len(r.history),
                     **{f"{n}_{k}": v for n, d in lk["regions"].items() for k, v in d.items() if k != "area"}})
        print(f"{m}: ratio {lk['ratio']:.3f} own {lk['own']:.3f} other {lk['other']:.3f} in {wall:.1f}s", flush=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "leakage.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    print(f"\ncontent {Path(a.content).name} at {tuple(content.shape[-2:])}, {a.category} {rm.area(1):.0%}, "
          f"{a.steps} L-BFGS steps per run, evaluator @{a.eval_resolution}px\n")
    print("| method | own-style dist | other-style dist | leakage ratio own/other (lower = less leak) | wall s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['own']:.3f} | {r['other']:.3f} | {r['ratio']:.3f} | {r['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
