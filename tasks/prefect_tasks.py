"""The Prefect tasks of nst: the plain functions of `tasks.cell` and `tasks.train`, wrapped.

The only module of tasks/ that imports Prefect: everything else is callable (and tested) without it.
Retries follow one rule, `tasks.tracking.retry_transient` (a busy or unreachable tracking store, CUDA
out of memory; never bad input, an interruption or a cell claimed elsewhere).
"""

from __future__ import annotations

from prefect import task

from nst.experiments import Cell

from . import tracking
from .cell import run_cell, run_cells
from .train import train_one


def _task_run_name(param: str = "cell") -> str:
    """``cell-<index>-<id>`` or, for a batch, ``cells-<first>-<last>-batch<n>`` (the Prefect UI's names)."""
    from prefect.runtime import task_run

    cells = task_run.parameters.get(param)
    cells = cells if isinstance(cells, list) else [cells]
    ds = [c.to_dict() if isinstance(c, Cell) else (c or {}) for c in cells]
    if len(ds) > 1:
        return f"cells-{ds[0].get('index', '?')}-{ds[-1].get('index', '?')}-batch{len(ds)}"
    return f"cell-{ds[0].get('index', '?')}-{ds[0].get('cell_id', '')[:8]}"


stylize_cell = task(run_cell, name="stylize-cell", retries=1, retry_delay_seconds=2,
                    retry_condition_fn=tracking.retry_transient, task_run_name=lambda: _task_run_name())

stylize_cells = task(run_cells, name="stylize-cells", retries=1, retry_delay_seconds=2,
                     retry_condition_fn=tracking.retry_transient, task_run_name=lambda: _task_run_name("cells"))

train_task = task(train_one, name="train-network", retries=0, retry_condition_fn=tracking.retry_transient,
                  task_run_name="train-{cfg[out]}")
