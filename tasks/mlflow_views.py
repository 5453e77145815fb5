"""What the MLflow UI shows of a grid: the training view, images by step, the grid's table, system metrics.

* **Experiment kind.**  MLflow 3 keeps an experiment's kind in the tag ``mlflow.experimentKind``; its
  value for classic model development is ``custom_model_development`` (the UI's enum
  ``CUSTOM_MODEL_DEVELOPMENT``; ``genai_development`` opens the GenAI overview).  Verified in the
  installed MLflow 3.17.2: ``mlflow/demo/generators/traces.py`` sets the same key to
  ``genai_development``, and the UI bundle (``mlflow/server/js/build/static/js/main.*.js``,
  ``2809.*.chunk.js``) reads and writes that key with those values.  The open-source 3.17 UI also has
  a global "workflow type" switch (URL parameter ``workflowType=machine_learning|genai``, else the
  browser's stored choice, default ``genai``) that takes precedence over the tag: its feature flag is
  on in the open-source build, so the page reads the kind from the switch, not from the tag (seen in
  headless Chromium too: a fresh profile opening ``#/experiments/<id>`` of a tagged experiment lands
  on ``overview/usage?workflowType=genai``).  So the links nst prints (`experiment_url`) carry
  ``?workflowType=machine_learning``; once a user picks "Model training" the browser remembers it.
  The tag is still set: it is MLflow's record of the kind, what its kind selector writes, and what
  builds without the switch read.
* **Images.**  Each cell logs MLflow step images (`MlflowClient.log_image` with key and step:
  ``images/<key>+step+<n>+...png`` plus a ``.webp`` thumbnail), besides its plain PNG artifacts:
  ``evolution`` - the starting image (the content photo) at step 0, the intermediate images at their
  optimisation steps and the output at the last step: the step slider of its image chart; and
  ``output`` - the final image alone (at step 0), so the chart view of several cells shows their
  outputs side by side as it opens (MLflow 3.17's image charts open on step 0 and show nothing for a
  key whose first step is later).  Region maps and other extra images: their own key, step 0.
* **System metrics.**  `start_system_metrics` wraps MLflow's own `SystemMetricsMonitor` (it takes an
  explicit run id: no fluent active run, safe in worker threads): ``system/cpu_utilization_percentage``,
  ``system/system_memory_usage_megabytes``, ... and ``system/gpu_*`` when nvidia-ml-py finds a GPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable
from urllib.parse import quote

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from mlflow import MlflowClient

#: MLflow 3's experiment-kind tag and its value for classic model development (the runs table).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
#: The UI's workflow switch (URL parameter) for the same view.
WORKFLOW_PARAM = "workflowType=machine_learning"
#: Tags of every experiment nst creates.
EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: TRAINING_KIND}

#: Image keys (one slider per key on the run page, one image chart per key in compare view).
OUTPUT_KEY = "output"
EVOLUTION_KEY = "evolution"
VALIDATION_KEY = "validation"
SHEET_KEY = "contact_sheet"
#: The grid's table on the parent run (`MlflowClient.log_table`, shown in the artifact view).
TABLE_FILE = "report/grid_table.json"
#: Seconds between system-metric samples (MLflow's MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides).
SYSTEM_METRICS_INTERVAL = 2.0


def ensure_training_view(client: "MlflowClient", experiment) -> None:
    """Give an experiment made before nst set the kind tag (or by someone else) the training kind.

    An experiment whose kind someone chose explicitly (any other value) is left as it is."""
    tags = getattr(experiment, "tags", None) or {}
    if EXPERIMENT_KIND_TAG not in tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)


# --------------------------------------------------------------------------- images


def log_step_images(client: "MlflowClient", run_id: str, key: str,
                    images: Iterable[tuple[int, "torch.Tensor | Any"]]) -> int:
    """Log (step, image) pairs under `key` as MLflow step images (synchronously); returns how many."""
    from PIL import Image

    from nst.images import to_pil

    n = 0
    for step, img in images:
        pil = img if isinstance(img, Image.Image) else to_pil(img)
        client.log_image(run_id, pil, key=key, step=int(step), synchronous=True)
        n += 1
    return n


def image_steps(client: "MlflowClient", run_id: str, key: str) -> list[int]:
    """The steps of the full-size images logged under `key` (read back from the artifact names)."""
    import re

    safe = key.replace("/", "~")
    pat = re.compile(rf"^images/{re.escape(safe)}\+step\+(\d+)\+timestamp\+\d+\+[0-9a-f-]+\.png$")
    steps = []
    for a in client.list_artifacts(run_id, "images"):
        m = pat.match(a.path)
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps)


# --------------------------------------------------------------------------- the grid


def log_grid(client: "MlflowClient", parent_run_id: str, table: "pd.DataFrame", sheet: Path | None) -> None:
    """The comparison table as an MLflow table and the contact sheet as an image, on the parent run."""
    if not table.empty:
        df = table.copy()
        for col in df.columns:  # JSON-friendly: no NaN (MLflow's table view shows them as empty)
            if df[col].dtype == object:
                df[col] = df[col].where(df[col].notna(), None)
        client.log_table(parent_run_id, df, TABLE_FILE)
    if sheet is not None and Path(sheet).exists():
        from PIL import Image

        with Image.open(sheet) as im:
            client.log_image(parent_run_id, im.convert("RGB"), key=SHEET_KEY, step=0, synchronous=True)


# --------------------------------------------------------------------------- system metrics


def start_system_metrics(run_id: str, tracking_uri: str, interval: float | None = None) -> Any:
    """Start MLflow's `SystemMetricsMonitor` on an explicit run id (None if it cannot start).

    Disabled with ``NST_SYSTEM_METRICS=0``.  Stop it with `stop_system_metrics`, which logs one sample
    at least, so a cell shorter than the sampling interval still has its CPU and memory figures."""
    import logging

    if os.environ.get("NST_SYSTEM_METRICS", "1") == "0":
        return None

    try:
        import psutil
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        psutil.cpu_percent()  # psutil's first reading is a meaningless 0.0: start the monitor's interval here
        mon = SystemMetricsMonitor(run_id, sampling_interval=interval or SYSTEM_METRICS_INTERVAL,
                                   tracking_uri=tracking_uri)
        mon.start()
        return mon
    except Exception:  # never fail a cell over its system metrics
        return None


def stop_system_metrics(mon: Any) -> None:
    """Stop the monitor and flush; when it never published (a short cell), log one final sample."""
    if mon is None:
        return
    try:
        mon._shutdown_event.set()
        if mon._process is not None:
            mon._process.join(timeout=30)
            mon._process = None
        if mon._logging_step == 0:
            mon.collect_metrics()
            mon.publish_metrics(mon.aggregate_metrics())
        mon.mlflow_logger.flush()
    except Exception:
        pass


# --------------------------------------------------------------------------- links


def ui_base() -> str:
    """Where `mlflow ui` serves (``NST_MLFLOW_UI``, default http://127.0.0.1:5000)."""
    return os.environ.get("NST_MLFLOW_UI", "http://127.0.0.1:5000").rstrip("/")


def experiment_url(exp_id: str, base: str | None = None) -> str:
    """The experiment's runs table in the training view."""
    return f"{base or ui_base()}/#/experiments/{exp_id}/runs?{WORKFLOW_PARAM}"


def run_url(exp_id: str, run_id: str, base: str | None = None) -> str:
    return f"{base or ui_base()}/#/experiments/{exp_id}/runs/{run_id}?{WORKFLOW_PARAM}"


def compare_url(exp_id: str, run_ids: list[str], base: str | None = None) -> str:
    """MLflow's compare-runs page (the route the UI builds: JSON lists of run and experiment ids)."""
    runs, exps = quote(json.dumps(list(run_ids), separators=(",", ":")), safe=""), quote(json.dumps([exp_id]), safe="")
    return f"{base or ui_base()}/#/compare-runs?runs={runs}&experiments={exps}"


def links_markdown(grid: str, exp_id: str, parent_run_id: str, table: "pd.DataFrame",
                   base: str | None = None) -> str:
    """Markdown for a Prefect artifact: the MLflow experiment, the parent run and each cell's run."""
    lines = [f"# nst grid `{grid}` in MLflow", "",
             f"* experiment [nst-grid/{grid}]({experiment_url(exp_id, base)}) (`mlflow ui` on the same store)",
             f"* parent run [{parent_run_id}]({run_url(exp_id, parent_run_id, base)}) - table "
             f"`{TABLE_FILE}`, contact sheet image `{SHEET_KEY}`", ""]
    if not table.empty and "run_id" in table:
        axes = [c for c in table.columns if c not in ("cell", "cell_id", "status", "run_id")][:3]
        lines += ["| cell | status | " + " | ".join(axes) + " | run |",
                  "|---|---|" + "---|" * len(axes) + "---|"]
        for _, r in table.iterrows():
            vals = " | ".join(str(r[a]) for a in axes)
            lines.append(f"| {r['cell']} | {r['status']} | {vals} | [{str(r['run_id'])[:8]}]"
                         f"({run_url(exp_id, r['run_id'], base)}) |")
        ok = [r for r in table["run_id"][table["status"] == "FINISHED"]]
        if len(ok) >= 2:
            lines += ["", f"[compare the finished cells]({compare_url(exp_id, ok, base)})"]
    return "\n".join(lines) + "\n"
