"""Score a finished grid again with another evaluator, from what MLflow kept: each cell's ``output.png``
and ``cell.json`` (its inputs), without running any cell again.

The scores go into the cell's own run, under the evaluator's metric prefix and its ``<prefix>evaluator``
tag, exactly as a cell that ran with that evaluator logs them (`tasks.cell_log.evaluator_scores`), so the
report's table shows them as columns.  A cell already scored by that evaluator (same id) is skipped.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.exceptions import MlflowException

from nst.errors import NSTError
from nst.evaluate import shared_evaluator
from nst.experiments import Cell
from nst.images import load_image

from . import tracking
from .cell import read_inputs
from .cell_log import evaluator_scores


@dataclass
class Rescored:
    scored: list[str] = field(default_factory=list)  # cell ids scored now
    skipped: list[str] = field(default_factory=list)  # already scored by this evaluator
    failed: dict[str, str] = field(default_factory=dict)  # cell id -> why (inputs moved, artifact missing)


def _finished_runs(exp_id: str, cell_ids: list[str] | None) -> dict[str, object]:
    """The newest FINISHED run of each cell (the one the report shows)."""
    c = tracking.client()
    runs = c.search_runs([exp_id], "attributes.status = 'FINISHED'", max_results=50_000,
                         order_by=["attributes.start_time DESC"])
    newest: dict[str, object] = {}
    for r in runs:
        cid = r.data.tags.get("cell_id")
        if cid and cid not in newest and (cell_ids is None or cid in cell_ids):
            newest[cid] = r
    return newest


def rescore(exp_id: str, evaluator: str, cell_ids: list[str] | None = None, device: str = "cpu",
            resolution: int | None = None) -> Rescored:
    """Score every finished cell of experiment `exp_id` with `evaluator` (`nst.evaluate.EVALUATORS`) at the
    grid's evaluation size (or `resolution`), logging into each cell's run."""
    c = tracking.client()
    out = Rescored()
    for cid, run in _finished_runs(exp_id, cell_ids).items():
        try:
            with tempfile.TemporaryDirectory(prefix="nst-rescore-") as tmp:
                cell = Cell.from_dict(json.loads(Path(c.download_artifacts(run.info.run_id, "cell.json", tmp))
                                                 .read_text()))
                res = resolution or int(cell.options.get("eval_resolution", 512))
                ev = shared_evaluator(device, res, evaluator)
                logged = run.data.tags.get(f"{ev.prefix}evaluator")
                if logged is None and ev.name == "fixed" and resolution is None and "eval_style_distance" in \
                        run.data.metrics:
                    logged = ev.id  # a run from before the tag: the fixed evaluator, at the grid's size
                if logged == ev.id:
                    out.skipped.append(cid)
                    continue
                image = load_image(c.download_artifacts(run.info.run_id, "output.png", tmp))
            metrics, tags = evaluator_scores(cell, image, read_inputs(cell), evaluator, device, res)
        except (NSTError, MlflowException, OSError, KeyError, ValueError) as exc:
            out.failed[cid] = f"{type(exc).__name__}: {exc}"
            continue
        tracking.log_batch(run.info.run_id, metrics=metrics, tags=tags)
        out.scored.append(cid)
    return out
