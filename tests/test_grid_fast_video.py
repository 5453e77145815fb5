"""The `fast` and `video` grid methods for real at tiny size through Prefect (test harness) and MLflow
(temporary sqlite store), and their options' validation.

* fast: a network trained in the cell on the bundled COCO subset, its falling per-step loss, evolution
  images and model logged in the cell's run, the content stylised and scored;
* video: independent, temporal (Ruder et al.) and network (`model` option) frames of the bundled Sintel
  clip, plain and stabilised, the warping error as a table column, lower with the temporal loss than for
  independent frames and with stabilisation than without;
* a bad option is refused before any work with the YAML path of the entry to fix.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import isolated_tracking, train_tiny_model
from nst.errors import ConfigError
from nst.experiments import load_grid

DATA = Path(__file__).resolve().parents[1] / "nst" / "data"
TINY = """
      width: 8
      n_residual: 1
      content_layers: [relu2_2]
      style_layers: [relu1_1, relu2_1, relu3_1]
      train_images: {data}/coco/train
      train_coco: {data}/coco/train/train_subset.json
"""
GRIDS = """
grids:
  fast:
    settings:
      method: fast
      content: {data}/images/tubingen.jpg
      style: {data}/images/starry_night.jpg
      size: 48
      train_steps: 10
      val_every: 5{tiny}
    axes:
      norm: [batch]  # keep the test short: instance norm is the default, used by `nst train`'s tests
    eval_resolution: 64
  fast-model:
    settings:
      method: fast
      content: {data}/images/tubingen.jpg
      style: {data}/images/wave.jpg
      size: 48
      model: {trained}
    eval_resolution: 64
  video:
    settings:
      method: video
      content: {data}/video/sintel
      style: {data}/images/starry_night.jpg
      frames: 3
      steps: 10
      frame_steps: 6
      size: 48{tiny}
      model: {model}
    axes:
      mode: [independent, temporal, fast]
      temporal_weight: [200]
      stabilize: [0, 0.8]
    eval_resolution: 64
    summary_by: mode
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """One temporary MLflow store for both grids (creating its tables takes seconds)."""
    from nst.fast.network import NetConfig, TransformNet, save_model

    tmp = tmp_path_factory.mktemp("fast-video")
    torch.manual_seed(0)  # the video grid's fast mode applies this (untrained) network: the `model` option
    model = save_model(TransformNet(NetConfig(width=4, n_residual=1)), tmp / "net.pt", ["starry_night"])
    trained = train_tiny_model(tmp / "wave.pt", "wave.jpg")
    (tmp / "exp.yaml").write_text(GRIDS.format(data=DATA, tiny=TINY.format(data=DATA).rstrip(), model=model,
                                               trained=trained))
    with pytest.MonkeyPatch.context() as mp:
        isolated_tracking(mp, tmp)
        yield tmp


def _run(home: Path, grid: str) -> dict:
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.grid import grid_flow

    flow = grid_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))
    return flow(str(home / "exp.yaml"), grid, devices=["cpu"], progress=False, reports_dir=str(home / "reports"))


def _client(home: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{home / 'home' / 'mlflow.db'}")


def test_fast_grid_trains_logs_and_scores(home: Path, prefect_server):
    out = _run(home, "fast")
    assert [r["status"] for r in out["results"]] == ["FINISHED"], out["results"]
    client = _client(home)
    exp = client.get_experiment_by_name("nst-grid/fast")
    cells = [r for r in client.search_runs([exp.experiment_id]) if "cell_id" in r.data.tags]
    assert [r.data.params["norm"] for r in cells] == ["batch"]
    for run in cells:
        rid, m = run.info.run_id, run.data.metrics
        assert run.data.params["train_steps"] == "10" and run.data.params["train_images"] == "train"
        losses = [x.value for x in sorted(client.get_metric_history(rid, "loss_total"), key=lambda x: x.step)]
        assert len(losses) == 10
        assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses  # the network learns
        assert m["train_s"] > 0 and m["images_per_s"] > 0 and m["wall_s"] >= m["train_s"]
        assert {"eval_content_distance", "eval_style_distance", "eval_ssim"} <= set(m)
        arts = {a.path for a in client.list_artifacts(rid)}
        assert {"output.png", "evolution.png", "loss_curve.png", "cell.json"} <= arts
        assert [a.path for a in client.list_artifacts(rid, "evolution")] == [
            "evolution/step_000005.png", "evolution/step_000010.png"]
        assert "model/model.pt" in {a.path for a in client.list_artifacts(rid, "model")}
    table = pd.read_csv(home / "reports" / "fast" / "table.csv")
    assert {"norm", "train_s", "images_per_s", "eval_style_distance", "wall_s"} <= set(table)
    assert table[["train_s", "images_per_s", "eval_style_distance"]].notna().all().all()
    assert (home / "reports" / "fast" / "contact_sheet.png").is_file()


def test_fast_cell_with_a_trained_model_logs_its_training_evolution(home: Path, prefect_server):
    """A cell that applies a trained network (no training in the cell) shows how that network was trained:
    the validation images its model file carries become the cell's evolution.png."""
    out = _run(home, "fast-model")
    assert [r["status"] for r in out["results"]] == ["FINISHED"], out["results"]
    client = _client(home)
    rid = out["results"][0]["run_id"]
    path = client.download_artifacts(rid, "evolution.png", str(home / "dl" / "evo"))
    from nst.fast.network import load_model
    from nst.fast.train import evolution_frames
    from nst.images import load_image

    frames = evolution_frames(load_model(home / "wave.pt")[1]["meta"]["evolution"])
    assert frames and load_image(path).shape[-2:] == (sum(f.shape[-2] for _, f in frames), frames[0][1].shape[-1])
    assert "train_s" not in client.get_run(rid).data.metrics  # applied, not trained here


def test_video_grid_warping_error_column_and_temporal_consistency(home: Path, prefect_server):
    out = _run(home, "video")
    assert [r["status"] for r in out["results"]] == ["FINISHED"] * 4, out["results"]
    rep = home / "reports" / "video"
    table = pd.read_csv(rep / "table.csv")
    assert {"mode", "temporal_weight", "stabilize", "warping_error", "frames", "frames_per_s"} <= set(table)
    err = {(m, str(s)): e for m, s, e in zip(table["mode"], table["stabilize"], table["warping_error"])}
    assert set(err) == {("independent", "-"), ("temporal", "-"), ("fast", "0"), ("fast", "0.8")}, err
    assert all(v > 0 for v in err.values())
    assert err["temporal", "-"] < 0.5 * err["independent", "-"], err
    assert err["fast", "0.8"] < 0.5 * err["fast", "0"], err  # stabilised network frames flicker less
    assert (table["frames"] == 3).all()
    assert dict(zip(table["mode"], table["temporal_weight"].astype(str)))["independent"] == "-"  # not used
    assert "warping_error" in (rep / "summary.md").read_text()

    client = _client(home)
    for rid, mode in zip(table["run_id"], table["mode"]):
        arts = {a.path for a in client.list_artifacts(rid)}
        assert {"output.mp4", "strip.png", "output.png"} <= arts, (mode, arts)
        params = client.get_run(rid).data.params
        assert params["mode"] == mode and ("model" in params) == (mode == "fast")  # fast: the given network
        assert "train_steps" not in params  # training keys: unused with a model, not logged
        info = json.loads(Path(client.download_artifacts(rid, "cell.json", str(home / "dl" / rid))).read_text())
        assert len(info["info"]["frame_warping_errors"]) == 2
    from nst.video import count_frames

    mp4 = client.download_artifacts(table["run_id"][0], "output.mp4", str(home / "dl" / "mp4"))
    assert count_frames(mp4) == 3


# --------------------------------------------------------------------------- validation


def _grid(tmp_path: Path, body: str, name: str = "g"):
    (tmp_path / "e.yaml").write_text("grids:\n  g:\n" + textwrap.indent(textwrap.dedent(body), "    "))
    return load_grid(tmp_path / "e.yaml", name)


VIDEO = f"""
settings:
  method: video
  content: {DATA}/video/sintel
  style: {DATA}/images/starry_night.jpg
  size: 32
"""


def test_bad_options_name_their_yaml_path(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^grids\.g\.axes\.mode\[1\]: Input should be 'independent', 'temporal' "
                                          r"or 'fast'"):
        _grid(tmp_path, VIDEO + "axes:\n  mode: [independent, temporl]\n")
    with pytest.raises(ConfigError, match=r"^grids\.g\.axes\.temporal_weight\[0\]: Input should be greater than or "
                                          r"equal to 0"):
        _grid(tmp_path, VIDEO + "axes:\n  temporal_weight: [-1]\n")
    with pytest.raises(ConfigError, match=r"^grids\.g\.axes\.stabilize\[1\]: Input should be less than or equal to 1"):
        _grid(tmp_path, VIDEO + "axes:\n  stabilize: [0.5, 2]\n")
    with pytest.raises(ConfigError, match=r"^grids\.g\.settings\.temporal_wieght: unknown key 'temporal_wieght'"):
        _grid(tmp_path, VIDEO + "  temporal_wieght: 3\n")
    with pytest.raises(ConfigError, match=r"^grids\.g\.settings\.train_images: train_images folder 'nope' not found"):
        _grid(tmp_path, VIDEO + "  train_images: nope\n")
    with pytest.raises(ConfigError, match=r"^grids\.g\.settings\.content: method 'video' takes a clip"):
        _grid(tmp_path, VIDEO.replace("video/sintel", "images/tubingen.jpg"))
    with pytest.raises(ConfigError, match=r"^grids\.g\.axes\.mode\[1\]: a feed-forward network needs train_images"):
        _grid(tmp_path, VIDEO + "axes:\n  mode: [temporal, fast]\n")
    # option keys of another method, and clips for image methods
    gatys = VIDEO.replace("method: video", "method: gatys")
    with pytest.raises(ConfigError, match=r"^grids\.g\.axes\.norm\[0\]: 'norm' is only for method fast and video; "
                                          r"this cell's method is 'gatys'"):
        _grid(tmp_path, gatys.replace("video/sintel", "images/tubingen.jpg") + "axes:\n  norm: [batch]\n")
    with pytest.raises(ConfigError, match=r"^grids\.g\.settings\.content: 'sintel' is a clip .*method 'gatys' needs "
                                          r"an image file"):
        _grid(tmp_path, gatys)
    fast = VIDEO.replace("method: video", "method: fast").replace("video/sintel", "images/tubingen.jpg")
    with pytest.raises(ConfigError, match=r"^grids\.g\.settings\.mode: 'mode' is only for method video; "
                                          r"this cell's method is 'fast'"):
        _grid(tmp_path, fast + f"  train_images: {DATA}/coco/train\n  mode: fast\n")


def test_options_shape_cells_and_their_ids(tmp_path: Path):
    g = _grid(tmp_path, VIDEO + "axes:\n  mode: [independent, temporal]\n  temporal_weight: [0, 200]\n")
    # independent frames do not use the temporal weight: one cell for both values, labelled '-'
    assert [c.name for c in g.cells] == ["mode=independent | temporal_weight=-", "mode=temporal | temporal_weight=0",
                                         "mode=temporal | temporal_weight=200"]
    assert "temporal_weight" not in g.cells[0].method_options
    assert g.cells[2].method_options["temporal_weight"] == 200
    assert len({c.cell_id for c in g.cells}) == 3
    fast = VIDEO.replace("method: video", "method: fast").replace("video/sintel", "images/tubingen.jpg")
    g = _grid(tmp_path, fast + f"  train_images: {DATA}/coco/train\naxes:\n  norm: [instance, batch]\n")
    a, b = g.cells
    assert a.method_options["train_images"] == str((DATA / "coco" / "train").resolve())
    assert a.cell_id != b.cell_id and a.to_dict()["method_options"]["norm"] == "instance"


def test_a_model_cell_without_style_is_scored_against_the_networks_own_styles(tmp_path: Path):
    """`model:` and no `style`: the cell's styles are the images the network was trained on (the recorded
    files, else the bundled copies of that name); a network whose style image is nowhere is one line."""
    import torch

    model = train_tiny_model(tmp_path / "wave.pt", "wave.jpg")
    body = f"settings:\n  method: fast\n  content: {DATA}/images/tubingen.jpg\n  size: 32\naxes:\n  model: [{model}]\n"
    (cell,) = _grid(tmp_path, body).cells
    assert [p.name for p in cell.styles] == ["wave.jpg"] and cell.styles[0].is_file()
    payload = torch.load(model, weights_only=True)
    payload["meta"]["train_config"]["styles"] = ["/elsewhere/wave.jpg"]  # trained on another machine
    torch.save(payload, tmp_path / "moved.pt")
    (cell,) = _grid(tmp_path, body.replace(str(model), str(tmp_path / "moved.pt"))).cells
    assert cell.styles == [DATA / "images" / "wave.jpg"]
    payload["meta"]["train_config"]["styles"] = ["/elsewhere/mine.jpg"]
    torch.save(payload, tmp_path / "lost.pt")
    with pytest.raises(ConfigError, match=r"^grids\.g\.axes\.model\[0\]: model '.*lost\.pt': its style image "
                                          r"/elsewhere/mine\.jpg is not on this machine"):
        _grid(tmp_path, body.replace(str(model), str(tmp_path / "lost.pt")))
    # a cell that gives two styles to a one-style network: refused when the grid is read, naming the model
    two = body.replace("  size: 32\n", f"  size: 32\n  style: {{images: [{DATA}/images/wave.jpg, "
                                         f"{DATA}/images/udnie.jpg], weights: [0.5, 0.5]}}\n")
    with pytest.raises(ConfigError, match=r"^grids\.g\.axes\.model\[0\]: model 'wave' was trained for 1 style, "
                                          r"this cell gives 2"):
        _grid(tmp_path, two)
