"""MLflow helpers: one experiment per grid, parent/child runs, batched metrics, finished-cell lookup.

Uses `MlflowClient` with explicit run ids (not the fluent active-run stack) so
cells running in worker threads never log into each other's runs.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from . import settings

EXPERIMENT_PREFIX = "nst-grid/"
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
MAX_TAG = 5000


def client() -> MlflowClient:
    return MlflowClient(tracking_uri=settings.configure())


def experiment_name(grid: str) -> str:
    return EXPERIMENT_PREFIX + grid


def experiment_id(grid: str, create: bool = True) -> str | None:
    c = client()
    name = experiment_name(grid)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if not create:
        return None
    root = settings.artifact_root()
    location = f"{root.rstrip('/')}/{grid}" if root else None
    try:
        return c.create_experiment(name, artifact_location=location, tags={"nst.grid": grid})
    except Exception:  # created concurrently by another worker
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5,
        )
        return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def finished_cells(exp_id: str) -> dict[str, str]:
    """cell_id -> run_id of every FINISHED child run of the experiment."""
    c = client()
    out: dict[str, str] = {}
    token = None
    while True:
        page = c.search_runs(
            [exp_id], filter_string="attributes.status = 'FINISHED'", max_results=1000, page_token=token
        )
        for r in page:
            cid = r.data.tags.get("cell_id")
            if cid:
                out.setdefault(cid, r.info.run_id)
        token = page.token
        if not token:
            return out


def close_abandoned_runs(exp_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs whose process on this host is gone (a SIGKILLed or crashed grid)."""
    import psutil

    c = client()
    host = socket.gethostname()
    closed = []
    for r in c.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        t = r.data.tags
        if t.get("nst.host") != host or not t.get("nst.pid", "").isdigit():
            continue  # another machine's run: it may well be alive
        pid = int(t["nst.pid"])
        if pid == os.getpid() or psutil.pid_exists(pid):
            continue
        c.set_tag(r.info.run_id, "error", f"abandoned: process {t['nst.pid']} on {host} ended without closing the run")
        c.set_terminated(r.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        closed.append(r.info.run_id)
    return closed


@contextmanager
def tracked_run(
    exp_id: str, name: str, tags: dict[str, str], parent_run_id: str | None = None
) -> Iterator[str]:
    """Create a run and always end it: FINISHED, or FAILED with the error as a tag (then re-raise)."""
    c = client()
    all_tags = {MLFLOW_RUN_NAME: name, "nst.host": socket.gethostname(), "nst.pid": str(os.getpid()), **tags}
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = c.create_run(exp_id, tags=all_tags, run_name=name)
    run_id = run.info.run_id
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        yield run_id
        status = RunStatus.to_string(RunStatus.FINISHED)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "CellCancelled":
            status = RunStatus.to_string(RunStatus.KILLED)
        try:
            c.set_tag(run_id, "error", f"{type(exc).__name__}: {exc}"[:MAX_TAG])
        except Exception:
            pass
        raise
    finally:
        c.set_terminated(run_id, status)


def log_batch(run_id: str, metrics: dict[str, float] | None = None, params: dict[str, Any] | None = None,
              tags: dict[str, Any] | None = None, step_metrics: list[tuple[int, dict[str, float]]] | None = None) -> None:
    """Everything in as few `log_batch` calls as MLflow's limits allow (not one call per step)."""
    c = client()
    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if _finite(v)]
    for step, values in step_metrics or []:
        ms.extend(Metric(k, float(v), now, int(step)) for k, v in values.items() if _finite(v))
    ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
    ts = [RunTag(k, str(v)[:MAX_TAG]) for k, v in (tags or {}).items()]
    # MLflow accepts at most 1000 metrics, 100 params and 100 tags per call.
    for i in range(0, max(len(ms), len(ps) * 10, len(ts) * 10, 1), MAX_BATCH):
        j = i // 10
        c.log_batch(run_id, metrics=ms[i : i + MAX_BATCH], params=ps[j : j + 100], tags=ts[j : j + 100])


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
