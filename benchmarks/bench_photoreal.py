"""Luan et al.'s photorealism regulariser: cost of the Matting Laplacian and of the loss term, and
the figure in docs/methods.md and docs/performance.md (content | style | plain | photoreal).

    PYTHONPATH=. python benchmarks/bench_photoreal.py --size 512                       # cost only
    PYTHONPATH=. python benchmarks/bench_photoreal.py --figure docs/images/photoreal.png \\
        --figure-size 256 --figure-steps 100 --weight 10000

Cost (at --size, longest side, on the content photo): the time to build L (median of --repeats,
cache bypassed), its nnz and memory (scipy float64 CSR; torch float32 CSR as the loss uses it), the
peak memory of the build (tracemalloc), and the term's forward+backward time per optimisation step
(median of 20), next to the seconds of --steps plain L-BFGS steps at that size for scale.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tracemalloc
from pathlib import Path

import torch

from nst import StyleConfig, stylize
from nst.data import image
from nst.evaluate import evaluate
from nst.images import load_image, save_image
from nst.photoreal import PhotorealLoss, matting_laplacian, photoreal_energy, to_torch
from nst.sheets import side_by_side

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fast import median_time  # noqa: E402  (shared timing helper)

STYLE = "nst/data/coco/000000547503.jpg"


def cost(content: torch.Tensor, repeats: int, steps: int, style: torch.Tensor) -> dict:
    h, w = content.shape[-2:]
    tracemalloc.start()
    lap = matting_laplacian(content)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    build = median_time(lambda: matting_laplacian(content), repeats, warmup=0)
    t = to_torch(lap)
    term = PhotorealLoss(content)
    term.laplacian((h, w), torch.device("cpu"))  # built and cached once, as in an optimisation
    x = content.clone().add_(0.05 * torch.randn_like(content)).requires_grad_(True)

    def step():
        x.grad = None
        term(x).backward()

    out = {
        "size": [int(w), int(h)],
        "pixels": int(h * w),
        "build_s": build,
        "nnz": int(lap.nnz),
        "nnz_per_row": lap.nnz / (h * w),
        "scipy_mb": (lap.data.nbytes + lap.indices.nbytes + lap.indptr.nbytes) / 2**20,
        "torch_mb": (t.values().nbytes + t.col_indices().nbytes + t.crow_indices().nbytes) / 2**20,
        "build_peak_mb": peak / 2**20,
        "term_step_s": median_time(step, 20, warmup=2),
    }
    if steps:
        cfg = StyleConfig(size=max(h, w), steps=steps, device="cpu")
        plain = stylize(content, [style], cfg)
        reg = stylize(content, [style], cfg.replace(photoreal_weight=1e4))
        out["plain_s_per_step"] = plain.timings["s_per_step"]
        out["photoreal_s_per_step"] = reg.timings["s_per_step"]  # includes building L on the first step
    return out


def figure(path: str, size: int, steps: int, weight: float, two_stage: bool, keep: bool = False) -> dict:
    content = load_image(image("tubingen.jpg"), size=size)
    style = load_image(STYLE, size=size)
    cfg = StyleConfig(size=size, steps=steps)
    runs = {"plain": cfg, f"photoreal {weight:g}": cfg.replace(photoreal_weight=weight)}
    if two_stage:
        runs[f"two-stage {weight:g}"] = cfg.replace(photoreal_weight=weight, photoreal_two_stage=True)
    images, labels, report = [content, style], ["content (Neckarfront)", "style (COCO 547503)"], {}
    for name, c in runs.items():
        r = stylize(content, [style], c)
        s = evaluate(r.image, content, [style])
        e = photoreal_energy(r.image, content)
        report[name] = {"photoreal_energy": e, "content_distance": s.content_distance,
                        "style_distance": s.style_distance, "ssim": s.ssim, "s_per_step": r.timings["s_per_step"]}
        if keep:
            save_image(r.image, path.replace(".png", f"_{name.split()[0]}.png"))
        images.append(r.image)
        labels.append(f"{name}\nenergy {e:.2e}  content {s.content_distance:.3f}\n"
                      f"style {s.style_distance:.3f}  SSIM {s.ssim:.3f}")
        print(json.dumps({name: report[name]}), flush=True)
    side_by_side(images, labels, height=size if size <= 320 else 320).save(path)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="longest side for the cost measurement (0: skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=0, help="also time this many stylize steps with/without the term")
    ap.add_argument("--figure", help="write the comparison figure here (PNG)")
    ap.add_argument("--figure-size", type=int, default=256)
    ap.add_argument("--figure-steps", type=int, default=100)
    ap.add_argument("--weight", type=float, default=1e4)
    ap.add_argument("--two-stage", action="store_true", help="add a two-stage run to the figure")
    ap.add_argument("--keep", action="store_true", help="also save each output next to the figure")
    args = ap.parse_args()
    result = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if args.size:
        result["cost"] = cost(load_image(image("tubingen.jpg"), size=args.size), args.repeats, args.steps,
                              load_image(STYLE, size=args.size))
        print(json.dumps(result["cost"]), flush=True)
    if args.figure:
        result["figure"] = figure(args.figure, args.figure_size, args.figure_steps, args.weight, args.two_stage,
                                  args.keep)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
