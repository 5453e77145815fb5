"""`nst train`'s task: a real tiny training recorded in a temporary MLflow store
(per-step losses, evolution images, our model file and an MLflow pytorch model);
a bad style image leaves a FAILED run, never a RUNNING one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import isolated_tracking
from nst.data import image

COCO = Path("/work/shared/data/coco")
pytestmark = pytest.mark.skipif(not (COCO / "instances_ccby2.json").is_file(), reason="COCO subset not present")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """One temporary MLflow store for the module (creating its tables takes seconds)."""
    tmp = tmp_path_factory.mktemp("train-tracking")
    with pytest.MonkeyPatch.context() as mp:
        isolated_tracking(mp, tmp)
        yield tmp


def _cfg(tmp: Path, style: str) -> dict:
    return dict(styles=[style], images=str(COCO / "images"), coco=str(COCO / "instances_ccby2.json"), size=32,
                batch_size=2, steps=4, width=4, n_residual=1, device="cpu", precision="fp32",
                content_layers=["relu2_2"], style_layers=["relu1_1", "relu2_1"], val_size=32, val_every=2,
                out=str(tmp / "m.pt"), checkpoint=str(tmp / "m.ckpt"))


def test_train_task_logs_curves_evolution_and_model(home: Path):
    import mlflow.pytorch

    from nst.fast.infer import Stylizer
    from tasks import tracking
    from tasks.train import train_one

    exp = tracking.experiment_id("fast-test")
    res = train_one(_cfg(home, str(image("starry_night.jpg"))), exp, progress=False)
    assert res["status"] == "FINISHED", res
    c = tracking.client()
    run = c.get_run(res["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["norm"] == "instance"
    assert [m.step for m in c.get_metric_history(run.info.run_id, "loss_total")] == [1, 2, 3, 4]
    assert run.data.metrics["images_per_s"] > 0 and run.data.metrics["wall_s"] > 0
    assert [a.path for a in c.list_artifacts(run.info.run_id, "evolution")] == [
        "evolution/step_000002.png", "evolution/step_000004.png"]
    from tasks.mlflow_views import image_steps

    assert image_steps(c, run.info.run_id, "validation") == [2, 4]  # MLflow step images: the run page's slider
    names = {a.path for a in c.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.pt", "model/config.json", "model/style_starry_night.jpg"} <= names
    logged = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/mlflow_model")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(logged(x).clamp(0, 1), Stylizer(home / "m.pt", device="cpu")(x))
    assert tracking.finished_cells(exp) == {run.data.tags["cell_id"]: run.info.run_id}


def test_bad_style_fails_the_run_cleanly(home: Path, tmp_path: Path):
    from tasks import tracking
    from tasks.train import train_one

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    exp = tracking.experiment_id("fast-test")
    res = train_one(_cfg(tmp_path, str(bad)), exp, progress=False)
    assert res["status"] == "FAILED" and "bad.jpg" in res["error"]
    assert tracking.client().get_run(res["run_id"]).info.status == "FAILED"
    assert not (tmp_path / "m.pt").exists()


def test_a_killed_trainings_run_is_closed_by_the_next_one(home: Path, prefect_server):
    """`nst train` SIGKILLed mid-training leaves its run RUNNING; the next training flow marks it KILLED."""
    import socket
    import subprocess
    import sys

    from flows.train import train_flow
    from tasks import tracking

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    exp = tracking.experiment_id("fast-killed")
    c = tracking.client()
    orphan = c.create_run(exp, tags={"nst.host": socket.gethostname(), "nst.pid": str(dead.pid), "nst.kind": "train",
                                     "cell_id": "t"}).info.run_id
    assert train_flow([], experiment="fast-killed", devices=["cpu"], progress=False) == []
    run = c.get_run(orphan)
    assert run.info.status == "KILLED" and "abandoned" in run.data.tags["error"]
