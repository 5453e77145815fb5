"""A grid killed mid-cell (SIGKILL) and interrupted (SIGINT) then finished: nothing lost, nothing twice.

The short version of ``benchmarks/soak.py`` (which kills at random moments, many times, and adds disk
full, an unwritable reports folder and a stopped tracking server).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from soak import CELLS, artifact_dir, check_store, grid_env, start_grid, write_grid  # noqa: E402


def _wait_for(cond, p: subprocess.Popen, what: str, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if p.poll() is not None:
            pytest.fail(f"grid ended before {what}: {p.communicate()[1][-2000:]}")
        try:
            p.wait(timeout=0.3)
        except subprocess.TimeoutExpired:
            pass
    pytest.fail(f"no {what} within {timeout} s")


def _states(uri: str) -> list[str]:
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("nst-grid/soak")
    if exp is None:
        return []
    return [r.info.status for r in c.search_runs([exp.experiment_id]) if "cell_id" in r.data.tags]


@pytest.mark.slow
def test_killed_and_interrupted_grid_finishes_each_cell_once(tmp_path: Path) -> None:
    home, reports = tmp_path / "home", tmp_path / "reports"
    exp = write_grid(tmp_path, size=32, steps=8)
    env = grid_env(home)
    uri = f"sqlite:///{home / 'mlflow.db'}"

    p = start_grid(exp, env, reports)  # SIGKILL while the first cell optimises
    _wait_for(lambda: "RUNNING" in _states(uri), p, "a running cell")
    p.kill()
    p.communicate()

    p = start_grid(exp, env, reports)  # SIGINT once a cell has finished and another runs
    _wait_for(lambda: (s := _states(uri)).count("FINISHED") >= 1 and "RUNNING" in s, p, "a second cell")
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert "RUNNING" not in _states(uri)  # the interrupted cell closed its run (KILLED)

    p = start_grid(exp, env, reports)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0 and "Traceback" not in err, out[-1000:] + err[-2000:]
    counts = check_store(uri, reports, artifact_dir(home))
    assert counts["finished"] == CELLS and counts["pngs"] >= CELLS
