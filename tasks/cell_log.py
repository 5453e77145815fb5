"""What one cell records while it runs and after: progress, memory, intermediate images, then its result.

`CellLog` is made when the cell's run is open (`tasks.cell`); the method calls `on_step` after every
step (Ctrl-C: `tasks.cancel`), and `log` records the `nst.methods.MethodResult` into the run:
metrics (wall time, timings, memory, the method's own metrics, evaluator scores and the method's
`measure`), per-step losses, ``output.png`` and the method's images, intermediate images,
``loss_curve.png``, ``cell.json``, and the same images as MLflow step images.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import psutil
import torch

from nst import methods
from nst.evaluate import Evaluator, RobustEvaluator, shared_evaluator
from nst.experiments import Cell
from nst.images import load_image, save_image
from nst.methods import Method, MethodInputs, MethodResult
from nst.optimize import StepInfo

from . import mlflow_views, tracking
from .cancel import CANCEL, CellCancelled
from .inputs import CellInputs
from .plots import loss_curve


def method_metrics(cell: Cell, method: Method, res: MethodResult, inputs: MethodInputs,
                   evaluator: Evaluator) -> dict[str, float]:
    """The method's evaluator-based measurements (`Method.measure`: region leakage, photorealism energy).

    A grid that varies a photoreal setting measures the energy of its unregularised cells too: they
    are the baseline the regularised ones are compared with."""
    if method.measure is None:
        return {}
    if method.measure is methods.photoreal_metrics and any(k.startswith("photoreal") for k in cell.labels):
        return methods.photoreal_metrics(res, inputs, evaluator, always=True)
    return method.measure(res, inputs, evaluator)


def evaluator_scores(cell: Cell, image: torch.Tensor, inputs: CellInputs, name: str, device: str,
                     resolution: int) -> tuple[dict[str, float], dict[str, str]]:
    """One evaluator's scores of a cell's output as metrics, and the tag ``<prefix>evaluator`` = its id, so that
    every logged score names the instrument that measured it (a cell's run and `tasks.rescore` alike).

    The fixed evaluator scores against the cell's own style images (as it always has, so its scores stay
    comparable); the robust one reads them again at its `style_size`, so that none of its three scales is an
    upsampled copy of a style image read at the cell's (smaller) size."""
    ev = shared_evaluator(device, resolution, name)
    styles = inputs.styles
    if isinstance(ev, RobustEvaluator) and len(cell.styles) == len(styles):
        styles = [load_image(p, size=ev.style_size) for p in cell.styles]
    scores = ev.score(image, inputs.content, styles, cell.config.style_weights)
    return scores.as_metrics(ev.prefix), {f"{ev.prefix}evaluator": ev.id}


class CellLog:
    """One cell's inputs, progress bar, intermediate images and memory watch, then everything it logs."""

    def __init__(self, cell: Cell, device: str, run_id: str, progress: bool, inputs: CellInputs) -> None:
        from tqdm import tqdm

        self.cell, self.device, self.run_id = cell, device, run_id
        self.t0 = time.perf_counter()
        self.inputs = inputs
        self.inputs.run_id = run_id
        self.total = self.inputs.steps if self.inputs.steps is not None else cell.config.steps
        self.n_images = int(cell.options.get("intermediate_images", 3))
        self.image_every = max(1, self.total // (self.n_images + 1)) if self.n_images and self.total > 1 else 0
        self.proc = psutil.Process()
        self.peak_rss = self.proc.memory_info().rss
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        self.frames: list[tuple[int, torch.Tensor]] = []
        self.tags: dict[str, str] = {}  # the evaluators' ids, one tag per metric prefix (`evaluator_scores`)
        self.bar = tqdm(total=self.total, desc=f"cell {cell.index}", unit="step", leave=False, disable=not progress,
                        dynamic_ncols=True)
        self.sysmon = mlflow_views.start_system_metrics(run_id, tracking.settings.tracking_uri())  # system/* metrics

    def on_step(self, info: StepInfo) -> None:
        if CANCEL.is_set():
            raise CellCancelled(f"grid interrupted at step {info.step}")
        self.bar.update(info.step - self.bar.n)
        if info.step % 5 == 0 or info.step == self.total:
            self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
        if info.image is not None and info.step < self.total and len(self.frames) < self.n_images:
            self.frames.append((info.step, info.image))

    def close(self) -> None:
        self.bar.close()
        mlflow_views.stop_system_metrics(self.sysmon)

    def log(self, res: MethodResult, wall: float, mi: MethodInputs) -> None:
        """Record the cell's result (`mi`: what the method ran on, for its `measure`)."""
        step_metrics = [(int(h["step"]), {f"loss_{k}": v for k, v in h.items() if k not in ("step", "stage", "time")})
                        for h in res.history]
        metrics = self.metrics(res, wall, mi)
        tracking.log_batch(self.run_id, metrics=metrics, step_metrics=step_metrics,
                           tags={"weights_source": res.info.get("weights_source", "?"),
                                 "precision": res.info.get("precision", "?"), **self.tags})
        self.log_files(res)
        self.log_step_images(res)

    def metrics(self, res: MethodResult, wall: float, mi: MethodInputs) -> dict[str, float]:
        """Wall time, the method's timings and metrics, memory, final losses; with ``evaluate`` (the
        default) the evaluator's scores and the method's own measurements."""
        cell, device = self.cell, self.device
        metrics: dict[str, float] = {
            "wall_s": wall,
            **{k: float(v) for k, v in res.timings.items()},
            "peak_rss_mb": max(self.peak_rss, self.proc.memory_info().rss) / 2**20,
            "target_cache_hits": float(res.info.get("cache_hits", 0)),  # process-wide: shared targets reused
            "batch": float(res.info.get("batch", 1)),
            **res.metrics,
        }
        if device.startswith("cuda"):
            metrics["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        if res.history:
            metrics.update({f"final_{k}": v for k, v in res.history[-1].items() if k not in ("step", "stage", "time")})
        if cell.options.get("evaluate", True):
            resolution = int(cell.options.get("eval_resolution", 512))
            for name in cell.options.get("evaluators", ["fixed"]):
                scores, tags = evaluator_scores(cell, res.image, self.inputs, name, device, resolution)
                metrics.update(scores)
                self.tags.update(tags)
            ev = shared_evaluator(device, resolution)
            metrics.update(method_metrics(cell, methods.get(cell.method), res, mi, ev))
        return metrics

    def log_files(self, res: MethodResult) -> None:
        """output.png, the method's images, intermediate images, loss_curve.png and cell.json as artifacts."""
        cell = self.cell
        with tempfile.TemporaryDirectory(prefix="nst-cell-") as tmp:
            out = Path(tmp)
            save_image(res.image, out / "output.png")
            for name, img in res.images.items():
                save_image(img, out / name)
            for step, img in self.frames:
                save_image(img, out / "intermediate" / f"step_{step:05d}.png")
            if res.history:
                loss_curve(res.history, out / "loss_curve.png", cell.name)
            (out / "cell.json").write_text(json.dumps({**cell.to_dict(), "device": self.device, "info": res.info},
                                                      indent=1, default=str))
            tracking.log_artifacts(self.run_id, out)  # whole files only, even if killed meanwhile

    def log_step_images(self, res: MethodResult) -> None:
        """The same images as MLflow step images: the run page's slider, the compare view side by side."""
        client, run_id = tracking.client(), self.run_id
        mlflow_views.log_step_images(client, run_id, mlflow_views.OUTPUT_KEY, [(0, res.image)])
        mlflow_views.log_step_images(client, run_id, mlflow_views.EVOLUTION_KEY,
                                     [(0, self.inputs.content), *self.frames, (self.total, res.image)])
        for name, img in res.images.items():
            mlflow_views.log_step_images(client, run_id, Path(name).stem, [(0, img)])

