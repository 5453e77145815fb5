"""Batched cells: N optimisations of one shape as one batch vs one after the other, same process.

Each job is a grid cell's optimisation (the bundled Neckarfront with a different painting and style
weight per job, the engine's default coarse-to-fine schedule).  Prints the seconds per cell of both
ways, their ratio, and how far a job's batched result is from its solo one (mean pixel difference,
final loss; rounding differs, which L-BFGS amplifies over the steps, but the batch must not change
the result beyond that).  On a CPU batching pays only at small sizes (`--batch-pixels`, the
grid's default 65536); on a GPU pass `--device cuda --batch-pixels 0` (no limit).

    python benchmarks/bench_batch.py --size 256 --jobs 8
    python benchmarks/bench_batch.py --device cuda --size 512 --jobs 16 --batch-pixels 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nst import StyleConfig, load_image
from nst.data import image
from nst.features import DEFAULT_CACHE
from nst.optimize import StyleJob, stylize, stylize_batch

STYLES = ("starry_night.jpg", "the_scream.jpg", "kandinsky.jpg", "wave.jpg")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-pixels", type=int, default=1 << 16, help="pixels per batched forward; 0: no limit")
    ap.add_argument("--json", help="write the figures to this JSON file")
    args = ap.parse_args(argv)

    content = load_image(image("tubingen.jpg"), size=args.size)
    styles = [load_image(image(s)) for s in STYLES]
    weights = (12.0, 60.0)
    jobs = [StyleJob(content, [styles[i % len(styles)]], StyleConfig(size=args.size, device=args.device,
                                                                      style_weight=weights[(i // len(styles)) % 2]))
            for i in range(args.jobs)]
    # warm-up: network, allocator and every job's targets in the cache (both ways then reuse them)
    stylize_batch(jobs, max_batch_pixels=args.batch_pixels or None)
    DEFAULT_CACHE.hits = 0

    _sync(args.device)
    t = time.perf_counter()
    solo = [stylize(j.content, j.styles, j.config) for j in jobs]
    _sync(args.device)
    solo_s = time.perf_counter() - t
    t = time.perf_counter()
    batched = stylize_batch(jobs, max_batch_pixels=args.batch_pixels or None)
    _sync(args.device)
    batch_s = time.perf_counter() - t

    # Batched and solo convolutions round differently and L-BFGS amplifies that over the steps, so the
    # images are compared as a whole: mean pixel difference and final loss
    diff = sum(float((a.image - b.image).abs().mean()) for a, b in zip(solo, batched)) / len(jobs)
    loss_diff = max(abs(a.history[-1]["total"] / b.history[-1]["total"] - 1) for a, b in zip(solo, batched))
    chunks = [st["batch"] for st in batched[0].info["stages"]]
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"{args.jobs} jobs at {tuple(content.shape[-2:])} on {dev} ({batched[0].info['precision']}), "
          f"stages {[st['size'] for st in batched[0].info['stages']]}, jobs per batched forward {chunks}")
    print(f"one after the other: {solo_s / args.jobs:.3f} s/cell")
    print(f"batched:             {batch_s / args.jobs:.3f} s/cell")
    print(f"ratio batched/solo: {batch_s / solo_s:.3f}; batched vs solo results: mean pixel difference {diff:.4f}, "
          f"final loss within {100 * loss_diff:.2f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"jobs": args.jobs, "size": list(content.shape[-2:]), "device": dev,
                                               "chunks": chunks, "solo_s_per_cell": solo_s / args.jobs,
                                               "batched_s_per_cell": batch_s / args.jobs,
                                               "ratio": batch_s / solo_s, "mean_pixel_diff": diff,
                                               "max_final_loss_rel_diff": loss_diff}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
