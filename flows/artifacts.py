"""What a finished grid leaves in the UIs besides its runs: MLflow's table and sheet, Prefect's links.

On the parent MLflow run: the comparison table as an MLflow table (`MlflowClient.log_table`,
``report/grid_table.json``) and the contact sheet as an image (key ``contact_sheet``).  In Prefect:
next to the table artifact (`table_artifact`, key ``grid-<grid>``) a markdown artifact
(key ``grid-<grid>-mlflow``) with links to the MLflow experiment, the parent run, every cell's run and
the compare view of the finished cells (``NST_MLFLOW_UI``, default http://127.0.0.1:5000).
"""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import mlflow_views, tracking
from tasks import report as report_mod


def artifact_key(grid: str, suffix: str = "") -> str:
    """Prefect's artifact keys: lowercase letters, digits and dashes."""
    return "grid-" + "".join(ch if ch.isalnum() else "-" for ch in grid.lower()) + suffix


def table_artifact(grid: str, rep: report_mod.Report) -> None:
    """The grid's comparison table as a Prefect table artifact (one row per cell), key ``grid-<grid>``."""
    if rep.table.empty:
        return
    cols = [c for c in rep.table.columns if c not in ("run_id",)]
    records = [{k: report_mod.format_value(v) for k, v in row.items()} for row in rep.table[cols].to_dict("records")]
    create_table_artifact(records, key=artifact_key(grid), description=f"nst grid {grid}: one row per cell")


def publish(grid: str, exp_id: str, parent_run_id: str, rep: report_mod.Report) -> None:
    mlflow_views.log_grid(tracking.client(), parent_run_id, rep.table, rep.files.get("contact_sheet.png"))
    md = mlflow_views.links_markdown(grid, exp_id, parent_run_id, rep.table)
    create_markdown_artifact(md, key=artifact_key(grid, "-mlflow"),
                             description=f"nst grid {grid}: its MLflow experiment and runs")
