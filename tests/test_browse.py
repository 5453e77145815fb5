"""What a user browses after a grid, checked through the MLflow and Prefect APIs (issue 15).

A real tiny grid (32 px, 4 steps, two cells) into a temporary store whose experiment was made before
nst tagged experiment kinds: the experiment gets MLflow 3's training kind, each cell its output image
at its steps as MLflow step images (and still as files) and its system metrics, the parent run the
grid's table (an MLflow table) and contact sheet (an image); runs filter by axis tag; Prefect holds
the table and the links artifacts.  Then `nst server start|status|stop` for real on a loopback port.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from conftest import isolated_tracking
from nst.data import image

GRID = """
grids:
  views:
    settings: {size: 32, steps: 4}
    eval_resolution: 64
    intermediate_images: 1
    axes:
      content: [tubingen.jpg]
      style: [starry_night.jpg, the_scream.jpg]
    contact_sheet: {cols: style}
"""


@pytest.fixture(scope="module")
def grid(tmp_path_factory, prefect_server) -> dict:
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.grid import grid_flow
    from tasks import settings, tracking

    root = tmp_path_factory.mktemp("browse")
    with pytest.MonkeyPatch.context() as mp:
        isolated_tracking(mp, root)
        for n in ("tubingen.jpg", "starry_night.jpg", "the_scream.jpg"):
            shutil.copy(image(n), root / n)
        (root / "exp.yaml").write_text(GRID)
        # an experiment from before nst set the kind tag: the next grid run tags it
        old = tracking.client().create_experiment(
            tracking.experiment_name("views"),
            artifact_location=(settings.nst_home() / "mlartifacts" / "views").as_uri())
        assert "mlflow.experimentKind" not in tracking.client().get_experiment(old).tags
        flow = grid_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))
        out = flow(str(root / "exp.yaml"), "views", devices=["cpu"], progress=False, reports_dir=str(root / "reports"))
        assert out["experiment_id"] == old
        yield out


def test_experiment_opens_in_the_training_view(grid):
    from tasks import mlflow_views, tracking

    c = tracking.client()
    assert c.get_experiment(grid["experiment_id"]).tags["mlflow.experimentKind"] == "custom_model_development"
    new = tracking.experiment_id("views-new")  # a new experiment has it from its creation
    assert c.get_experiment(new).tags["mlflow.experimentKind"] == "custom_model_development"
    assert mlflow_views.experiment_url(new, "http://h:1") == (
        f"http://h:1/#/experiments/{new}/runs?workflowType=machine_learning")


def test_cells_log_step_images_system_metrics_and_filter_by_axis(grid):
    from tasks import mlflow_views, tracking

    c = tracking.client()
    assert sorted(r["status"] for r in grid["results"]) == ["FINISHED", "FINISHED"]
    for r in grid["results"]:
        run = c.get_run(r["run_id"])
        # 4 steps, one intermediate image: the start (step 0), step 2, then the output at the last step
        assert mlflow_views.image_steps(c, r["run_id"], "evolution") == [0, 2, 4]
        assert mlflow_views.image_steps(c, r["run_id"], "output") == [0]  # the result alone
        names = [a.path for a in c.list_artifacts(r["run_id"], "images")]
        assert sum(n.endswith("+compressed.webp") for n in names) == 4  # the UI's thumbnails
        assert run.data.tags.get("mlflow.loggedImages") == "True"
        assert {"output.png", "intermediate"} <= {a.path for a in c.list_artifacts(r["run_id"])}  # files too
        for m in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
            assert m in run.data.metrics, m
        assert run.data.metrics["system/system_memory_usage_megabytes"] > 0
    starry = c.search_runs([grid["experiment_id"]], "tags.axis.style = 'starry_night'")
    assert [r.data.tags["axis.style"] for r in starry] == ["starry_night"]
    assert starry[0].info.run_name.startswith("000 ")


def test_parent_run_has_the_table_and_the_sheet(grid):
    import mlflow

    from tasks import mlflow_views, tracking

    c = tracking.client()
    parent = grid["parent_run_id"]
    assert mlflow_views.TABLE_FILE in {a.path for a in c.list_artifacts(parent, "report")}
    mlflow.set_tracking_uri(tracking.settings.tracking_uri())  # load_table searches runs through the fluent API
    table = c.load_table(grid["experiment_id"], mlflow_views.TABLE_FILE, run_ids=[parent])
    assert sorted(table["style"]) == ["starry_night", "the_scream"] and list(table["status"]) == ["FINISHED"] * 2
    assert table["eval_style_distance"].gt(0).all()
    assert mlflow_views.image_steps(c, parent, "contact_sheet") == [0]
    assert "report/contact_sheet.png" in {a.path for a in c.list_artifacts(parent, "report")}


def test_prefect_holds_the_table_and_links_to_mlflow(grid):
    from prefect.artifacts import Artifact

    table = Artifact.get("grid-views")
    assert table is not None and table.type == "table" and "starry_night" in str(table.data)
    links = Artifact.get("grid-views-mlflow")
    assert links is not None and links.type == "markdown"
    md = str(links.data)
    assert f"#/experiments/{grid['experiment_id']}/runs?workflowType=machine_learning" in md
    for r in grid["results"]:
        assert f"/runs/{r['run_id']}" in md
    assert "#/compare-runs?runs=" in md
    runs = json.loads(__import__("urllib.parse").parse.unquote(md.split("compare-runs?runs=")[1].split("&")[0]))
    assert sorted(runs) == sorted(r["run_id"] for r in grid["results"])


def test_server_start_status_stop(tmp_path, monkeypatch, capsys):
    """A real Prefect server on a free loopback port: start, status (exit 0), grid CLI's URL, stop (exit 3)."""
    from flows import server
    from nst.cli import main

    monkeypatch.setenv("NST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    port = server.free_port()
    try:
        assert main(["server", "start", "--port", str(port), "--timeout", "150"]) == 0
        st = server.read_state()
        assert st is not None and st.port == port and st.url == f"http://127.0.0.1:{port}"
        assert (tmp_path / "home" / "prefect" / "prefect.db").exists()  # its sqlite default under NST_HOME
        assert server.healthy(st.url)
        assert main(["server", "status"]) == 0 and f"running at {st.url}" in capsys.readouterr().out
        assert main(["server", "start", "--port", str(port)]) == 0  # idempotent
        assert "already running" in capsys.readouterr().out
        assert server.use_if_running() == st.url + "/api"
        monkeypatch.delenv("PREFECT_API_URL")
    finally:
        assert main(["server", "stop"]) == 0
    assert not server.healthy(st.url, timeout=1) and server.read_state() is None
    assert main(["server", "status"]) == 3 and "not running" in capsys.readouterr().out
    assert server.use_if_running() is None


def test_runs_ended_on_a_tracking_server_print_no_links(tmp_path, monkeypatch, capsys):
    """MLflow prints "🏃 View run ... at: URL" on stdout whenever a run on a tracking server ends (two lines
    per cell of a grid); nst's settings switch that off.  The run still ends FINISHED with what it logged."""
    from services import free_port, start_process, stop_processes, wait_http
    from tasks import tracking

    port, procs = free_port(), []
    uri = f"http://127.0.0.1:{port}"
    start_process("mlflow", [sys.executable, "-m", "mlflow", "server",
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                             "--artifacts-destination", (tmp_path / "artifacts").as_uri(),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}"],
                  {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}, tmp_path / "logs", procs)
    try:
        wait_http(f"{uri}/health", procs, 180)
        monkeypatch.setenv("NST_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
        exp = tracking.experiment_id("links")
        with tracking.tracked_run(exp, "000 a cell", {"cell_id": "c0"}) as run_id:
            tracking.log_batch(run_id, metrics={"m": 1.0}, params={"size": 32})
        run = tracking.client().get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.metrics["m"] == 1.0 and run.data.params["size"] == "32"
        out = capsys.readouterr().out
        assert "View run" not in out and "View experiment" not in out and uri not in out, out
    finally:
        stop_processes(procs)
