"""Shared work across a grid: one `nst grid run` vs the same cells as separate `nst stylize` calls.

(a) every cell of the grid as its own `nst stylize` process, one after the other (each loads
    Python, torch and the network, computes its targets, optimises, writes its PNG);
(b) one `nst grid run FILE --grid NAME` process, everything included: imports, Prefect's temporary
    server, MLflow tracking in a fresh store, the cells (one backbone, targets shared through the
    process-wide cache), the report.

Both run the same engine settings (the cells' resolved StyleConfig, passed as CLI options), on the
same machine, one after the other; the ratio (b)/(a) is printed.

    python benchmarks/bench_grid_sharing.py                         # grid shared-16 of experiments.yaml
    python benchmarks/bench_grid_sharing.py --grid demo --set size=64 --set steps=3   # a small check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nst.config import StyleConfig  # noqa: E402

#: StyleConfig fields that `nst stylize` takes as options (the CLI's own spelling).
CLI_FIELDS = (
    "backbone", "pooling", "size", "style_scale", "steps", "optimizer", "lr", "content_weight", "style_weight",
    "tv_weight", "init", "preserve_color", "seed", "precision", "scales", "style_loss", "lbfgs_history", "ema_decay",
)


def stylize_argv(cell, out: Path) -> list[str]:
    """The `nst stylize` command line of one grid cell (same resolved settings)."""
    cfg, default = cell.config, StyleConfig()
    if cell.method != "gatys":
        raise SystemExit(f"cell {cell.index}: method {cell.method} has no `nst stylize` equivalent")
    argv = ["--content", str(cell.content)]
    for s in cell.styles:
        argv += ["--style", str(s)]
    for name, value in cfg.model_dump().items():
        if name in ("device",) or value == getattr(default, name):
            continue
        if name == "style_weights":
            argv += ["--style-weights", *map(str, value)]
        elif name == "multi_style":
            argv += ["--multi-style", value]
        elif name == "scales":
            argv += ["--scales", *([f"{f}:{n}" for f, n in value] if value else ["none"])]
        elif name == "scale_detail":
            argv += ["--scale-detail" if value else "--no-scale-detail"]
        elif name in ("content_layers", "style_layers"):
            argv += [f"--{name.replace('_', '-')}", *value]
        elif name in CLI_FIELDS:
            argv += [f"--{name.replace('_', '-')}", str(value)]
        else:
            raise SystemExit(f"cell {cell.index}: setting {name}={value!r} has no `nst stylize` option")
    return ["stylize", *argv, "--quiet", "--out", str(out)]


def run(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default=str(ROOT / "experiments.yaml"))
    ap.add_argument("--grid", default="shared-16")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a setting of every cell (both sides), e.g. --set size=96")
    ap.add_argument("--json", help="write the figures to this JSON file")
    args = ap.parse_args(argv)

    overrides = {}
    for item in args.set:
        k, _, v = item.partition("=")
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    with tempfile.TemporaryDirectory(prefix="nst-grid-bench-") as tmp:
        tmp = Path(tmp)
        # the grid as run: a copy of the experiments file whose grid carries the overrides
        import yaml

        from nst.experiments import load_grid

        src = Path(args.file).resolve()
        data = yaml.safe_load(src.read_text())
        spec = data["grids"][args.grid]
        spec.setdefault("settings", {}).update(overrides)
        exp_file = src.parent / f".bench-{os.getpid()}-{src.name}"  # beside the original: relative paths hold
        exp_file.write_text(yaml.safe_dump(data, sort_keys=False))
        try:
            cells = load_grid(exp_file, args.grid).cells
            print(f"grid {args.grid}: {len(cells)} cells, {cells[0].config.size} px, "
                  f"steps {cells[0].config.steps}, scales {cells[0].config.scales}")
            env = {**os.environ, "NST_HOME": str(tmp / "home"), "NST_REPORTS": str(tmp / "reports"),
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
            for var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "NST_ARTIFACT_ROOT"):  # local, fresh stores
                env.pop(var, None)
            nst = [sys.executable, "-m", "nst.cli"]
            grid_s = run(nst + ["grid", "run", str(exp_file), "--grid", args.grid, "--quiet"], env)
            print(f"(b) one `nst grid run`: {grid_s:.1f}s")
            separate = []
            for i, cell in enumerate(cells):
                separate.append(run(nst + stylize_argv(cell, tmp / f"cell{i:02d}.png"), env))
                print(f"    `nst stylize` cell {i}: {separate[-1]:.1f}s", flush=True)
            sep_s = sum(separate)
        finally:
            exp_file.unlink(missing_ok=True)
    ratio = grid_s / sep_s
    print(f"(a) {len(cells)} separate `nst stylize` calls: {sep_s:.1f}s")
    print(f"ratio grid / separate: {ratio:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"grid": args.grid, "cells": len(cells), "overrides": overrides,
                                               "grid_s": grid_s, "separate_s": separate, "ratio": ratio}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
