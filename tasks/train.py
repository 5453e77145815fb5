"""Train one feed-forward network and record it in MLflow: a thin adapter over `nst.fast.train`.

`train_one` is plain Python; `tasks.prefect_tasks.train_task` is the Prefect task around it.  The
run logs per-step losses (batched `log_batch`), the fixed validation image at
every validation step (the "evolution over epochs" figure, as PNGs and one
sheet), the final model (our model file with style, config and weights, plus
an MLflow pytorch model), wall time and images/s.  The run always ends
FINISHED or FAILED (`tracking.tracked_run`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from nst.errors import NSTError
from nst.fast.train import TrainResult, TrainStep, evolution_frames, make_train_config, train
from nst.images import save_image

from . import mlflow_views, tracking
from .devices import device_pool
from .plots import loss_curve, validation_curve

FLUSH_EVERY = 50


def train_id(cfg: dict) -> str:
    """Identity of a training config (what a finished run is recognised by)."""
    c = make_train_config(**cfg).model_dump(mode="json")
    for k in ("checkpoint", "checkpoint_every", "log_every", "val_every", "out", "resume", "workers", "device"):
        c.pop(k, None)
    return hashlib.sha1(json.dumps(c, sort_keys=True).encode()).hexdigest()[:16]


def train_one(cfg: dict, exp_id: str, parent_run_id: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train `cfg` on a leased device inside a child MLflow run; returns a summary dict."""
    config = make_train_config(**cfg)
    names = "+".join(Path(s).stem for s in config.styles)
    result: dict[str, Any] = {"name": names, "run_id": None, "status": "FAILED", "error": None, "model": config.out}
    tags = {"nst.kind": "train", "cell_id": train_id(cfg), "styles": names, "norm": config.norm,
            "n_styles": str(len(config.styles)), "git_commit": tracking.git_commit()}
    try:
        with device_pool().lease() as device, tracking.tracked_run(exp_id, f"train {names}", tags, parent_run_id,
                                                                         device=device) as run_id:
            result["run_id"] = run_id
            if config.device == "auto":
                config = config.model_copy(update={"device": device})
            tracking.log_batch(run_id, params={k: v for k, v in config.model_dump(mode="json").items()},
                               tags={"device": config.device})
            with tempfile.TemporaryDirectory(prefix="nst-train-") as tmp:
                result.update(_train_and_log(config, run_id, Path(tmp), progress))
            result["status"] = "FINISHED"
    except NSTError as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


def _train_and_log(config, run_id: str, tmp: Path, progress: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = train_logged(config, run_id, tmp, progress)
    wall = time.perf_counter() - t0
    tracking.log_batch(run_id, metrics={"wall_s": wall})
    return {"train_s": res.timings["train_s"], "images_per_s": res.timings["images_per_s"], "wall_s": wall}


def evolution_image(frames: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """`evolution.png`: the validation image at each validation step, top to bottom."""
    return torch.cat([f for _, f in frames], dim=-2)


def train_logged(config, run_id: str, tmp: Path, progress: bool = True, *, on_step=None,
                 mlflow_model: bool = True) -> TrainResult:
    """Train with `config`, recording into run `run_id` as it goes: per-step losses and images/s, the
    validation image at every validation step, then the timings and final losses, `evolution.png`,
    `loss_curve.png`, the model (`model/`) and, with `mlflow_model`, an MLflow pytorch model.

    `on_step` sees every `TrainStep` too (grid cells use it for progress and Ctrl-C).  Used by
    `train_one` and by the grid's feed-forward and video cells (`tasks.media`).
    """
    from tqdm import tqdm

    client = tracking.client()
    pending: list[tuple[int, dict[str, float]]] = []
    frames: list[tuple[int, torch.Tensor]] = []
    bar = tqdm(total=config.steps, desc=f"train {Path(config.out or 'model').stem}", unit="step",
               disable=not progress, dynamic_ncols=True)

    def _on_step(info: TrainStep) -> None:
        bar.update(info.step - bar.n)
        pending.append((info.step, {**{f"loss_{k}": v for k, v in info.losses.items()},
                                    "images_per_s": info.images_per_s, **(info.scores or {})}))
        if info.val_image is not None:
            frames.append((info.step, info.val_image))
            path = save_image(info.val_image, tmp / "evolution" / f"step_{info.step:06d}.png")
            client.log_artifact(run_id, str(path), "evolution")
            mlflow_views.log_step_images(client, run_id, mlflow_views.VALIDATION_KEY, [(info.step, info.val_image)])
        if len(pending) >= FLUSH_EVERY or info.step == info.total_steps:
            tracking.log_batch(run_id, step_metrics=list(pending))
            pending.clear()
        if on_step is not None:
            on_step(info)

    try:
        res = train(config, callback=_on_step)
    finally:
        bar.close()
    if pending:
        tracking.log_batch(run_id, step_metrics=pending)
    _log_outcome(client, run_id, config, res, frames, tmp)
    if mlflow_model:
        _log_mlflow_model(res.net, run_id, tmp / "mlflow_model")
    return res


def _log_outcome(client, run_id: str, config, res: TrainResult, frames: list[tuple[int, torch.Tensor]],
                 tmp: Path) -> None:
    """After training: the timings and final losses, `evolution.png`, `loss_curve.png` and `model/`."""
    metrics = {k: float(v) for k, v in res.timings.items()}
    if res.history:
        metrics.update({f"final_{k}": v for k, v in res.history[-1].items()
                        if k not in ("step", "time", "style_index")})
    tracking.log_batch(run_id, metrics=metrics, tags={"weights_source": res.info["weights_source"],
                                                      "precision": res.info["precision"]})
    art = tmp / "artifacts"
    frames = evolution_frames(res.evolution) or frames  # every sitting's, when the training resumed
    if frames:
        save_image(evolution_image(frames), art / "evolution.png")
    if res.history:
        loss_curve(res.history, art / "loss_curve.png", f"train {Path(config.out or 'model').stem}")
        validation_curve(res.history, art / "validation_curve.png",
                         f"train {Path(config.out or 'model').stem}: validation photos")
    model_dir = art / "model"
    model_dir.mkdir(parents=True)
    if res.model_path is not None:
        shutil.copy2(res.model_path, model_dir / "model.pt")
    for s in config.styles:
        shutil.copy2(s, model_dir / f"style_{Path(s).name}")
    (model_dir / "config.json").write_text(json.dumps({"train": config.model_dump(mode="json"), "info": res.info,
                                                       "timings": res.timings}, indent=1, default=str))
    client.log_artifacts(run_id, str(art))


def _log_mlflow_model(net, run_id: str, path: Path) -> None:
    """The network as an MLflow pytorch model (loadable with `mlflow.pytorch.load_model`)."""
    import mlflow.pytorch

    mlflow.pytorch.save_model(net.cpu().eval(), str(path), serialization_format="pickle",
                              pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                              code_paths=[str(Path(__file__).resolve().parents[1] / "nst")])
    tracking.client().log_artifacts(run_id, str(path), "mlflow_model")

