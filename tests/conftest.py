"""Shared fixtures: tiny real images (bundled), a small evaluator, deterministic torch."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

import pytest
import torch

from nst.data import image
from nst.images import load_image

torch.manual_seed(0)

#: The device of the tests that take one (the engine's and the evaluators'): `NST_TEST_DEVICE=cuda` runs them on a
#: GPU (benchmarks/gpu_check.py); unset, everything stays on the CPU as before.
TEST_DEVICE = os.environ.get("NST_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def content48() -> torch.Tensor:
    return load_image(image("tubingen.jpg"), size=48)


@pytest.fixture(scope="session")
def starry48() -> torch.Tensor:
    return load_image(image("starry_night.jpg"), size=48)


@pytest.fixture(scope="session")
def scream48() -> torch.Tensor:
    return load_image(image("the_scream.jpg"), size=48)


@pytest.fixture(scope="session")
def small_evaluator():
    from nst.evaluate import Evaluator

    return Evaluator(TEST_DEVICE, resolution=96)


@pytest.fixture(scope="module")
def prefect_server():
    """A temporary Prefect server (the test harness) per test module, for tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def isolated_tracking(mp: pytest.MonkeyPatch, root) -> None:
    """Point nst's home and MLflow store at `root/home` (a temporary sqlite store) for a test module."""
    mp.setenv("NST_HOME", str(root / "home"))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'home' / 'mlflow.db'}")
    mp.delenv("NST_ARTIFACT_ROOT", raising=False)


def train_tiny_model(out, style: str):
    """A real 2-step `nst train` model at width 8 on the 12 bundled COCO photos (tests of model files)."""
    from pathlib import Path

    from nst.fast.train import train

    images = Path(image("tubingen.jpg")).parents[1] / "coco" / "train"
    train(dict(images=str(images), styles=[str(image(style))], size=32, batch_size=2, steps=2, width=8,
               n_residual=1, device="cpu", precision="fp32", content_layers=["relu2_2"],
               style_layers=["relu1_1", "relu2_1", "relu3_1"], val_size=32, out=str(out)))
    return out
