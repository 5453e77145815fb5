"""The grid flow: load experiments.yaml, skip finished cells, fan the rest out, build the report.

Two executors:

* ``local`` (default) — cells as mapped Prefect tasks on a ThreadPoolTaskRunner
  in this process; each cell leases an explicit device (one cell per GPU, or
  `workers` CPU slots), and cells share nst's process-wide target cache.
* ``deployment`` — each cell becomes a run of the ``nst-cell`` deployment, picked
  up by process workers of a work pool (one worker per GPU, each with its own
  ``CUDA_VISIBLE_DEVICES``); the grid waits for them and reads the outcome
  from MLflow, the single source of truth.

Resume: cells whose id already has a FINISHED run in the grid's MLflow
experiment are skipped.  Prefect's result cache is deliberately off
(``NO_CACHE``): a cached "done" would outlive a deleted MLflow run and hide work.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows import artifacts
from nst import methods
from nst.errors import ConfigError
from nst.experiments import Cell, Grid, load_grid
from tasks import report as report_mod
from tasks import settings, tracking
from tasks.cancel import CANCEL
from tasks.cell import batch_group, run_cell
from tasks.devices import configure_devices, default_devices
from tasks.prefect_tasks import stylize_cell, stylize_cells

CELL_DEPLOYMENT = "nst-cell/nst-cell"


def plan(experiments: str | Path, grid: str, overrides: dict[str, Any] | None = None,
         overrides_at: str = "overrides") -> tuple[Grid, str | None, dict[str, str]]:
    """The validated grid, its experiment id (None if it never ran) and its finished cells.

    `overrides` are settings laid over the grid's own (a report figure's quick/full variant).
    """
    g = load_grid(experiments, grid, methods.names(), overrides, overrides_at)
    exp_id = tracking.experiment_id(grid, create=False)
    done = tracking.finished_cells(exp_id) if exp_id else {}
    return g, exp_id, done


@flow(name="nst-cell", log_prints=True)
def cell_flow(cell: dict[str, Any], exp_id: str, parent_run_id: str | None = None) -> dict[str, Any]:
    """One cell as its own flow run: what a fleet worker executes for the deployment executor."""
    configure_devices(default_devices())
    return stylize_cell.with_options(cache_policy=NO_CACHE)(cell, exp_id, parent_run_id, False)


@flow(name="nst-grid", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))  # CLI: one per device
def grid_flow(
    experiments: str,
    grid: str,
    devices: list[str] | None = None,
    executor: str = "local",
    progress: bool = True,
    reports_dir: str | None = None,
    deployment: str = CELL_DEPLOYMENT,
    overrides: dict[str, Any] | None = None,
    overrides_at: str = "overrides",
    batch: int | None = None,
) -> dict[str, Any]:
    """Run the missing cells of `grid` and write its comparison report; returns a summary.

    `batch` (default: the grid's own ``batch``) is how many cells of the same shape may share one
    batched optimisation (local executor); results do not depend on it.
    """
    from tqdm import tqdm

    if executor not in ("local", "deployment"):
        raise ConfigError(f"executor: unknown '{executor}' (local or deployment)")
    if batch is not None and batch < 1:
        raise ConfigError(f"batch: {batch} (must be at least 1)")
    g, _, done = plan(experiments, grid, overrides, overrides_at)
    exp_id = tracking.experiment_id(grid)
    for run_id in tracking.close_abandoned_runs(exp_id):
        print(f"closed run {run_id} left RUNNING by a process that is gone (marked KILLED)")
    pending = [c for c in g.cells if c.cell_id not in done]
    print(f"grid {grid}: {len(g.cells)} cells, {len(g.cells) - len(pending)} already finished, {len(pending)} to run")
    out_dir = Path(reports_dir or settings.reports_dir()) / grid
    results: list[dict[str, Any]] = []
    with tracking.tracked_run(exp_id, f"grid {grid}", _grid_tags(g, executor, overrides)) as parent_id:
        tracking.log_batch(parent_id, params={"cells": len(g.cells), "pending": len(pending),
                                              "devices": ",".join(devices or []) or "default"})
        bar = tqdm(total=len(pending), desc=f"grid {grid}", unit="cell", disable=not progress, dynamic_ncols=True)
        try:
            if executor == "local":
                results = _run_local(pending, exp_id, parent_id, devices, progress, bar,
                                     batch or g.spec.batch, g.spec.batch_pixels)
            else:
                results = _run_deployments(pending, exp_id, parent_id, deployment, bar)
        finally:
            bar.close()
        failed = [r for r in results if r["status"] != "FINISHED"]
        tracking.log_batch(parent_id, metrics={"cells": len(g.cells), "ran": len(results),
                                               "failed": len(failed), "skipped": len(g.cells) - len(pending)})
        rep = report_mod.build_report(
            grid, exp_id, out_dir, [c.cell_id for c in g.cells], g.spec.contact_sheet.rows,
            g.spec.contact_sheet.cols, g.spec.summary_by, parent_id,
        )
        artifacts.table_artifact(grid, rep)
        artifacts.publish(grid, exp_id, parent_id, rep)  # MLflow table and sheet image, Prefect links
    return {
        "grid": grid, "experiment_id": exp_id, "parent_run_id": parent_id, "cells": len(g.cells),
        "cell_ids": [c.cell_id for c in g.cells],
        "skipped": len(g.cells) - len(pending), "results": results, "report": {k: str(v) for k, v in rep.files.items()},
    }


def _grid_tags(g: Grid, executor: str, overrides: dict[str, Any] | None) -> dict[str, str]:
    """The parent run's tags: what ran, how, from which file and with which overrides."""
    tags = {"grid": g.name, "nst.kind": "grid", "git_commit": tracking.git_commit(), "executor": executor,
            "experiments_file": str(g.source)}
    if overrides:
        tags["overrides"] = json.dumps(overrides, sort_keys=True, default=str)[:5000]
    return tags


def batches(cells: list[Cell], batch: int) -> list[list[Cell]]:
    """Cells in units of work: up to `batch` cells of one `batch_group` together, in grid order."""
    if batch <= 1:
        return [[c] for c in cells]
    units: list[list[Cell]] = []
    open_units: dict[tuple, list[Cell]] = {}
    for c in cells:
        key = batch_group(c)
        if key is None:
            units.append([c])
            continue
        unit = open_units.get(key)
        if unit is None or len(unit) >= batch:
            unit = open_units[key] = []
            units.append(unit)
        unit.append(c)
    return units


def _run_local(pending: list[Cell], exp_id: str, parent_id: str, devices, progress: bool, bar,
               batch: int = 1, batch_pixels: int | None = None) -> list[dict]:
    configure_devices(devices or default_devices())
    units = batches(pending, batch)
    futures = stylize_cells.with_options(cache_policy=NO_CACHE).map(
        [[c.to_dict() for c in u] for u in units], unmapped(exp_id), unmapped(parent_id),
        unmapped(progress and len(pending) > 0), unmapped(batch_pixels),
    )
    by_future = {id(f): u for f, u in zip(futures, units)}
    results: list[dict] = []
    CANCEL.clear()
    try:
        _collect(futures, by_future, results, bar)
        _settle_claimed(results, pending, exp_id, parent_id, progress, bar)
    except KeyboardInterrupt:
        CANCEL.set()  # running cells stop at their next step and end their runs as KILLED
        for fut in futures:
            try:
                fut.wait(timeout=60)
            except BaseException:
                pass
        raise
    return results


def _collect(futures, by_future, results: list[dict], bar) -> None:
    from prefect.futures import as_completed

    for fut in as_completed(futures):
        unit = by_future[id(fut)]
        fut.wait()
        try:
            res = fut.result()
        except Exception as exc:  # retries exhausted on an unexpected error: the grid goes on
            res = [{"cell_id": c.cell_id, "run_id": None, "status": "FAILED", "error": f"{type(exc).__name__}: {exc}"}
                   for c in unit]
        for cell, r in zip(unit, res):
            results.append(r)
            if r["status"] == "CLAIMED":
                bar.write(f"cell {cell.index} ({cell.name}): {r['error']}; waiting for it")
                continue
            bar.update(1)
            if r["status"] != "FINISHED":
                bar.write(f"cell {cell.index} ({cell.name}) failed: {r['error']}")


def _settle_claimed(results: list[dict], pending: list[Cell], exp_id: str, parent_id: str, progress: bool, bar,
                    poll_s: float = 2.0) -> None:
    """Cells another grid run held when we reached them: wait for their outcome there.

    A cell finished elsewhere counts as finished (its run id is the other's); one whose holder
    died or failed is claimed and run here, so the grid ends with every cell attempted once more
    at most and never run twice.
    """
    by_id = {c.cell_id: c for c in pending}
    waiting = {i: r["cell_id"] for i, r in enumerate(results) if r["status"] == "CLAIMED"}
    while waiting:
        done = tracking.finished_cells(exp_id)
        held = tracking.live_claims(exp_id)
        for i, cid in list(waiting.items()):
            if cid in done:
                results[i] = {"cell_id": cid, "run_id": done[cid], "status": "FINISHED", "error": None,
                              "elsewhere": True}
            elif cid not in held:  # its holder is gone without finishing it: ours now
                r = run_cell(by_id[cid], exp_id, parent_id, progress)
                if r["status"] == "CLAIMED":
                    continue
                results[i] = r
                if r["status"] != "FINISHED":
                    bar.write(f"cell {by_id[cid].index} ({by_id[cid].name}) failed: {r['error']}")
            else:
                continue
            del waiting[i]
            bar.update(1)
        if waiting:
            time.sleep(poll_s)


def _run_deployments(pending: list[Cell], exp_id: str, parent_id: str, deployment: str, bar) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    runs = {}
    for c in pending:
        fr = run_deployment(
            deployment, parameters={"cell": c.to_dict(), "exp_id": exp_id, "parent_run_id": parent_id},
            timeout=0, flow_run_name=f"cell-{c.index}-{c.cell_id[:8]}", as_subflow=True,
        )
        runs[fr.id] = c
    states: dict[Any, Any] = {}
    with get_client(sync_client=True) as client:
        while len(states) < len(runs):
            for fid in runs:
                if fid in states:
                    continue
                st = client.read_flow_run(fid).state
                if st is not None and st.is_final():
                    states[fid] = st
                    bar.update(1)
            if len(states) < len(runs):
                time.sleep(1.0)
    done = tracking.finished_cells(exp_id)
    results = []
    for fid, c in runs.items():
        ok = c.cell_id in done
        results.append({"cell_id": c.cell_id, "run_id": done.get(c.cell_id), "status": "FINISHED" if ok else "FAILED",
                        "error": None if ok else f"flow run {states[fid].name}: {states[fid].message or ''}"})
    return results
