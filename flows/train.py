"""The `train` flow: one Prefect task per style/config, each leasing a device (one per GPU)
and logging to MLflow; networks whose config already has a FINISHED run (and whose
model file exists) are skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, unmapped
from prefect.cache_policies import NO_CACHE

from tasks import settings, tracking
from tasks.devices import configure_devices, default_devices
from tasks.prefect_tasks import train_task
from tasks.train import train_id


@flow(name="train", log_prints=True)
def train_flow(configs: list[dict], experiment: str = "fast-train", devices: list[str] | None = None,
               progress: bool = True) -> list[dict[str, Any]]:
    exp_id = tracking.experiment_id(experiment)
    for run_id in tracking.close_abandoned_runs(exp_id):  # a training SIGKILLed earlier: KILLED, not RUNNING
        print(f"closed run {run_id} left RUNNING by a process that is gone (marked KILLED)")
    done = tracking.finished_cells(exp_id)
    todo = [c for c in configs if not (train_id(c) in done and c.get("out") and Path(c["out"]).is_file())]
    for c in configs:
        if c not in todo:
            print(f"skip {c['out']}: finished in MLflow run {done[train_id(c)]}")
    configure_devices(devices or default_devices())
    futures = train_task.with_options(cache_policy=NO_CACHE).map(todo, unmapped(exp_id), unmapped(None),
                                                                  unmapped(progress))
    return [f.result() for f in futures]


def run_training(configs: list[dict], experiment: str = "fast-train", progress: bool = True) -> list[dict[str, Any]]:
    """What `nst train` calls: set up tracking, run the flow, raise the first failure as an NSTError."""
    import os

    from nst.errors import NSTError

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    settings.configure()
    results = train_flow(configs, experiment=experiment, progress=progress)
    failed = [r for r in results if r["status"] != "FINISHED"]
    if failed:
        raise NSTError(f"training {failed[0]['name']} failed: {failed[0]['error']}")
    return results
