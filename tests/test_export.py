"""`nst export --onnx`: onnxruntime runs the exported network within 1/255 of PyTorch (fp32), at any size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import train_tiny_model
from nst.cli import main
from nst.data import image
from nst.fast.infer import Stylizer
from nst.fast.models import MODELS_ENV, pack_model
from nst.fast.network import NetConfig, TransformNet, save_model
from nst.images import load_image

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")



@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """A real photo at an odd size, 67x93 (neither side a multiple of 4): the graph pads and crops back."""
    x = load_image(image("tubingen.jpg"), size=124)[..., :67, :93]
    assert x.shape[-2:] == (67, 93)
    return x


@pytest.fixture(scope="module")
def one_style(tmp_path_factory) -> Path:
    """A real 1-style training (2 steps of `nst.fast.train.train`)."""
    return train_tiny_model(tmp_path_factory.mktemp("export") / "starry_night.pt", "starry_night.jpg")


@pytest.fixture(scope="module")
def three_styles(tmp_path_factory) -> Path:
    """A 3-style network (conditional instance norm) whose styles differ, as after training."""
    torch.manual_seed(1)
    net = TransformNet(NetConfig(n_styles=3, width=8, n_residual=2)).eval()
    with torch.no_grad():
        for m in net.modules():
            if hasattr(m, "n_styles"):
                m.weight.normal_(1.0, 0.4)
                m.bias.normal_(0.0, 0.3)
    return save_model(net, tmp_path_factory.mktemp("export3") / "trio.pt", ["starry_night", "the_scream", "wave"])


def _run(path: Path, x: torch.Tensor, weights=None) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"image": x.numpy()}
    if weights is not None:
        feeds["style_weights"] = np.asarray(weights, dtype=np.float32)
    return sess.run(["stylized"], feeds)[0]


def test_one_style_network_matches_pytorch(one_style, photo, tmp_path, capsys):
    out = tmp_path / "net.onnx"
    assert main(["export", "--onnx", str(one_style), str(out)]) == 0
    assert f"saved {out}" in capsys.readouterr().out
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["image"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["nst.styles"]) == ["starry_night"]
    ref = Stylizer(one_style, device="cpu")(photo).numpy()
    got = _run(out, photo)
    assert got.shape == (1, 3, 67, 93)
    assert np.abs(got - ref).max() < 1 / 255, np.abs(got - ref).max()
    batch = torch.cat([photo, photo.flip(-1)])  # dynamic batch too
    assert np.abs(_run(out, batch)[1] - Stylizer(one_style, device="cpu")(photo.flip(-1)).numpy()[0]).max() < 1 / 255


def test_three_style_network_blends_like_pytorch(three_styles, photo, tmp_path):
    out = tmp_path / "trio.onnx"
    assert main(["export", "--onnx", str(three_styles), str(out)]) == 0
    assert [i.name for i in onnx.load(str(out)).graph.input] == ["image", "style_weights"]
    outs = []
    for weights in ([0.2, 0.5, 0.3], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0]):
        ref = Stylizer(three_styles, style=weights, device="cpu")(photo).numpy()
        got = _run(out, photo, weights)
        assert got.shape == (1, 3, 67, 93)
        assert np.abs(got - ref).max() < 1 / 255, (weights, np.abs(got - ref).max())
        outs.append(got)
    assert np.abs(outs[0] - outs[1]).mean() > 1e-2  # the blends differ: the style input is used


def test_export_by_name_and_bad_input(one_style, tmp_path, monkeypatch, capsys):
    root = tmp_path / "models"
    pack_model(one_style, root / "starry_night.pt", {"scores": {"content_distance": 0.5, "style_distance": 0.5}})
    monkeypatch.setenv(MODELS_ENV, str(root))
    out = tmp_path / "starry.onnx"
    assert main(["export", "--onnx", "the_starry_night", str(out)]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["nst.provenance"])["scores"]["style_distance"] == 0.5
    capsys.readouterr()
    for model, dst, msg in (("the_scream", "x.onnx", "model 'the_scream': no such file and no shipped network"),
                            (str(one_style), "x.pt", "x.pt: the ONNX file's name must end in .onnx")):
        assert main(["export", "--onnx", model, str(tmp_path / dst)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err
        assert not (tmp_path / dst).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
