"""The report flow: rebuild the comparison table and contact sheet of any grid from MLflow alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from nst.errors import ConfigError
from tasks import report as report_mod
from tasks import settings, tracking


@flow(name="nst-report", log_prints=True)
def report_flow(grid: str, experiments: str | None = None, reports_dir: str | None = None,
                rescore: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """Tables for `grid` (restricted to the YAML's current cells when `experiments` is given); with `rescore`
    (an evaluator's name) its finished cells are scored by that evaluator first (`tasks.rescore`)."""
    exp_id = tracking.experiment_id(grid, create=False)
    if exp_id is None:
        raise ConfigError(f"grid '{grid}': no MLflow experiment '{tracking.experiment_name(grid)}' at "
                          f"{settings.tracking_uri()} (run `nst grid run` first)")
    rows = cols = summary_by = None
    cell_ids = None
    if experiments:
        from nst import methods
        from nst.experiments import load_grid

        g = load_grid(experiments, grid, methods.names())
        cell_ids = [c.cell_id for c in g.cells]
        rows, cols, summary_by = g.spec.contact_sheet.rows, g.spec.contact_sheet.cols, g.spec.summary_by
    rescored = None
    if rescore:
        from tasks.rescore import rescore as rescore_cells

        rescored = rescore_cells(exp_id, rescore, cell_ids, device)
    out = Path(reports_dir or settings.reports_dir()) / grid
    rep = report_mod.build_report(grid, exp_id, out, cell_ids, rows, cols, summary_by)
    if rep.table.empty:
        raise ConfigError(f"grid '{grid}': no cell runs in experiment {exp_id}")
    from flows.artifacts import table_artifact

    table_artifact(grid, rep)
    result = {"grid": grid, "cells": len(rep.table), "report": {k: str(v) for k, v in rep.files.items()}}
    if rescored is not None:
        result["rescored"] = {"evaluator": rescore, "scored": rescored.scored, "skipped": rescored.skipped,
                              "failed": rescored.failed}
    return result
