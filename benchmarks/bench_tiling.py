"""Tiled optimisation (nst.tiling): estimate vs measured peak memory, and tiled vs untiled quality.

    python benchmarks/bench_tiling.py --memory 256 512 1024 [--budget 1GB] [--steps 3]
        one fresh process per size (peak RSS = VmHWM of that process, which holds
        nothing but the run); prints the estimate next to the measured peak and their ratio.
    python benchmarks/bench_tiling.py --assets /tmp/print3000.png
        a 1024 px JPEG and a 1:1 crop of a print-size result for docs/images.
    python benchmarks/bench_tiling.py --compare --size 2048 --budget 6GB --steps 4
        the same short schedule untiled and tiled (both from the same coarse result); evaluator
        scores (content, style distance), a seam measure and peak memory of each.

The seam measure: mean squared image gradient (finite differences) on the pixel rows/columns
where tile cores met, divided by the same over all rows/columns.  The tile grid moves at every
evaluation, so the borders of the *last* evaluation's grid are measured, plus the fixed grid at
offset 0; a seam would be a ratio clearly above that of the untiled image at the same lines.
On a 2-core CPU a full 2048 px step takes tens of seconds: use few steps (docs/print-size.md says how many).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_CHILD = r"""
import json, sys, time
import torch
from nst import StyleConfig, stylize, tiling
from nst.hardware import peak_rss_bytes
from nst.data import image
from nst.images import load_image
args = json.loads(sys.argv[1])
torch.set_num_threads(args.get("threads", 2))
cfg = StyleConfig(size=args["size"], steps=args["steps"], scales=None, device="cpu",
                  precision=args.get("precision", "fp32"),
                  max_memory=args.get("budget"), **args.get("extra", {}))
content = load_image(image("tubingen.jpg"), size=cfg.size)
style = load_image(image("starry_night.jpg"), size=cfg.size)
hw = tuple(content.shape[-2:])
est = tiling.estimate_run(cfg, hw, speed=False)[-1][0]
base = peak_rss_bytes()
t0 = time.perf_counter()
r = stylize(content, [style], cfg)
print(json.dumps({"size": cfg.size, "hw": list(hw), "budget": args.get("budget"), "estimate": est.peak_bytes,
                  "tiled": est.tiled, "core": est.core,
                  "peak": peak_rss_bytes(),
                  "before_run": base, "s_per_step": r.timings["s_per_step"], "seconds": time.perf_counter() - t0}))
"""


def measure(size: int, steps: int, budget: str | None, threads: int, extra: dict | None = None,
            precision: str = "fp32") -> dict:
    arg = json.dumps({"size": size, "steps": steps, "budget": budget, "threads": threads, "extra": extra or {},
                      "precision": precision})
    p = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True, cwd=ROOT)
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def seam_ratio(img, lines_y, lines_x) -> float:
    """Mean squared finite difference across the given rows/columns over that across all of them."""
    import torch

    x = img.float()
    dy = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean(dim=(0, 1, 3))  # per row boundary y|y+1
    dx = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean(dim=(0, 1, 2))
    sel_y = [y - 1 for y in lines_y if 0 < y < x.shape[-2]]
    sel_x = [c - 1 for c in lines_x if 0 < c < x.shape[-1]]
    on = torch.cat([dy[sel_y], dx[sel_x]]).mean()
    return float(on / torch.cat([dy, dx]).mean())


def compare(args) -> dict:
    import torch

    from nst import StyleConfig, stylize, tiling
    from nst.data import image
    from nst.evaluate import evaluate
    from nst.hardware import peak_rss_bytes
    from nst.images import load_image, save_image

    torch.set_num_threads(args.threads)
    base = dict(size=args.size, steps=args.steps, scales=((0.25, args.coarse_steps), (0.5, args.coarse_steps)),
                device="cpu", precision=args.precision)
    content = load_image(image("tubingen.jpg"), size=args.size)
    style = load_image(image("starry_night.jpg"), size=args.size)
    out = {"size": args.size, "steps": args.steps, "coarse_steps": args.coarse_steps, "budget": args.budget,
           "precision": args.precision}
    results = {}
    for name, extra in (("untiled", {}), ("tiled", {"max_memory": args.budget})):
        cfg = StyleConfig(**base, **extra)
        est = tiling.estimate_run(cfg, tuple(content.shape[-2:]), speed=False)
        t0 = time.perf_counter()
        r = stylize(content, [style], cfg)
        secs = time.perf_counter() - t0
        scores = evaluate(r.image, content, [style])
        results[name] = r
        if args.save:
            save_image(r.image, Path(args.save) / f"bench_tiling_{name}_{args.size}.png")
        out[name] = {"content_distance": scores.content_distance, "style_distance": scores.style_distance,
                     "ssim": scores.ssim, "seconds": secs, "s_per_step_full": r.timings["s_per_step"],
                     "estimate_gb": max(e.peak_bytes for e, _ in est) / 2**30,
                     "tiled_scales": r.info.get("tiled_scales", []),
                     "final_loss": r.history[-1]["total"],
                     # the process's peak so far: the untiled run comes first, so its value is its own
                     "process_peak_rss_gb": peak_rss_bytes() / 2**30}
        for st in r.info["stages"]:
            if "tile_core" in st:
                out[name]["tile_core"], out[name]["tile_halo"] = st["tile_core"], st["tile_halo"]
    # seams: the borders of a tile grid of the finest tiled scale, at offset 0 and at 3 random offsets
    t = out["tiled"]
    if "tile_core" in t:
        h, w = results["tiled"].image.shape[-2:]
        core = t["tile_core"]
        ratios = {"tiled": [], "untiled": []}
        gen = torch.Generator().manual_seed(1)
        offs = [(0, 0)] + [tuple(int(v) * 16 for v in torch.randint(0, core // 16, (2,), generator=gen))
                           for _ in range(3)]
        for oy, ox in offs:
            ly = list(range(oy or core, h, core))
            lx = list(range(ox or core, w, core))
            for name in ratios:
                ratios[name].append(seam_ratio(results[name].image, ly, lx))
        out["seam_ratio"] = {k: sum(v) / len(v) for k, v in ratios.items()}
    u, tt = out["untiled"], out["tiled"]
    out["relative_diff"] = {k: (tt[k] - u[k]) / u[k] for k in ("content_distance", "style_distance")}
    out["mean_abs_pixel_diff"] = float((results["tiled"].image - results["untiled"].image).abs().mean())
    return out


def assets(src: str, out_dir: Path, stem: str) -> list[Path]:
    """A print-size result as committable files: a 1024 px JPEG of the whole and a 1:1 crop (768x512 px,
    from the middle) showing the detail; each well under 3 MB."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    out_dir.mkdir(parents=True, exist_ok=True)
    small = img.copy()
    small.thumbnail((1024, 1024), Image.LANCZOS)
    a = out_dir / f"{stem}_1024.jpg"
    small.save(a, quality=90)
    w, h = img.size
    cw, ch = 768, 512
    box = (w // 2 - cw // 2, h // 2 - ch // 2, w // 2 + cw // 2, h // 2 + ch // 2)
    b = out_dir / f"{stem}_crop_1to1.png"
    img.crop(box).save(b, optimize=True)
    return [a, b]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memory", nargs="+", type=int, metavar="SIZE", help="estimate vs measured peak at these sizes")
    ap.add_argument("--compare", action="store_true", help="tiled vs untiled at --size")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--budget", help="max_memory for the tiled run(s), e.g. 6GB")
    ap.add_argument("--steps", type=int, default=3, help="full-size steps")
    ap.add_argument("--coarse-steps", type=int, default=10, help="--compare: steps at 0.25 and 0.5 of the size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32", help="fp32 (default), bf16, auto")
    ap.add_argument("--save", help="--compare: folder for the two images")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--assets", metavar="IMAGE", help="write a 1024 px copy and a 1:1 crop of IMAGE to docs/images")
    ap.add_argument("--stem", default="tubingen_starry_night_3000", help="--assets: file name stem")
    args = ap.parse_args()
    if args.assets:
        for f in assets(args.assets, ROOT / "docs" / "images", args.stem):
            print(f"wrote {f} ({f.stat().st_size / 2**20:.2f} MB)")
        return
    rows = []
    if args.memory:
        for size in args.memory:
            r = measure(size, args.steps, args.budget, args.threads, precision=args.precision)
            r["ratio"] = r["estimate"] / r["peak"]
            rows.append(r)
            print(f"{r['hw'][1]}x{r['hw'][0]} budget={r['budget']} tiled={r['tiled']} core={r['core']}: "
                  f"estimate {r['estimate'] / 2**30:.3f} GB, measured peak {r['peak'] / 2**30:.3f} GB "
                  f"(ratio {r['ratio']:.2f}), {r['s_per_step']:.2f} s/step", flush=True)
    if args.compare:
        rows.append(compare(args))
        print(json.dumps(rows[-1], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
