"""Stylise, evaluate and log one grid cell: the unit of GPU work, a thin adapter over `nst`.

`run_cell` is plain Python (callable without Prefect); `stylize_cell` is the
Prefect task around it.  `run_cells` / `stylize_cells` do the same for a unit of
cells of one `batch_group`, optimised together by `nst.optimize.stylize_batch`
(each still its own run).  A cell always ends as a child MLflow run that is
FINISHED or FAILED (with the error as a tag): bad inputs and diverged
optimisations fail the cell and the grid goes on; other errors (CUDA out of
memory, a lost tracking server) are raised so Prefect retries the task.

Methods are looked up by name in `METHODS`, so later methods (guided Gram,
feed-forward, video) plug in without touching the flow.
"""

from __future__ import annotations

import json
import queue
import tempfile
import threading
import time
import functools
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import torch
from prefect import task

from nst.errors import NSTError
from nst.evaluate import Evaluator
from nst.experiments import Cell
from nst.options import describe as describe_options
from nst.images import load_image, save_image
from nst.optimize import StepInfo, StyleJob, StyleResult, batch_key, run_steps, style_size, stylize, stylize_batch
from nst.regions import METHODS as REGION_METHODS

from . import mlflow_views, tracking


# --------------------------------------------------------------------------- methods


@dataclass
class CellInputs:
    content: torch.Tensor  # the image the evaluator scores the output against (video: the last frame)
    styles: list[torch.Tensor]
    frames: list[torch.Tensor] | None = None  # video methods: the clip's frames at the cell's size
    steps: int | None = None  # progress units of the cell (default: optimisation steps)
    run_id: str | None = None  # the cell's MLflow run, for methods that log while they run (training)


MethodFn = Callable[[Cell, CellInputs, str, Callable[[StepInfo], None], int], StyleResult]
InputsFn = Callable[[Cell], CellInputs]
METHODS: dict[str, MethodFn] = {}
#: How a method's inputs are read, when not as the content image and the style images (`load_inputs`).
INPUTS: dict[str, InputsFn] = {}


def register_method(name: str, inputs: InputsFn | None = None) -> Callable[[MethodFn], MethodFn]:
    def deco(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        if inputs is not None:
            INPUTS[name] = inputs
        return fn

    return deco


def load_inputs(cell: Cell) -> CellInputs:
    """The content image at the cell's size and the styles scaled to it; steps = optimisation steps."""
    cfg = cell.config
    content = load_image(cell.content, size=cfg.size)
    styles = [load_image(s, size=style_size(content, cfg.style_scale)) for s in cell.styles]
    # one optimisation per style: sequential mixes, and the region methods that run once per style
    per_style = cfg.multi_style == "sequential" or cell.method in ("per-region-composite", "portion")
    steps = run_steps(cfg, tuple(content.shape[-2:]))  # every scale of a coarse-to-fine run
    return CellInputs(content, styles, steps=steps * (len(styles) if per_style else 1))


@register_method("gatys")
def _gatys(cell: Cell, inputs: CellInputs, device: str, callback, image_every: int) -> StyleResult:
    """Optimisation-based transfer; targets come from nst's process-wide cache (shared by cells)."""
    config = cell.config.replace(device=device)
    res = stylize(inputs.content, inputs.styles, config, callback=callback, image_every=image_every)
    return _gatys_extras(cell, inputs, config, res)


def _gatys_extras(cell: Cell, inputs: CellInputs, config, res: StyleResult) -> StyleResult:
    if config.photoreal_weight or any(k.startswith("photoreal") for k in cell.labels):
        from nst.photoreal import photoreal_energy  # the regulariser's value of the output (weight 0 cells too)

        res.info["cell_metrics"] = lambda: {
            "photoreal_energy": photoreal_energy(res.image, inputs.content, config.photoreal_epsilon)}
    return res


def batch_group(cell: Cell) -> tuple | None:
    """Cells with equal groups can be optimised as one batch (`nst.optimize.stylize_batch`); None: alone."""
    if cell.method != "gatys":
        return None
    hw = _content_hw(str(cell.content), cell.config.size)
    key = batch_key(cell.config, hw, len(cell.styles))
    return None if key is None else ("gatys", key)


@functools.lru_cache(maxsize=256)
def _content_hw(path: str, size: int) -> tuple[int, int]:
    return tuple(load_image(path, size=size).shape[-2:])


def _region_method(method: str) -> MethodFn:
    """A localized-transfer method of `nst.regions` as a grid method (the region map is built per cell).

    Besides the image it returns, in ``info``, the leakage metrics (``cell_metrics``: a function that
    `run_cell` calls after the wall time is taken, only when the grid evaluates, like the evaluator's
    scores) and the colourised region map (``cell_images``), which `run_cell` logs.
    """

    def run(cell: Cell, inputs: CellInputs, device: str, callback, image_every: int) -> StyleResult:
        from nst.regions import leakage, stylize_regions
        from nst.segment import RegionError, colorize, region_map

        if not cell.regions:
            raise NSTError(f"method '{method}' needs regions and region_styles in the cell")
        r = cell.regions
        config = cell.config.replace(device=device)
        rm = region_map(r["spec"], inputs.content, content_path=cell.content, coco=r.get("coco"), device=device)
        res = stylize_regions(inputs.content, rm, r["styles"], method, config, callback=callback,
                              image_every=image_every)

        def leak_metrics() -> dict[str, float]:
            try:
                leak = leakage(res.image, res.region_map, r["styles"],
                               evaluator(device, int(cell.options.get("eval_resolution", 512))))
            except RegionError:  # a single style: nothing can leak
                return {}
            metrics = {"leak_own": leak["own"], "leak_other": leak["other"], "leak_ratio": leak["ratio"]}
            for name, fig in leak["regions"].items():
                metrics.update({f"leak_own.{name}": fig["own"], f"leak_other.{name}": fig["other"]})
            return metrics

        res.info["cell_metrics"] = leak_metrics
        res.info["cell_images"] = {"region_map.png": colorize(res.region_map)}
        return res

    run.__name__ = run.__qualname__ = f"_region_{method.replace('-', '_')}"
    return run


for _m in REGION_METHODS:
    register_method(_m)(_region_method(_m))


class CellCancelled(Exception):
    """The grid was interrupted (Ctrl-C): running cells stop at their next step and close their runs."""


#: Set by the grid flow on Ctrl-C; checked by every cell after each step.
CANCEL = threading.Event()


# --------------------------------------------------------------------------- devices


class DevicePool:
    """Explicit device leases: at most one running cell per device (or per CPU worker slot)."""

    def __init__(self, devices: list[str]) -> None:
        self.devices = list(devices)
        self._q: "queue.Queue[str]" = queue.Queue()
        for d in self.devices:
            self._q.put(d)

    @contextmanager
    def lease(self) -> Iterator[str]:
        dev = self._q.get()
        try:
            yield dev
        finally:
            self._q.put(dev)


def default_devices(workers: int | None = None) -> list[str]:
    """One slot per GPU (cuda:0..n-1); on CPU `workers` slots (default 1: torch already uses every core)."""
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return [f"cuda:{i % n}" for i in range(workers or n)]
    return ["cpu"] * (workers or 1)


_POOL_LOCK = threading.Lock()
_POOL: DevicePool | None = None


def configure_devices(devices: list[str]) -> DevicePool:
    global _POOL
    with _POOL_LOCK:
        _POOL = DevicePool(devices)
        return _POOL


def device_pool() -> DevicePool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = DevicePool(default_devices())
        return _POOL


# --------------------------------------------------------------------------- evaluation

_EVALUATORS: dict[tuple[str, int], Evaluator] = {}
_EVAL_LOCK = threading.Lock()


def evaluator(device: str, resolution: int) -> Evaluator:
    with _EVAL_LOCK:
        key = (device, resolution)
        if key not in _EVALUATORS:
            _EVALUATORS[key] = Evaluator(device, resolution)
        return _EVALUATORS[key]


# --------------------------------------------------------------------------- one cell


def cell_tags(cell: Cell) -> dict[str, str]:
    return {
        "grid": cell.grid,
        "cell_id": cell.cell_id,
        "cell_index": str(cell.index),
        "method": cell.method,
        "backbone": cell.config.backbone,
        "git_commit": tracking.git_commit(),
        "nst.axes": json.dumps(list(cell.labels)),
        **{f"axis.{k}": v for k, v in cell.labels.items()},
    }


#: Engine settings logged as MLflow params by every cell, whether or not its grid varies them.
HEADLINE_PARAMS = ("size", "steps")


def cell_params(cell: Cell) -> dict[str, Any]:
    """A cell's MLflow params: its content and styles, size and steps, the settings its grid varies
    (`Cell.varied`), its regions and method options.

    Not every setting: MLflow 3.17's image charts print all of a run's params above its image, so 35
    of them pushed a second cell's image out of sight.  The whole configuration is the run's
    ``cell.json`` artifact."""
    cfg = cell.config.model_dump(mode="json", exclude={"device"})
    keep = {*HEADLINE_PARAMS, *cell.varied}
    params: dict[str, Any] = {"content": cell.content.name, "styles": ",".join(s.name for s in cell.styles)}
    if "method" in cell.varied:
        params["method"] = cell.method
    params.update({k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in cfg.items() if k in keep})
    if cell.regions:
        r = cell.regions
        params.update(regions=Path(r["spec"]).name if Path(r["spec"]).is_absolute() else r["spec"],
                      region_styles=",".join(f"{k}={'keep' if v == 'keep' else Path(v).name}"
                                             for k, v in r["styles"].items()))
    if cell.method_options:
        params.update(describe_options(cell.method_options))
    return params


def run_cell(cell: Cell | dict, exp_id: str, parent_run_id: str | None = None, progress: bool = True,
             inputs: CellInputs | None = None) -> dict[str, Any]:
    """Run one cell as a child MLflow run; returns {cell_id, run_id, status, error}.

    `inputs`: the cell's inputs when the caller has read them already (`run_cells`)."""
    cell = Cell.from_dict(cell) if isinstance(cell, dict) else cell
    if cell.method not in METHODS:
        raise NSTError(f"unknown method '{cell.method}' (known: {', '.join(METHODS)})")
    result: dict[str, Any] = {"cell_id": cell.cell_id, "run_id": None, "status": "FAILED", "error": None}
    if CANCEL.is_set():
        return {**result, "status": "CANCELLED", "error": "grid interrupted before this cell started"}
    try:
        with device_pool().lease() as device, _cell_run(cell, exp_id, parent_run_id, device) as run_id:
            result["run_id"] = run_id
            log = _CellLog(cell, device, run_id, progress, inputs)
            try:
                res = METHODS[cell.method](cell, log.inputs, device, log.on_step, log.image_every)
            finally:
                log.close()
            log.log(res, time.perf_counter() - log.t0)
            result["status"] = "FINISHED"
    except NSTError as exc:  # bad input, missing weights, divergence: this cell fails, the grid goes on
        result["error"] = f"{type(exc).__name__}: {exc}"
    except tracking.ClaimLost as exc:  # another grid run holds or finished it: not run twice
        return claimed(cell, exc)
    return result


def claimed(cell: Cell, exc: "tracking.ClaimLost") -> dict[str, Any]:
    """The result of a cell another process holds (CLAIMED) or finished meanwhile (FINISHED, its run)."""
    status = "FINISHED" if exc.finished else "CLAIMED"
    return {"cell_id": cell.cell_id, "run_id": exc.holder, "status": status, "error": None if exc.finished else str(exc),
            "elsewhere": True}


def run_cells(cells: list[Cell | dict], exp_id: str, parent_run_id: str | None = None, progress: bool = True,
              max_batch_pixels: int | None = None) -> list[dict[str, Any]]:
    """Run cells of one `batch_group` as one batched optimisation, each its own child MLflow run.

    Each cell's result is the one it gets alone; its logged times are its share of the batch's
    (``batch`` metric: how many cells ran together).  A cell whose inputs cannot be read runs (and
    fails) alone; if the batch itself fails (e.g. one cell diverges), its runs end FAILED with the
    reason and every cell is rerun alone, so each gets its own outcome.
    """
    cells = [Cell.from_dict(c) if isinstance(c, dict) else c for c in cells]
    if len(cells) == 1:
        return [run_cell(cells[0], exp_id, parent_run_id, progress)]
    if CANCEL.is_set():
        return [{"cell_id": c.cell_id, "run_id": None, "status": "CANCELLED",
                 "error": "grid interrupted before this cell started"} for c in cells]
    loaded: list[tuple[Cell, CellInputs]] = []
    alone: list[Cell] = []
    for c in cells:  # a cell whose inputs cannot be read fails on its own, outside the batch
        try:
            loaded.append((c, INPUTS.get(c.method, load_inputs)(c)))
        except NSTError:
            alone.append(c)
    out = {c.cell_id: run_cell(c, exp_id, parent_run_id, progress) for c in alone}
    if len(loaded) == 1:
        out[loaded[0][0].cell_id] = run_cell(loaded[0][0], exp_id, parent_run_id, progress, loaded[0][1])
    elif loaded:
        out.update(_run_batch(loaded, exp_id, parent_run_id, progress, max_batch_pixels))
    return [out[c.cell_id] for c in cells]


def _run_batch(loaded: list[tuple[Cell, CellInputs]], exp_id: str, parent_run_id: str | None, progress: bool,
               max_batch_pixels: int | None) -> dict[str, dict[str, Any]]:
    cells = [c for c, _ in loaded]
    try:
        with device_pool().lease() as device, ExitStack() as runs:
            logs, lost = [], {}
            for c, inputs in loaded:  # each cell claimed first; one held elsewhere leaves the batch
                try:
                    logs.append(_CellLog(c, device, runs.enter_context(_cell_run(c, exp_id, parent_run_id, device)),
                                         progress, inputs))
                except tracking.ClaimLost as exc:
                    lost[c.cell_id] = claimed(c, exc)
            cells = [lg.cell for lg in logs]
            if not logs:
                return lost
            configs = [c.config.replace(device=device) for c in cells]
            jobs = [StyleJob(lg.inputs.content, lg.inputs.styles, cfg, lg.on_step) for lg, cfg in zip(logs, configs)]
            t0 = time.perf_counter()
            try:
                results = stylize_batch(jobs, image_every=logs[0].image_every,
                                        max_batch_pixels=max_batch_pixels or default_batch_pixels(device))
            finally:
                for lg in logs:
                    lg.close()
            wall = (time.perf_counter() - t0) / len(cells)
            for lg, cfg, res in zip(logs, configs, results):
                lg.log(_gatys_extras(lg.cell, lg.inputs, cfg, res), wall)
    except NSTError as exc:  # e.g. one cell diverged: these runs end FAILED with the reason, each cell reruns alone
        print(f"batch of {len(cells)} cells failed ({type(exc).__name__}: {exc}); running them one by one")
        return {c.cell_id: run_cell(c, exp_id, parent_run_id, progress, inputs) for c, inputs in loaded}
    return {**lost, **{c.cell_id: {"cell_id": c.cell_id, "run_id": lg.run_id, "status": "FINISHED", "error": None}
                       for c, lg in zip(cells, logs)}}


def default_batch_pixels(device: str) -> int | None:
    """Pixels per batched forward: on a CPU batching pays only for small images (measured: 2.2x per
    image at 64x48, 1.2x at 128x96, none at 256x192), so about 2^16; on a GPU, no limit."""
    return None if device.startswith("cuda") else 1 << 16


@contextmanager
def _cell_run(cell: Cell, exp_id: str, parent_run_id: str | None, device: str) -> Iterator[str]:
    with tracking.tracked_run(exp_id, f"{cell.index:03d} {cell.name}"[:250], {**cell_tags(cell), "device": device},
                              parent_run_id, device=device, claim=cell.cell_id) as run_id:
        tracking.log_batch(run_id, params=cell_params(cell))
        yield run_id


class _CellLog:
    """One cell's inputs, progress bar, intermediate images and memory watch, then everything it logs."""

    def __init__(self, cell: Cell, device: str, run_id: str, progress: bool, inputs: CellInputs | None = None) -> None:
        from tqdm import tqdm

        self.cell, self.device, self.run_id = cell, device, run_id
        self.t0 = time.perf_counter()
        self.inputs = inputs if inputs is not None else INPUTS.get(cell.method, load_inputs)(cell)
        self.inputs.run_id = run_id
        self.total = self.inputs.steps if self.inputs.steps is not None else cell.config.steps
        self.n_images = int(cell.options.get("intermediate_images", 3))
        self.image_every = max(1, self.total // (self.n_images + 1)) if self.n_images and self.total > 1 else 0
        self.proc = psutil.Process()
        self.peak_rss = self.proc.memory_info().rss
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        self.frames: list[tuple[int, torch.Tensor]] = []
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

    def log(self, res: StyleResult, wall: float) -> None:
        cell, device, run_id, cfg = self.cell, self.device, self.run_id, self.cell.config
        content, styles = self.inputs.content, self.inputs.styles
        extra_metrics: Callable[[], dict[str, float]] | None = res.info.pop("cell_metrics", None)
        extra_images: dict[str, torch.Tensor] = res.info.pop("cell_images", {})
        peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
        metrics: dict[str, float] = {
            "wall_s": wall,
            **{k: float(v) for k, v in res.timings.items()},
            "peak_rss_mb": peak_rss / 2**20,
            "target_cache_hits": float(res.info.get("cache_hits", 0)),  # process-wide: shared targets reused
            "batch": float(res.info.get("batch", 1)),
        }
        if device.startswith("cuda"):
            metrics["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        if res.history:
            metrics.update({f"final_{k}": v for k, v in res.history[-1].items() if k not in ("step", "stage", "time")})
        if cell.options.get("evaluate", True):
            ev = evaluator(device, int(cell.options.get("eval_resolution", 512)))
            metrics.update(ev.score(res.image, content, styles, cfg.style_weights).as_metrics())
            if extra_metrics is not None:  # the method's own measurements (region leakage)
                metrics.update(extra_metrics())
        step_metrics = [
            (int(h["step"]), {f"loss_{k}": v for k, v in h.items() if k not in ("step", "stage", "time")})
            for h in res.history
        ]
        tracking.log_batch(
            run_id,
            metrics=metrics,
            step_metrics=step_metrics,
            tags={"weights_source": res.info.get("weights_source", "?"), "precision": res.info.get("precision", "?")},
        )
        with tempfile.TemporaryDirectory(prefix="nst-cell-") as tmp:
            out = Path(tmp)
            save_image(res.image, out / "output.png")
            for name, img in extra_images.items():
                save_image(img, out / name)
            for step, img in self.frames:
                save_image(img, out / "intermediate" / f"step_{step:05d}.png")
            if res.history:
                _loss_curve(res.history, out / "loss_curve.png", cell.name)
            (out / "cell.json").write_text(json.dumps({**cell.to_dict(), "device": device, "info": res.info},
                                                      indent=1, default=str))
            tracking.log_artifacts(run_id, out)  # whole files only, even if killed meanwhile
        # the same images as MLflow step images: the run page's slider, compare view side by side
        client = tracking.client()
        mlflow_views.log_step_images(client, run_id, mlflow_views.OUTPUT_KEY, [(0, res.image)])
        mlflow_views.log_step_images(client, run_id, mlflow_views.EVOLUTION_KEY,
                                     [(0, content), *self.frames, (self.total, res.image)])
        for name, img in extra_images.items():
            mlflow_views.log_step_images(client, run_id, Path(name).stem, [(0, img)])


def _inputs(content: torch.Tensor, styles: list[torch.Tensor]) -> CellInputs:
    return CellInputs(content, styles)


def _loss_curve(history: list[dict[str, float]], path: Path, title: str) -> None:
    """Loss terms against step on a log scale (the Figure API: no pyplot state, safe in threads)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6), dpi=100)
    ax = fig.add_subplot()
    steps = [h["step"] for h in history]
    for k in [k for k in history[0] if k not in ("step", "stage", "time")]:
        ys = [h[k] for h in history]
        if any(y > 0 for y in ys):
            ax.plot(steps, ys, label=k)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (weighted)")
    ax.set_title(title[:80], fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def _transient(task_, task_run, state) -> bool:
    """Retry only errors that are not the input's fault (nor an interruption): `tracking.is_transient`."""
    try:
        state.result()
    except Exception as exc:
        return tracking.is_transient(exc)
    return False


stylize_cell = task(
    run_cell,
    name="stylize-cell",
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=_transient,
    task_run_name=lambda: _task_run_name(),
)


stylize_cells = task(
    run_cells,
    name="stylize-cells",
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=_transient,
    task_run_name=lambda: _task_run_name("cells"),
)


def _task_run_name(param: str = "cell") -> str:
    from prefect.runtime import task_run

    cells = task_run.parameters.get(param)
    cells = cells if isinstance(cells, list) else [cells]
    ds = [c.to_dict() if isinstance(c, Cell) else (c or {}) for c in cells]
    if len(ds) > 1:
        return f"cells-{ds[0].get('index', '?')}-{ds[-1].get('index', '?')}-batch{len(ds)}"
    return f"cell-{ds[0].get('index', '?')}-{ds[0].get('cell_id', '')[:8]}"


# The feed-forward (`fast`) and video (`video`) methods live in tasks/media.py; importing it registers them.
from . import media as _media  # noqa: E402,F401
