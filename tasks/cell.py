"""Run one grid cell as a child MLflow run: the unit of GPU work, a thin adapter over `nst.methods`.

`run_cell` is plain Python (callable without Prefect; `tasks.prefect_tasks.stylize_cell` is the
Prefect task around it).  `run_cells` does the same for a unit of cells of one `batch_group`,
optimised together by `nst.optimize.stylize_batch` (each still its own run).  A cell always ends as
a child MLflow run that is FINISHED or FAILED (with the error as a tag): bad inputs and diverged
optimisations fail the cell and the grid goes on; other errors (CUDA out of memory, a lost tracking
server) are raised so Prefect retries the task (`tasks.tracking.retry_transient`).

The method is `nst.methods.get(cell.method)`; `fast` and `video` cells go through `tasks.media`
(training recorded in the cell's run, the clip's mp4).  What a cell logs is `tasks.cell_log`.
"""

from __future__ import annotations

import functools
import json
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from nst import methods
from nst.errors import NSTError
from nst.experiments import Cell
from nst.images import load_image
from nst.methods import MethodInputs, MethodResult
from nst.optimize import StepInfo, StyleJob, batch_key, stylize_batch
from nst.options import describe as describe_options

from . import media, tracking
from .cancel import CANCEL
from .cell_log import CellLog
from .devices import device_pool
from .inputs import CellInputs, load_inputs, method_inputs

# --------------------------------------------------------------------------- methods


def read_inputs(cell: Cell) -> CellInputs:
    """The cell's images (a clip for video cells), read before a device is leased."""
    return media.INPUTS.get(cell.method, load_inputs)(cell)


def run_method(cell: Cell, mi: MethodInputs, inputs: CellInputs, callback: Callable[[StepInfo], None],
               image_every: int) -> MethodResult:
    """The cell's method on `mi`: `nst.methods` directly, or its grid adapter (`tasks.media.RUNS`)."""
    if cell.method in media.RUNS:
        return media.RUNS[cell.method](cell, mi, inputs, callback, image_every)
    return methods.get(cell.method).run(mi, callback=callback, image_every=image_every)


def batch_group(cell: Cell) -> tuple | None:
    """Cells with equal groups can be optimised as one batch (`nst.optimize.stylize_batch`); None: alone."""
    if cell.method != "gatys":
        return None
    hw = _content_hw(str(cell.content), cell.config.size)
    key = batch_key(cell.config, hw, len(cell.styles))
    return None if key is None else ("gatys", key)


@functools.lru_cache(maxsize=256)
def _content_hw(path: str, size: int) -> tuple[int, int]:
    return tuple(load_image(path, size=size).shape[-2:])


# --------------------------------------------------------------------------- one cell


def cell_tags(cell: Cell) -> dict[str, str]:
    return {
        "grid": cell.grid,
        "cell_id": cell.cell_id,
        "cell_index": str(cell.index),
        "method": cell.method,
        "backbone": cell.config.backbone,
        "git_commit": tracking.git_commit(),
        "nst.axes": json.dumps(list(cell.labels)),
        **{f"axis.{k}": v for k, v in cell.labels.items()},
    }


#: Engine settings logged as MLflow params by every cell, whether or not its grid varies them.
HEADLINE_PARAMS = ("size", "steps")


def cell_params(cell: Cell) -> dict[str, Any]:
    """A cell's MLflow params: its content and styles, size and steps, the settings its grid varies
    (`Cell.varied`), its regions and method options.

    Not every setting: MLflow 3.17's image charts print all of a run's params above its image, so 35
    of them pushed a second cell's image out of sight.  The whole configuration is the run's
    ``cell.json`` artifact."""
    cfg = cell.config.model_dump(mode="json", exclude={"device"})
    keep = {*HEADLINE_PARAMS, *cell.varied}
    params: dict[str, Any] = {"content": cell.content.name, "styles": ",".join(s.name for s in cell.styles)}
    if "method" in cell.varied:
        params["method"] = cell.method
    params.update({k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in cfg.items() if k in keep})
    if cell.regions:
        r = cell.regions
        params.update(regions=Path(r["spec"]).name if Path(r["spec"]).is_absolute() else r["spec"],
                      region_styles=",".join(f"{k}={'keep' if v == 'keep' else Path(v).name}"
                                             for k, v in r["styles"].items()))
    if cell.method_options:
        params.update(describe_options(cell.method_options))
    return params


def run_cell(cell: Cell | dict, exp_id: str, parent_run_id: str | None = None, progress: bool = True,
             inputs: CellInputs | None = None) -> dict[str, Any]:
    """Run one cell as a child MLflow run; returns {cell_id, run_id, status, error}.

    `inputs`: the cell's inputs when the caller has read them already (`run_cells`)."""
    cell = Cell.from_dict(cell) if isinstance(cell, dict) else cell
    methods.get(cell.method)  # an unknown method is the input's fault: raised, never retried
    result: dict[str, Any] = {"cell_id": cell.cell_id, "run_id": None, "status": "FAILED", "error": None}
    if CANCEL.is_set():
        return {**result, "status": "CANCELLED", "error": "grid interrupted before this cell started"}
    try:
        with device_pool().lease() as device, _cell_run(cell, exp_id, parent_run_id, device) as run_id:
            result["run_id"] = run_id
            log = CellLog(cell, device, run_id, progress, inputs if inputs is not None else read_inputs(cell))
            try:
                mi = method_inputs(cell, log.inputs, device)
                res = run_method(cell, mi, log.inputs, log.on_step, log.image_every)
            finally:
                log.close()
            log.log(res, time.perf_counter() - log.t0, mi)
            result["status"] = "FINISHED"
    except NSTError as exc:  # bad input, missing weights, divergence: this cell fails, the grid goes on
        result["error"] = f"{type(exc).__name__}: {exc}"
    except tracking.ClaimLost as exc:  # another grid run holds or finished it: not run twice
        return claimed(cell, exc)
    return result


def claimed(cell: Cell, exc: "tracking.ClaimLost") -> dict[str, Any]:
    """The result of a cell another process holds (CLAIMED) or finished meanwhile (FINISHED, its run)."""
    status = "FINISHED" if exc.finished else "CLAIMED"
    return {"cell_id": cell.cell_id, "run_id": exc.holder, "status": status,
            "error": None if exc.finished else str(exc), "elsewhere": True}


def run_cells(cells: list[Cell | dict], exp_id: str, parent_run_id: str | None = None, progress: bool = True,
              max_batch_pixels: int | None = None) -> list[dict[str, Any]]:
    """Run cells of one `batch_group` as one batched optimisation, each its own child MLflow run.

    Each cell's result is the one it gets alone; its logged times are its share of the batch's
    (``batch`` metric: how many cells ran together).  A cell whose inputs cannot be read runs (and
    fails) alone; if the batch itself fails (e.g. one cell diverges), its runs end FAILED with the
    reason and every cell is rerun alone, so each gets its own outcome.
    """
    cells = [Cell.from_dict(c) if isinstance(c, dict) else c for c in cells]
    if len(cells) == 1:
        return [run_cell(cells[0], exp_id, parent_run_id, progress)]
    if CANCEL.is_set():
        return [{"cell_id": c.cell_id, "run_id": None, "status": "CANCELLED",
                 "error": "grid interrupted before this cell started"} for c in cells]
    loaded: list[tuple[Cell, CellInputs]] = []
    alone: list[Cell] = []
    for c in cells:  # a cell whose inputs cannot be read fails on its own, outside the batch
        try:
            loaded.append((c, read_inputs(c)))
        except NSTError:
            alone.append(c)
    out = {c.cell_id: run_cell(c, exp_id, parent_run_id, progress) for c in alone}
    if len(loaded) == 1:
        out[loaded[0][0].cell_id] = run_cell(loaded[0][0], exp_id, parent_run_id, progress, loaded[0][1])
    elif loaded:
        out.update(_run_batch(loaded, exp_id, parent_run_id, progress, max_batch_pixels))
    return [out[c.cell_id] for c in cells]


def _run_batch(loaded: list[tuple[Cell, CellInputs]], exp_id: str, parent_run_id: str | None, progress: bool,
               max_batch_pixels: int | None) -> dict[str, dict[str, Any]]:
    cells = [c for c, _ in loaded]
    try:
        with device_pool().lease() as device, ExitStack() as runs:
            logs, lost = _claim_batch(loaded, exp_id, parent_run_id, device, runs, progress)
            cells = [lg.cell for lg in logs]
            if logs:
                _optimise_batch(logs, device, max_batch_pixels)
    except NSTError as exc:  # e.g. one cell diverged: these runs end FAILED with the reason, each cell reruns alone
        print(f"batch of {len(cells)} cells failed ({type(exc).__name__}: {exc}); running them one by one")
        return {c.cell_id: run_cell(c, exp_id, parent_run_id, progress, inputs) for c, inputs in loaded}
    return {**lost, **{lg.cell.cell_id: {"cell_id": lg.cell.cell_id, "run_id": lg.run_id, "status": "FINISHED",
                                         "error": None} for lg in logs}}


def _claim_batch(loaded: list[tuple[Cell, CellInputs]], exp_id: str, parent_run_id: str | None, device: str,
                 runs: ExitStack, progress: bool) -> tuple[list[CellLog], dict[str, dict[str, Any]]]:
    """Each cell's run opened (its claim) in `runs`; a cell held elsewhere leaves the batch (its result in `lost`)."""
    logs: list[CellLog] = []
    lost: dict[str, dict[str, Any]] = {}
    for c, inputs in loaded:
        try:
            logs.append(CellLog(c, device, runs.enter_context(_cell_run(c, exp_id, parent_run_id, device)),
                                progress, inputs))
        except tracking.ClaimLost as exc:
            lost[c.cell_id] = claimed(c, exc)
    return logs, lost


def _optimise_batch(logs: list[CellLog], device: str, max_batch_pixels: int | None) -> None:
    """One batched optimisation of the cells' gatys runs; each logs its own result and its share of the time."""
    mis = [method_inputs(lg.cell, lg.inputs, device) for lg in logs]
    jobs = [StyleJob(mi.content, mi.styles, mi.config, lg.on_step) for lg, mi in zip(logs, mis)]
    t0 = time.perf_counter()
    try:
        results = stylize_batch(jobs, image_every=logs[0].image_every,
                                max_batch_pixels=max_batch_pixels or default_batch_pixels(device))
    finally:
        for lg in logs:
            lg.close()
    wall = (time.perf_counter() - t0) / len(logs)
    for lg, mi, res in zip(logs, mis, results):
        lg.log(MethodResult.of(res), wall, mi)


def default_batch_pixels(device: str) -> int | None:
    """Pixels per batched forward: on a CPU batching pays only for small images (measured: 2.2x per
    image at 64x48, 1.2x at 128x96, none at 256x192), so about 2^16; on a GPU, no limit."""
    return None if device.startswith("cuda") else 1 << 16


@contextmanager
def _cell_run(cell: Cell, exp_id: str, parent_run_id: str | None, device: str) -> Iterator[str]:
    with tracking.tracked_run(exp_id, f"{cell.index:03d} {cell.name}"[:250], {**cell_tags(cell), "device": device},
                              parent_run_id, device=device, claim=cell.cell_id) as run_id:
        tracking.log_batch(run_id, params=cell_params(cell))
        yield run_id


