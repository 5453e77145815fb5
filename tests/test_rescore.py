"""The robust evaluator in a grid: a finished tiny grid rescored by `nst grid report --rescore robust` (its
cells' logged output.png and inputs, nothing run again), a cell run with ``evaluators: [fixed, robust]``
logging the same metrics and ids, and a second rescore skipping every cell."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import get_args

import pandas as pd
import pytest

from nst.data import image

GRID = """
grids:
  tiny:
    settings: {{size: 32, steps: 2}}
    eval_resolution: 64
    intermediate_images: 0
    evaluators: {evaluators}
    axes:
      content: [tubingen.jpg]
      style: {styles}
"""


@pytest.fixture()
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("NST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    monkeypatch.delenv("NST_ARTIFACT_ROOT", raising=False)
    for n in ("tubingen.jpg", "starry_night.jpg", "the_scream.jpg", "wave.jpg"):
        shutil.copy(image(n), tmp_path / n)
    return tmp_path


def _run(home: Path, evaluators: str, styles: str) -> dict:
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.grid import grid_flow

    (home / "exp.yaml").write_text(GRID.format(evaluators=evaluators, styles=styles))
    flow = grid_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))
    return flow(str(home / "exp.yaml"), "tiny", devices=["cpu"], progress=False, reports_dir=str(home / "reports"))


def test_the_evaluator_names_agree_everywhere() -> None:
    from flows.cli import add_commands  # noqa: F401  (the --rescore choices are spelled out there)
    from nst.evaluate import EVALUATORS
    from nst.experiments import EvaluatorName

    assert set(get_args(EvaluatorName)) == set(EVALUATORS) == {"fixed", "robust"}


def test_a_finished_grid_is_rescored_with_the_robust_evaluator(home: Path, prefect_server, capsys) -> None:
    from mlflow import MlflowClient

    from nst.cli import main
    from nst.evaluate import RobustEvaluator
    from nst.images import load_image

    out = _run(home, "[fixed]", "[starry_night.jpg, the_scream.jpg]")
    assert [r["status"] for r in out["results"]] == ["FINISHED", "FINISHED"]
    client = MlflowClient(f"sqlite:///{home / 'home' / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("nst-grid/tiny").experiment_id

    def cells() -> dict:
        return {r.data.tags["cell_id"]: r for r in client.search_runs([exp_id]) if "cell_id" in r.data.tags}

    before = cells()
    fixed_id = "caffe-vgg19/max/fp32/relu4_2|relu1_1-relu5_1@64px"
    assert all(r.data.tags["eval_evaluator"] == fixed_id and "robust_style_distance" not in r.data.metrics
               for r in before.values())

    assert main(["grid", "report", "--grid", "tiny", "--reports", str(home / "reports"), "--rescore", "robust"]) == 0
    assert "rescored with robust: 2 cells, 0 already scored, 0 failed" in capsys.readouterr().out
    after = cells()
    ev = RobustEvaluator(resolution=64)
    for cid, r in after.items():
        assert r.data.tags["robust_evaluator"] == ev.id
        assert r.data.metrics["eval_style_distance"] == before[cid].data.metrics["eval_style_distance"]  # kept
        m = r.data.metrics
        assert all(math.isfinite(m[f"robust_{k}"]) for k in ("style_distance", "style_swd", "color_distance"))
        # the scores are those of the logged output against the cell's inputs
        cell = json.loads(Path(client.download_artifacts(r.info.run_id, "cell.json", str(home))).read_text())
        png = load_image(client.download_artifacts(r.info.run_id, "output.png", str(home)))
        content = load_image(cell["content"], size=32)
        want = ev.score(png, content, [load_image(s, size=ev.style_size) for s in cell["styles"]])
        assert m["robust_style_distance"] == pytest.approx(want.style_distance, rel=1e-6)
        assert m["robust_color_distance"] == pytest.approx(want.color_distance, rel=1e-6)
    table = pd.read_csv(home / "reports" / "tiny" / "table.csv")
    assert table["robust_style_distance"].notna().sum() == 2 and "robust_style_distance_beyond" in table

    # a new cell run with both evaluators logs the same metrics and ids; a second rescore skips all three
    out = _run(home, "[fixed, robust]", "[starry_night.jpg, the_scream.jpg, wave.jpg]")
    assert out["skipped"] == 2 and [r["status"] for r in out["results"]] == ["FINISHED"]
    new = next(r for cid, r in cells().items() if cid not in before)
    assert new.data.tags["robust_evaluator"] == ev.id and new.data.tags["eval_evaluator"] == fixed_id
    assert set(after[next(iter(after))].data.metrics) <= set(new.data.metrics)
    assert main(["grid", "report", "--grid", "tiny", "--reports", str(home / "reports"), "--rescore", "robust"]) == 0
    assert "rescored with robust: 0 cells, 3 already scored, 0 failed" in capsys.readouterr().out
