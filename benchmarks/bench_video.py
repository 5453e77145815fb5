"""Video frames/s of `nst video --mode fast`: the whole pipeline, and what each frame costs per part.

1. The pipeline as the command runs it (`nst.video.stylize_video`: decode, `--workers` networks, encode in
   threads, the output conv folded (`nst.fast.fold`); optional flows for stabilisation and the warping
   error): frames/s after the first frame (which compiles the network; `--no-compile`: eager).
2. Each part alone on the same frames, one after another, torch and OpenCV on one thread: wall ms and CPU
   ms per frame (x264 keeps its own threads).  CPU ms is the work of the part whatever else the machine
   runs, so ``cores * 1000 / sum(CPU ms)`` bounds the frames/s of an idle machine with `cores` cores when
   the parts overlap perfectly (the pipeline's threads and workers).

With --model (a shipped network's name or a model file) that network runs, else an untrained one of
--width (the speed does not depend on training).

    python benchmarks/bench_video.py --video ../shared/data/video/bunny.mp4 --size 640 [--model starry_night]
    python benchmarks/bench_video.py ... --stabilize 0.5 --warp-error-every 1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from nst import video
from nst.fast.fold import fold_output_conv
from nst.fast.infer import Stylizer
from nst.fast.network import NetConfig, TransformNet


def network(model: str | None, width: int):
    if model:
        return model
    torch.manual_seed(0)
    return TransformNet(NetConfig(width=width))


def timed(fn, n: int) -> tuple[float, float]:
    """(wall ms, process CPU ms) per call of fn(i), i = 0..n-1."""
    w, c = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return 1000 * (time.perf_counter() - w) / n, 1000 * (time.process_time() - c) / n


def parts(frames: list[torch.Tensor], st: Stylizer, stabilize: float, preset: str,
          out_dir: Path) -> dict[str, tuple[float, float]]:
    """Wall and CPU ms per frame of each part, alone, torch and OpenCV single-threaded."""
    import cv2

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        return _parts(frames, st, stabilize, preset, out_dir)
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


def _parts(frames: list[torch.Tensor], st: Stylizer, stabilize: float, preset: str,
           out_dir: Path) -> dict[str, tuple[float, float]]:
    n = len(frames)
    res: dict[str, tuple[float, float]] = {}
    src = out_dir / "src.mp4"
    video.write_video(src, frames, 24)
    it = iter(video.read_frames(src))
    res["decode"] = timed(lambda i: next(it), n)
    outs = [st(f) for f in frames[:2]]  # warm
    outs = []
    res["network"] = timed(lambda i: outs.append(st(frames[i])), n)
    flow = video.DISFlow()
    flows = []

    def pair(i: int) -> None:
        back, fwd, _, _ = video.flow_pair(flow, frames[i], frames[i - 1])
        flows.append((back, video.consistency_mask(back, fwd)))

    res["flow pair + mask"] = timed(lambda i: pair(i + 1), n - 1)

    def blend(i: int) -> None:
        back, mask = flows[i]
        warped = video.warp(outs[i], back)
        video.warping_error(video.stabilise(outs[i + 1], warped, mask, stabilize or 0.5), outs[i], back, mask,
                            warped=warped)

    res["warp + blend + error"] = timed(blend, n - 1)
    it_out = iter(outs)
    t = {"encode_s": 0.0}
    w, c = time.perf_counter(), time.process_time()
    video.write_video(out_dir / "enc.mp4", it_out, 24, timings=t, preset=preset)
    res["encode"] = (1000 * (time.perf_counter() - w) / n, 1000 * (time.process_time() - c) / n)
    return res


def pipeline(src: str, size: int, max_frames: int | None, st: Stylizer, stabilize: float, every: int,
             workers: int, preset: str, out: Path) -> dict:
    fs = video.FrameStylizer("fast", model=st, stabilize=stabilize, measure=every > 0, measure_every=max(every, 1))
    t = time.perf_counter()
    res = video.stylize_video(src, out, fs, size=size, max_frames=max_frames, workers=workers, preset=preset)
    wall = time.perf_counter() - t
    later = max(res.frames - 1, 1)
    return {"frames": res.frames, "wall_s": wall, "frames_per_s": res.frames / wall,
            "steady_frames_per_s": res.info["steady_frames_per_s"], "warp_error": res.warp_error,
            "measured_pairs": res.info["measured_pairs"],
            "ms_per_frame": {"decode": 1000 * res.info["decode_s"] / res.frames,
                             **{k[:-2]: 1000 * res.info[k] / later for k in ("flow_s", "stylize_s", "temporal_s")},
                             "encode": 1000 * res.info["encode_s"] / res.frames}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", default="../shared/data/video/bunny.mp4")
    ap.add_argument("--size", type=int, default=640, help="longest side (bunny.mp4 is 640x360)")
    ap.add_argument("--max-frames", type=int, help="pipeline: only the first N frames (default: all)")
    ap.add_argument("--part-frames", type=int, default=48, help="frames for the per-part timings")
    ap.add_argument("--model", help="shipped network's name or model file (default: untrained, --width)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-fold", action="store_true", help="the output conv as trained (`nst.fast.fold` off)")
    ap.add_argument("--workers", type=int, default=2, help="networks at once, as `nst video --workers`")
    ap.add_argument("--preset", default="veryfast", help="x264 preset, as `nst video --preset`")
    ap.add_argument("--stabilize", type=float, default=0.0)
    ap.add_argument("--warp-error-every", type=int, default=0, help="0: no warping error (no flows without "
                    "--stabilize)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    st = Stylizer(network(args.model, args.width), precision=args.precision, device="cpu",
                  compile=not args.no_compile)
    if not args.no_fold:
        fold_output_conv(st.net)
    frames = list(video.read_frames(args.video, args.size, args.part_frames))
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        run = pipeline(args.video, args.size, args.max_frames, st, args.stabilize, args.warp_error_every,
                       args.workers, args.preset, Path(tmp) / "out.mp4")  # compiles on its first frame
        costs = parts(frames, st, args.stabilize, args.preset, Path(tmp))
    h, w = frames[0].shape[-2:]
    cores = os.cpu_count() or 1
    plain = sum(costs[k][1] for k in ("decode", "network", "encode"))
    flows = plain + costs["flow pair + mask"][1] + costs["warp + blend + error"][1]
    report = {"size": f"{w}x{h}", "precision": st.precision, "compiled": st.compiled, "folded": not args.no_fold,
              "torch_threads": threads, "workers": args.workers, "preset": args.preset,
              "cores": cores, "pipeline": run,
              "parts_ms": {k: {"wall": v[0], "cpu": v[1]} for k, v in costs.items()},
              "idle_bound_frames_per_s": {"plain": cores * 1000 / plain, "with flows": cores * 1000 / flows}}
    if args.json:
        print(json.dumps(report))
        return
    print(f"{w}x{h}, {st.precision}, {'compiled' if st.compiled else 'eager'}"
          f"{', output conv folded' if not args.no_fold else ''}, {threads} torch threads, {cores} cores, "
          f"x264 {args.preset}")
    print(f"pipeline ({args.workers} network workers): {run['frames']} frames in {run['wall_s']:.1f}s = "
          f"{run['frames_per_s']:.1f} frames/s, {run['steady_frames_per_s']:.1f} frames/s after the first frame; "
          f"warping error {run['warp_error']:.5g} over {run['measured_pairs']} pairs; ms/frame in each thread: "
          + ", ".join(f"{k} {v:.1f}" for k, v in run["ms_per_frame"].items()))
    print(f"{'part, alone, 1 thread':24s} {'wall ms':>8s} {'CPU ms':>8s}")
    for k, (wall, cpu) in costs.items():
        print(f"{k:24s} {wall:8.1f} {cpu:8.1f}")
    print(f"idle bound ({cores} cores, parts overlapped): plain {report['idle_bound_frames_per_s']['plain']:.1f} "
          f"frames/s, with flows every frame {report['idle_bound_frames_per_s']['with flows']:.1f} frames/s")


if __name__ == "__main__":
    main()
