"""Two `nst grid run` of one grid at once split its cells and never run one twice (sqlite and Postgres server)."""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from nst.data import image
from services import BINDIR, mlflow_server

ROOT = Path(__file__).resolve().parents[1]
GRID = """
grids:
  race:
    settings: {size: 48, steps: 20, scales: []}
    evaluate: false
    intermediate_images: 0
    axes:
      content: [tubingen.jpg, chelsea.png]
      style: [starry_night.jpg, the_scream.jpg]
"""


def _grid_env(tmp: Path, tracking_uri: str | None) -> dict[str, str]:
    env = {**os.environ, "NST_HOME": str(tmp / "home"), "PREFECT_HOME": str(tmp / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for k in ("MLFLOW_TRACKING_URI", "NST_ARTIFACT_ROOT", "PREFECT_API_URL", "PREFECT_PROFILE"):
        env.pop(k, None)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def _write_grid(tmp: Path) -> Path:
    for n in ("tubingen.jpg", "chelsea.png", "starry_night.jpg", "the_scream.jpg"):
        (tmp / n).write_bytes(image(n).read_bytes())
    path = tmp / "exp.yaml"
    path.write_text(GRID)
    return path


def run_two_at_once(tmp: Path, tracking_uri: str | None) -> list[subprocess.CompletedProcess]:
    exp = _write_grid(tmp)
    env = _grid_env(tmp, tracking_uri)
    procs = [subprocess.Popen([str(BINDIR / "nst"), "grid", "run", str(exp), "--grid", "race", "--quiet",
                               "--reports", str(tmp / f"reports{i}")], env=env, cwd=tmp, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def run_counts(tracking_uri: str, grid: str) -> tuple[Counter, Counter]:
    """(cell_id -> FINISHED active runs, (status, lifecycle) -> runs) of a grid's experiment."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    c = MlflowClient(tracking_uri)
    exp = c.get_experiment_by_name(f"nst-grid/{grid}")
    runs = c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    finished = Counter(r.data.tags["cell_id"] for r in runs if "cell_id" in r.data.tags
                       and r.info.status == "FINISHED" and r.info.lifecycle_stage == "active")
    return finished, Counter((r.info.status, r.info.lifecycle_stage) for r in runs)


def _check(results: list[subprocess.CompletedProcess], uri: str, tmp: Path) -> None:
    for r in results:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]
        # each reports the whole grid done: cells it ran, ran by the other, or found finished when it started
        # (Prefect's temporary servers start one after the other, so the second may begin late)
        m = re.search(r"(\d+) skipped \(finished before\), (\d+) finished.*, 0 failed", r.stdout)
        assert m and int(m[1]) + int(m[2]) == 4, r.stdout
    finished, states = run_counts(uri, "race")
    assert len(finished) == 4 and set(finished.values()) == {1}, finished  # each cell ran exactly once
    assert states[("RUNNING", "active")] == 0, states
    # between them the two runs did all four cells, each reporting the whole grid
    for i in range(2):
        assert (tmp / f"reports{i}" / "race" / "table.csv").read_text().count("FINISHED") == 4


@pytest.mark.slow
def test_two_grid_runs_on_a_fresh_sqlite_store_split_the_cells(tmp_path: Path) -> None:
    results = run_two_at_once(tmp_path, None)
    _check(results, f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}", tmp_path)


@pytest.mark.slow
def test_two_grid_runs_on_a_postgres_tracking_server_split_the_cells(tmp_path: Path) -> None:
    with mlflow_server(tmp_path) as server:
        results = run_two_at_once(tmp_path, server.uri)
        _check(results, server.uri, tmp_path)
