"""Feed-forward training throughput (issue 17): images/s of `nst.fast.train.train` and where a step's time goes.

    python benchmarks/bench_train.py [--size 256] [--batch 4] [--steps 12] [--warmup 3] \
        [--precision fp32 bf16] [--workers 0] [--json out.json]

Each precision runs in a fresh process (its own warm-up, no shared caches): the real `train()` on the
photographs in ../shared/data/train with The Starry Night, `--warmup` steps first (allocator, oneDNN
kernel selection), then `--steps` timed steps.  The breakdown comes from `train(..., timer=StepTimer)`:
data loading, the loss network on the content batch (no grad), the transformer forward, the loss
network forward with the losses, the loss network's backward (until the gradient reaches the
transformer's output), the transformer's backward, the optimiser and logging (the last step makes the
validation image: left out of the steady-state images/s, printed next to it).  Prints the CPU model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT.parent / "shared" / "data" / "train"

_CHILD = r"""
import json, sys, time
import torch
from nst.data import image
from nst.fast.train import StepTimer, train
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
base = dict(styles=[str(image("starry_night.jpg"))], images=a["images"], size=a["size"], batch_size=a["batch"],
            precision=a["precision"], device=a["device"], workers=a["workers"], log_every=1, **a.get("extra", {}))
timer = StepTimer(torch.device(a["device"]))
def reset_after_warmup(step):  # the warm-up steps (compilation, kernel selection) are not timed
    if step.step == a["warmup"]:
        timer.totals.clear()
t0 = time.perf_counter()
r = train({**base, "steps": a["warmup"] + a["steps"]}, timer=timer, callback=reset_after_warmup)
parts = {k: v / a["steps"] for k, v in timer.totals.items()}
# steady state: without the end-of-run validation image (once per run, not per step)
step_s = sum(v for k, v in parts.items() if not k.startswith("logging"))
print(json.dumps({"precision": r.info["precision"], "images_per_s": a["batch"] / step_s, "s_per_step": step_s,
                  "images_per_s_with_final_validation": a["batch"] / sum(parts.values()), "parts": parts,
                  "compiled": r.info.get("compiled"), "warmup_s": time.perf_counter() - t0 - step_s * a["steps"]}))
"""


def cpu_model() -> str:
    from nst.hardware import cpu_model as model

    return model()


def run(precision: str, args: argparse.Namespace) -> dict:
    payload = dict(precision=precision, images=str(args.images), size=args.size, batch=args.batch,
                   steps=args.steps, warmup=args.warmup, workers=args.workers, threads=args.threads, device=args.device,
                   extra=json.loads(args.extra) if args.extra else {})
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(payload)], capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"bench_train: {precision} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--workers", type=int, default=0, help="data-loading processes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (benchmarks/gpu_check.py)")
    ap.add_argument("--images", type=Path, default=TRAIN)
    ap.add_argument("--extra", help="more TrainConfig fields as JSON, e.g. '{\"style_layers\": [\"relu1_1\"]}'")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    print(f"cpu: {cpu_model()}, {args.threads} threads, device {args.device}; {args.size} px crops, "
          f"batch {args.batch}, {args.steps} timed steps after {args.warmup}")
    rows = []
    for p in args.precision:
        r = run(p, args)
        rows.append(r)
        total = sum(r["parts"].values())
        print(f"{p:5s} ({r['precision']}{', compiled' if r['compiled'] else ''}): {r['images_per_s']:.2f} images/s, "
              f"{r['s_per_step']:.3f} s/step ({r['images_per_s_with_final_validation']:.2f} images/s counting the "
              f"final validation image; warm-up {r['warmup_s']:.0f} s)")
        for k, v in sorted(r["parts"].items(), key=lambda kv: -kv[1]):
            print(f"    {k:40s} {v:7.3f} s  {100 * v / total:5.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "args": vars(args) | {"images": str(args.images)},
                                               "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
