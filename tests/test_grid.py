"""A real tiny grid through Prefect (test harness) and MLflow (temporary sqlite store).

Checks: one parent run and one child per cell, per-step curves and artifacts,
a corrupt input failing only its own cell, the comparison table, resume
re-running nothing that finished, dry-run, and device leases.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from nst.data import image

GRID = """
grids:
  tiny:
    settings: {{size: 32, steps: 4}}
    eval_resolution: 64
    intermediate_images: 1
    axes:
      content: [tubingen.jpg]
      style: [starry_night.jpg, the_scream.jpg, corrupt.jpg]
      backbone: [vgg19]
    contact_sheet: {{cols: style}}
    summary_by: backbone
"""


@pytest.fixture()
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("NST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    monkeypatch.delenv("NST_ARTIFACT_ROOT", raising=False)
    for n in ("tubingen.jpg", "starry_night.jpg", "the_scream.jpg"):
        shutil.copy(image(n), tmp_path / n)
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (tmp_path / "exp.yaml").write_text(GRID.format())
    return tmp_path


def _run(home: Path) -> dict:
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.grid import grid_flow

    flow = grid_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))
    return flow(str(home / "exp.yaml"), "tiny", devices=["cpu"], progress=False, reports_dir=str(home / "reports"))


def test_batched_grid_logs_each_cell_and_isolates_a_bad_input(home: Path, prefect_server):
    """`batch: 3`: the two readable cells share one optimisation, the corrupt one fails alone;
    one run per cell, none left RUNNING, and the grouping keeps other shapes and methods apart.

    (Before the CLI test below: the module's Prefect harness, and its console log handler, must not
    start inside a test that captures, then closes, the output streams.)"""
    from mlflow import MlflowClient

    from flows.grid import batches
    from nst.experiments import load_grid

    exp = home / "exp.yaml"
    exp.write_text(GRID.format().replace("intermediate_images: 1", "intermediate_images: 1\n    batch: 3"))
    out = _run(home)
    assert sorted(r["status"] for r in out["results"]) == ["FAILED", "FINISHED", "FINISHED"]
    client = MlflowClient(f"sqlite:///{home / 'home' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("nst-grid/tiny").experiment_id])
    children = [r for r in runs if "cell_id" in r.data.tags]
    assert len(children) == 3 and not [r for r in runs if r.info.status == "RUNNING"]
    ok = [r for r in children if r.info.status == "FINISHED"]
    assert [r.data.metrics["batch"] for r in ok] == [2.0, 2.0]
    assert {r.data.tags["axis.style"] for r in ok} == {"starry_night", "the_scream"}
    assert all([m.step for m in client.get_metric_history(r.info.run_id, "loss_total")] == [1, 2, 3, 4] for r in ok)
    assert all(r.data.metrics["eval_style_distance"] > 0 for r in ok)

    # grouping: same shape and schedule together (at most `batch`), other sizes apart, grid order kept
    shutil.copy(image("chelsea.png"), home / "chelsea.png")
    exp.write_text(GRID.format().replace("[tubingen.jpg]", "[tubingen.jpg, chelsea.png]")
                   .replace("corrupt.jpg", "wave.jpg").replace("[vgg19]", "[vgg19, alexnet]"))
    shutil.copy(image("wave.jpg"), home / "wave.jpg")
    cells = load_grid(exp, "tiny").cells
    units = batches(cells, 2)
    assert sorted(len(u) for u in units) == [1] * 4 + [2] * 4 and sum(len(u) for u in units) == len(cells) == 12
    for u in units:
        assert len({(c.content, c.config.backbone) for c in u}) == 1
    assert batches(cells, 1) == [[c] for c in cells]


def test_tiny_grid_tracks_reports_and_resumes(home: Path, prefect_server, capsys):
    from mlflow import MlflowClient

    from nst.cli import main

    out = _run(home)
    by_status = {r["status"]: r for r in out["results"]}
    assert sorted(r["status"] for r in out["results"]) == ["FAILED", "FINISHED", "FINISHED"]
    assert "corrupt.jpg" in by_status["FAILED"]["error"] and "ImageError" in by_status["FAILED"]["error"]

    client = MlflowClient(f"sqlite:///{home / 'home' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("nst-grid/tiny")
    assert exp.artifact_location.startswith((home / "home" / "mlartifacts").as_uri())  # absolute, not ./mlruns
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("nst.kind") == "grid"]
    children = [r for r in runs if "cell_id" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    failed = [r for r in children if r.info.status == "FAILED"]
    assert len(failed) == 1 and "corrupt.jpg" in failed[0].data.tags["error"]

    # both finished cells share the content image: its targets were computed once in this worker
    assert max(r.data.metrics["target_cache_hits"] for r in children if r.info.status == "FINISHED") >= 1
    ok = [r for r in children if r.info.status == "FINISHED"][0]
    tags = ok.data.tags
    for t in ("grid", "cell_id", "backbone", "weights_source", "device", "git_commit"):
        assert tags.get(t), t
    assert tags["device"] == "cpu" and tags["weights_source"].startswith("caffe-vgg19")
    curve = client.get_metric_history(ok.info.run_id, "loss_total")
    assert [m.step for m in curve] == [1, 2, 3, 4]
    assert curve[-1].value < curve[0].value  # the optimisation made progress
    for m in ("eval_content_distance", "eval_style_distance", "eval_ssim", "wall_s", "s_per_step", "peak_rss_mb"):
        assert m in ok.data.metrics, m
    assert ok.data.params["size"] == "32" and ok.data.params["steps"] == "4"
    # a few params (MLflow's image charts print them all above each image); the whole config is cell.json
    assert set(ok.data.params) == {"content", "styles", "size", "steps"}
    arts = {a.path for a in client.list_artifacts(ok.info.run_id)}
    assert {"output.png", "loss_curve.png", "cell.json", "intermediate"} <= arts
    assert [a.path for a in client.list_artifacts(ok.info.run_id, "intermediate")] == ["intermediate/step_00002.png"]

    # comparison table: a row per cell, a column per axis and metric
    rep = home / "reports" / "tiny"
    table = pd.read_csv(rep / "table.csv")
    assert len(table) == 3 and {"content", "style", "eval_style_distance", "s_per_step", "status"} <= set(table)
    assert "system/cpu_utilization_percentage" in ok.data.metrics  # logged in MLflow (its charts) ...
    assert not [c for c in table if c.startswith("system/")]  # ... but not a column of the comparison table
    assert sorted(table["style"]) == ["corrupt", "starry_night", "the_scream"]
    assert table.set_index("style").loc["corrupt", "status"] == "FAILED"
    assert table["eval_style_distance"].notna().sum() == 2
    assert "| starry_night |" in (rep / "table.md").read_text()
    summary = pd.read_csv(rep / "summary.csv")  # per-backbone timing table (seed 000's comparison)
    assert list(summary["backbone"]) == ["vgg19"] and summary.loc[0, "cells"] == 2
    assert summary.loc[0, "s_per_step"] == pytest.approx(table["s_per_step"].mean())
    assert "corrupt.jpg" in summary.loc[0, "failed"]
    assert (rep / "table.html").read_text().count("<img ") == 2
    with Image.open(rep / "contact_sheet.png") as sheet:
        assert sheet.width >= 3 * 160 and sheet.height >= 160
    parent_arts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert {"report/table.csv", "report/contact_sheet.png"} <= parent_arts
    from prefect.artifacts import Artifact

    artifact = Artifact.get("grid-tiny")
    assert artifact is not None and artifact.type == "table" and "starry_night" in str(artifact.data)

    # dry run: finished cells would be skipped, the failed one re-run
    assert main(["grid", "run", str(home / "exp.yaml"), "--grid", "tiny", "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert listing.count("skip (finished)") == 2 and "1 would be skipped" not in listing

    # resume: only the failed cell runs again; still exactly one FINISHED run per cell
    again = _run(home)
    assert again["skipped"] == 2 and [r["status"] for r in again["results"]] == ["FAILED"]
    runs = client.search_runs([exp.experiment_id])
    finished = [r.data.tags["cell_id"] for r in runs if r.info.status == "FINISHED" and "cell_id" in r.data.tags]
    assert len(finished) == len(set(finished)) == 2
    assert len([r for r in runs if r.data.tags.get("nst.kind") == "grid"]) == 2

    # the report flow rebuilds the table from MLflow alone
    (rep / "table.csv").unlink()
    assert main(["grid", "report", "--grid", "tiny", "--reports", str(home / "reports")]) == 0
    assert len(pd.read_csv(rep / "table.csv")) == 3


def test_device_leases_never_share_a_device():
    from tasks.devices import DevicePool

    pool = DevicePool(["cuda:0", "cuda:1"])
    busy: dict[str, int] = {"cuda:0": 0, "cuda:1": 0}
    worst = []
    lock = threading.Lock()
    both_held = threading.Barrier(2, timeout=10)  # forces two cells to hold leases at the same time

    def cell():
        with pool.lease() as dev:
            with lock:
                busy[dev] += 1
                worst.append(busy[dev])
            both_held.wait()
            with lock:
                busy[dev] -= 1

    threads = [threading.Thread(target=cell) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(worst) == 8 and max(worst) == 1


def test_runs_of_a_killed_process_are_closed(home: Path):
    """A grid SIGKILLed mid-cell leaves a RUNNING run; the next `grid run` marks it KILLED (same host, pid gone)."""
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    from tasks import tracking

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    exp_id = tracking.experiment_id("killed")
    c = tracking.client()
    orphan = c.create_run(exp_id, tags={"nst.host": __import__("socket").gethostname(), "nst.pid": str(dead.pid),
                                        "cell_id": "x"}).info.run_id
    # another machine's runs: left alone while their heartbeat is fresh, closed once it is older than the TTL
    alive = c.create_run(exp_id, tags={"nst.host": "another-machine", "nst.pid": str(dead.pid),
                                       "nst.heartbeat": str(time.time())}).info.run_id
    silent = c.create_run(exp_id, tags={"nst.host": "another-machine", "nst.pid": "1",
                                        "nst.heartbeat": str(time.time() - tracking.CLAIM_TTL_S - 1)}).info.run_id
    assert sorted(tracking.close_abandoned_runs(exp_id)) == sorted([orphan, silent])
    client = MlflowClient(tracking.settings.tracking_uri())
    assert client.get_run(orphan).info.status == "KILLED" and "abandoned" in client.get_run(orphan).data.tags["error"]
    assert client.get_run(alive).info.status == "RUNNING"  # another machine's live run is left alone
    assert client.get_run(silent).info.status == "KILLED"
    assert tracking.finished_cells(exp_id) == {}
    client.set_terminated(alive)
