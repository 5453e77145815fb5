"""Per-step costs of pastiche and of nst at every scale of its default schedule, in one process.

Used to convert step counts into time when the machine is shared (wall-clock figures are then
distorted, but the costs of the different steps, measured back to back in one process, keep their
proportions much better; CPU time per step is printed next to wall time).  For each scale it runs a
few L-BFGS steps of nst (the real `stylize` loop: network, losses, optimiser) and a few of pastiche
at the full size, interleaved, and keeps the fastest repeat.  The last line projects nst's default
run (all scales, plus its target features) in pastiche steps and as a ratio to 300 of them.

    python benchmarks/step_costs.py --pair tubingen.jpg:starry_night.jpg --size 512
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nst import backbones, load_image, stylize  # noqa: E402
from nst.config import make_config  # noqa: E402
from nst.data import image  # noqa: E402
from nst.features import DEFAULT_CACHE  # noqa: E402
from nst.optimize import pyramid, style_size  # noqa: E402


def nst_step_cost(content, style, config, hw, steps: int) -> tuple[float, float]:
    """(wall, cpu) seconds per step at size `hw` (targets cached beforehand, not counted)."""
    c = torch.nn.functional.interpolate(content, size=hw, mode="bilinear", antialias=True, align_corners=False)
    cfg = config.replace(size=max(hw), scales=None, steps=1)
    stylize(c, [style], cfg)  # warm: targets into the cache, allocator
    cfg = cfg.replace(steps=steps)
    p = time.process_time()
    r = stylize(c, [style], cfg)
    return r.timings["optimize_s"] / steps, (time.process_time() - p) / steps


def pastiche_step_cost(content: Path, style: Path, size: int, style_px: int, steps: int) -> tuple[float, float]:
    from pastiche.pastiche import PasticheArtist

    artist = PasticheArtist(str(content), [str(style)], device="cpu", size=size, style_size=style_px)
    artist.draw()
    w, p = time.perf_counter(), time.process_time()
    for _ in range(steps):
        artist.draw()
    return (time.perf_counter() - w) / steps, (time.process_time() - p) / steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", default="tubingen.jpg:starry_night.jpg")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3, help="steps per measurement")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pastiche-steps", type=int, default=300)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    c_name, s_name = args.pair.split(":")
    c_path, s_path = Path(image(c_name)), Path(image(s_name))
    config = make_config(size=args.size, device="cpu")
    content = load_image(c_path, size=args.size)
    s_px = style_size(content, config.style_scale)
    style = load_image(s_path, size=s_px)
    backbones.get_backbone(config.backbone, config.pooling, config.weights, torch.device("cpu"))
    sched = pyramid(config, tuple(content.shape[-2:]))
    costs: dict[tuple[int, int], tuple[float, float]] = {}
    pastiche = (float("inf"), float("inf"))
    for _ in range(args.repeats):
        p = pastiche_step_cost(c_path, s_path, args.size, s_px, args.steps)
        pastiche = (min(pastiche[0], p[0]), min(pastiche[1], p[1]))
        for hw, _n in sched:
            st = nst_step_cost(content, style, config, hw, args.steps)
            old = costs.get(hw, (float("inf"), float("inf")))
            costs[hw] = (min(old[0], st[0]), min(old[1], st[1]))
    DEFAULT_CACHE.clear()
    probe = stylize(content, [style], config.replace(steps=0, scales=tuple((f, 0) for f, _ in config.scales or ())))
    targets_s = probe.timings["targets_s"]  # full-size targets only (coarse ones are cheaper still)
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{c_name} at {content.shape[-1]}x{content.shape[-2]}")
    print(f"pastiche at full size: {pastiche[0]:.3f} s/step wall, {pastiche[1]:.3f} s/step CPU")
    total_w = total_c = 0.0
    for hw, n in sched:
        w, cpu = costs[hw]
        total_w += n * w
        total_c += n * cpu
        print(f"nst {hw[1]}x{hw[0]}: {w:.3f} s/step wall ({w / pastiche[0]:.3f} pastiche steps), "
              f"{cpu:.3f} s/step CPU ({cpu / pastiche[1]:.3f}); {n} steps by default")
    n_scales = len(sched)
    proj_w = total_w + targets_s * n_scales
    print(f"default run ~ {proj_w:.1f}s wall = {proj_w / pastiche[0]:.1f} pastiche steps "
          f"(targets ~{targets_s:.2f}s per scale, counted at full size); ratio to {args.pastiche_steps} pastiche "
          f"steps: {proj_w / (args.pastiche_steps * pastiche[0]):.3f} "
          f"(CPU time: {total_c / (args.pastiche_steps * pastiche[1]):.3f} without targets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
