"""Shipped networks: packing (fp16 + provenance), `nst models`, names and aliases wherever a model file is
taken (`nst fast`, `nst video`, a grid's `model:`), and the one-line errors of bad model input."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import train_tiny_model
from nst.cli import main
from nst.data import image
from nst.errors import ConfigError, WeightsError
from nst.fast.infer import Stylizer
from nst.fast.models import MODELS_ENV, pack_model, resolve_model, score, shipped_models
from nst.fast.network import NetConfig, TransformNet, load_model, save_model
from nst.images import load_image

SCORES = {"content_distance": 0.61, "style_distance": 0.42, "ssim": 0.3}


def _perturbed(cfg: NetConfig, seed: int = 0) -> TransformNet:
    """An untrained network whose norm layers differ per channel and style (as after training)."""
    torch.manual_seed(seed)
    net = TransformNet(cfg).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.InstanceNorm2d) or hasattr(m, "n_styles"):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    return net


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real (tiny, 2-step) `nst train` model: its meta is what pack_model reads."""
    return train_tiny_model(tmp_path_factory.mktemp("trained") / "wave.pt", "wave.jpg")


@pytest.fixture()
def models(tmp_path, monkeypatch, trained) -> Path:
    """A models folder (NST_MODELS_DIR) holding the packed wave network and a 2-style one."""
    root = tmp_path / "models"
    pack_model(trained, root / "wave.pt", {"scores": SCORES})
    two = save_model(_perturbed(NetConfig(n_styles=2, width=4, n_residual=1)), tmp_path / "duo.pt",
                     ["starry_night", "the_scream"], {"train_config": {"steps": 3}, "train_s": 7200.0})
    pack_model(two, root / "duo.pt", {"scores": SCORES, "training_data": {"folder": "x", "images": 0,
                                                                          "credit": "none"}})
    monkeypatch.setenv(MODELS_ENV, str(root))
    return root


def test_pack_halves_the_file_and_keeps_the_outputs(tmp_path):
    net = _perturbed(NetConfig())  # the paper's width: the weights are the file
    src = save_model(net, tmp_path / "full.pt", ["starry_night"], {"train_config": {"steps": 5}, "train_s": 1.5})
    dst = pack_model(src, tmp_path / "packed.pt", {"scores": SCORES, "training_data": {"folder": "f", "images": 1,
                                                                                       "credit": "c"}})
    ratio = dst.stat().st_size / src.stat().st_size
    assert 0.45 < ratio < 0.52, ratio
    payload = torch.load(dst, weights_only=True)
    assert {v.dtype for v in payload["state_dict"].values()} == {torch.float16}
    packed, _ = load_model(dst)
    assert {p.dtype for p in packed.parameters()} == {torch.float32}  # load_state_dict casts back
    x = load_image(image("chelsea.png"), size=64)
    ref, got = Stylizer(src, device="cpu")(x), Stylizer(dst, device="cpu")(x)
    diff = (ref - got).abs()
    assert diff.max() < 1 / 255 and diff.mean() < 5e-4, (diff.max(), diff.mean())  # under one 8-bit level
    assert ref.std() > 0.05  # not a flat image: the comparison means something


def test_provenance_survives_a_load(trained, tmp_path):
    dst = pack_model(trained, tmp_path / "wave.pt", {"scores": SCORES, "wall_s": 12.5})
    _, info = load_model(dst)
    prov = info["meta"]["provenance"]
    assert prov["styles"] == [{"name": "wave", "file": "nst/data/images/wave.jpg"}]
    assert prov["steps"] == 2 and prov["wall_s"] == 12.5 and prov["scores"] == SCORES
    data = prov["training_data"]
    assert data["images"] == 12 and data["folder"] == "nst/data/coco/train"
    assert data["credit"] == "trained on 12 photographs from nst/data/coco/train, see nst/data/models/LICENSES.md"
    assert prov["commit"] and prov["packed"]["dtype"] == "float16" and prov["packed"]["source"] == "wave.pt"
    assert info["meta"]["train_config"]["steps"] == 2  # the training's own meta is kept
    with pytest.raises(ConfigError, match="scores"):
        pack_model(trained, tmp_path / "x.pt", {})
    with pytest.raises(ConfigError, match="style_distance"):
        pack_model(trained, tmp_path / "x.pt", {"scores": {"content_distance": 0.5}})
    assert not (tmp_path / "x.pt").exists()
    # The training's validation scores (TrainResult.scores) as they come.
    val = {"val_content_distance": 0.7, "val_style_distance": 0.3}
    _, info = load_model(pack_model(trained, tmp_path / "v.pt", {"scores": val}))
    assert info["meta"]["provenance"]["scores"] == val
    assert score(val, "style_distance") == 0.3 and score(SCORES, "style_distance") == 0.42  # what `nst models` shows


def test_resolve_by_path_name_and_alias(models, tmp_path, monkeypatch):
    assert resolve_model("wave") == models / "wave.pt"
    for alias in ("the_great_wave", "The Great Wave", "great-wave"):
        assert resolve_model(alias) == models / "wave.pt", alias
    assert resolve_model("duo") == models / "duo.pt"
    own = tmp_path / "mine.pt"
    own.write_bytes((models / "wave.pt").read_bytes())
    assert resolve_model(own) == own
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wave").write_bytes(b"")  # an existing file wins over a shipped name
    assert resolve_model("wave") == Path("wave")
    with pytest.raises(WeightsError, match=r"model 'starry_night': .* \(shipped: duo, wave; see `nst models`\)"):
        resolve_model("starry_night")
    with pytest.raises(WeightsError, match="nope.pt: model file not found"):
        resolve_model("nope.pt")


def test_nst_models_lists_and_json(models, capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"wave", "duo"}
    assert rows["wave"]["styles"] == ["wave"] and "the_great_wave" in rows["wave"]["aliases"]
    assert rows["wave"]["provenance"]["scores"]["style_distance"] == 0.42
    assert rows["duo"]["styles"] == ["starry_night", "the_scream"] and rows["duo"]["arch"]["n_styles"] == 2
    assert rows["wave"]["size"] == (models / "wave.pt").stat().st_size
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "styles", "MB", "steps", "content", "style", "trained"]
    duo = next(line for line in lines if line.startswith("duo"))
    assert "starry_night, the_scream" in duo and "0.610" in duo and "0.420" in duo and "2.0 h" in duo


def test_nst_models_lists_the_others_when_one_file_is_broken(models, capsys):
    (models / "zz_broken.pt").write_bytes(b"half a download")  # the fixture's folder is per test
    assert main(["models"]) == 2
    cap = capsys.readouterr()
    assert [line.split()[0] for line in cap.out.splitlines()[1:3]] == ["duo", "wave"]
    assert cap.err.count("\n") == 1 and "zz_broken.pt: not a model file" in cap.err, cap.err


def test_nst_models_with_none_installed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "empty"))
    assert main(["models"]) == 0
    assert "no pretrained networks are installed" in capsys.readouterr().out
    assert main(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert shipped_models() == []


def test_the_package_ships_no_stand_in_networks():
    """nst/data/models holds real networks only (packed, with provenance and scores): never a test file."""
    for m in shipped_models(Path(__file__).resolve().parents[1] / "nst" / "data" / "models"):
        assert m.provenance.get("scores") and m.provenance.get("training_data", {}).get("images", 0) > 100, m.name


def test_cli_takes_names_and_refuses_bad_models(models, tmp_path, capsys):
    content, out = str(image("chelsea.png")), tmp_path / "o.png"
    assert main(["fast", "--model", "the_great_wave", "--content", content, "--out", str(out), "--size", "32",
                 "--device", "cpu"]) == 0
    assert load_image(out).shape[-1] == 32
    capsys.readouterr()
    not_a_model = tmp_path / "notes.pt"
    not_a_model.write_text("not a network")
    bad = {
        "starry_night": "model 'starry_night': no such file and no shipped network of that name (shipped: duo, wave",
        str(not_a_model): f"{not_a_model}: not a model file",
        str(tmp_path / "gone.pt"): f"{tmp_path / 'gone.pt'}: model file not found",
    }
    for model, msg in bad.items():
        dst = tmp_path / "bad.png"
        assert main(["fast", "--model", model, "--content", content, "--out", str(dst), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err
        assert not dst.exists()
    # A blend for another number of styles: the line names the model and its styles.
    for model, blend, msg in (("wave", ["0.5", "0.5"], "2 blend weights for a model with 1 style (its styles: wave)"),
                              ("duo", ["1", "1", "1"], "3 blend weights for a model with 2 styles (its styles: "
                                                       "starry_night, the_scream)")):
        dst = tmp_path / "blend.png"
        assert main(["fast", "--model", model, "--blend", *blend, "--content", content, "--out", str(dst)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{models / (model + '.pt')}: style: {msg}" in err, err
        assert not dst.exists()


def test_video_fast_takes_a_name(models, tmp_path, capsys):
    pytest.importorskip("cv2")
    frames = Path(image("tubingen.jpg")).parents[1] / "video" / "sintel"
    out = tmp_path / "v.mp4"
    assert main(["video", "--in", str(frames), "--out", str(out), "--mode", "fast", "--model", "wave",
                 "--size", "32", "--max-frames", "2", "--device", "cpu", "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 2 and out.is_file()
    assert main(["video", "--in", str(frames), "--out", str(tmp_path / "w.mp4"), "--mode", "fast",
                 "--model", "scream", "--device", "cpu", "--quiet"]) == 2
    assert "model 'scream': no such file and no shipped network" in capsys.readouterr().err
    assert not (tmp_path / "w.mp4").exists()


GRID = """
grids:
  g:
    settings: {{size: 32, method: fast, model: {model}}}
    axes:
      content: [{content}]
      style: [{style}]
"""


def test_grid_model_option_takes_a_name(models, tmp_path):
    from nst.experiments import load_grid
    from nst.methods import METHODS

    def grid(model: str):
        p = tmp_path / "exp.yaml"
        p.write_text(textwrap.dedent(GRID.format(model=model, content=image("tubingen.jpg"),
                                                 style=image("wave.jpg"))))
        return load_grid(p, "g", METHODS)

    cells = grid("the_great_wave").cells
    assert [c.method_options["model"] for c in cells] == [str((models / "wave.pt").resolve())]
    with pytest.raises(ConfigError) as ei:
        grid("the_scream")
    msg = str(ei.value)
    assert msg.startswith("grids.g.settings.model: model 'the_scream': no such file and no shipped network")
    assert "shipped: duo, wave" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"grids.g.settings.model: model file 'nets/x.pt' not found"):
        grid("nets/x.pt")


def test_train_shipped_retrains_a_network_whose_recipe_changed(tmp_path, monkeypatch):
    """tools/train_shipped.py: a packed network trained with another style weight than NETWORKS says is
    trained again, its earlier records kept under the old value's name; an unrecorded key is no change."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import train_shipped as ts

    recipe = ts.config("wave")
    trained = {k: recipe[k] for k in ts.RECIPE_KEYS if k in recipe}
    net = _perturbed(NetConfig(width=4, n_residual=1))
    same = save_model(net, tmp_path / "same.pt", ["wave"], {"train_config": {**trained, "style_layers": None}})
    assert ts.recipe_change("wave", same) is None
    other = save_model(net, tmp_path / "other.pt", ["wave"], {"train_config": {**trained, "style_weight": 2.0}})
    assert ts.recipe_change("wave", other) == (f"style_weight 2.0 -> {recipe['style_weight']!r}", "sw2")

    monkeypatch.setattr(ts, "RUNS", tmp_path / "runs")
    ts.RUNS.mkdir()
    for ext in (".ckpt", ".pt", ".sittings.json", ".validation.json"):
        (ts.RUNS / f"wave{ext}").write_text("x")
    ts.retire("wave", "sw2")
    assert sorted(p.name for p in ts.RUNS.iterdir()) == ["wave_sw2.ckpt", "wave_sw2.pt", "wave_sw2.sittings.json",
                                                         "wave_sw2.validation.json"]
