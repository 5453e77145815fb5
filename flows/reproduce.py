"""The reproduce flow: every figure of the source reports from named grids, into reports/REPORT.md.

For each figure of experiments.yaml's ``figures:`` it runs the figure's grids
(quick or full variant: settings laid over each grid) as `grid_flow` subflows —
so finished cells are reused, never redone, and every cell is an MLflow run —
then draws the figure from MLflow (`tasks.figures`) and rewrites REPORT.md.
A figure whose method does not exist here is listed in the report with the
reason instead of failing the others.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from prefect import flow

from nst import methods
from nst.errors import ConfigError
from nst.experiments import figure_grids, load_experiments
from tasks import figures as figures_mod
from tasks import report as report_mod
from tasks import settings

from .grid import grid_flow


def availability(experiments: str | Path, quick: bool) -> dict[str, str | None]:
    """Figure -> None if it can be made here, else why not (its grids refer to an unknown method)."""
    exp = load_experiments(experiments)
    out: dict[str, str | None] = {}
    for name in exp.figures:
        try:
            figure_grids(exp, name, quick, methods.names())
            out[name] = None
        except ConfigError as exc:
            if "unknown method" not in str(exc):
                raise  # a real mistake in the YAML: reported before any work
            out[name] = f"method not available here ({exc})"
    return out


def command_line(figure: str, quick: bool, experiments: Path) -> str:
    parts = ["nst", "reproduce", "--figure", figure]
    if quick:
        parts.append("--quick")
    try:
        rel = experiments.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        rel = experiments
    if str(rel) != "experiments.yaml":
        parts += ["--file", str(rel)]
    return shlex.join(parts)


@flow(name="nst-reproduce", log_prints=True)
def reproduce_flow(
    experiments: str,
    figures: list[str] | None = None,
    quick: bool = False,
    devices: list[str] | None = None,
    reports_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Make `figures` (default: all that can be made here) and rewrite REPORT.md; returns what was made."""
    exp = load_experiments(experiments)
    if not exp.figures:
        raise ConfigError(f"{exp.path.name}: no figures section")
    available = availability(exp.path, quick)
    names = figures or [n for n in exp.figures if available[n] is None]
    for n in names:
        if n not in exp.figures:
            raise ConfigError(f"{exp.path.name}: no figure '{n}' (figures: {', '.join(exp.figures)})")
        if available[n] is not None:
            raise ConfigError(f"figure '{n}': {available[n]}")
    variant = "quick" if quick else "full"
    run_grid = grid_flow
    if devices:
        from prefect.task_runners import ThreadPoolTaskRunner

        run_grid = grid_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=len(devices)))
    root = Path(reports_dir or settings.reports_dir())
    figures_dir = root / "figures"
    made: dict[str, Any] = {}
    failed_cells: list[str] = []
    for name in names:
        spec = exp.figures[name]
        print(f"figure {name} ({variant}): grids {', '.join(spec.grids)}")
        runs = []
        for g in figure_grids(exp, name, quick, methods.names()):
            out = run_grid(str(exp.path), g.name, devices=devices, progress=progress,
                            reports_dir=str(figures_dir / name), overrides=getattr(spec, variant) or None,
                            overrides_at=f"figures.{name}.{variant}")
            failed_cells += [f"{g.name}: {r['cell_id']}: {r['error']}" for r in out["results"]
                             if r["status"] != "FINISHED"]
            df, axes = report_mod.cell_table(out["experiment_id"], out["cell_ids"])
            rep = report_mod.Report(g.name, df, axes, figures_dir / name / g.name,
                                    {k: Path(v) for k, v in out["report"].items()})
            runs.append(figures_mod.GridRun(g, out["experiment_id"], out["parent_run_id"], rep))
        made[name] = figures_mod.build_figure(name, spec, runs, figures_dir / name, variant,
                                              command_line(name, quick, exp.path), exp.path)
        figures_mod.write_report(exp, figures_dir, root / "REPORT.md", available)
    report = figures_mod.write_report(exp, figures_dir, root / "REPORT.md", available)
    return {"report": str(report), "figures": made, "failed_cells": failed_cells,
            "unavailable": {k: v for k, v in available.items() if v is not None}}
