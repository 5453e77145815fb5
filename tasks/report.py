"""Comparison tables from MLflow: `search_runs` -> pandas -> CSV, Markdown, HTML with thumbnails, contact sheet.

One row per cell (its newest FINISHED run, else its newest failed one), a
column per axis (the ``axis.*`` tags) and per final metric.  Everything is
written atomically into ``reports/<grid>/``.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nst import sheets
from nst.images import atomic_write, save_image
from nst.regions import METHODS as REGION_METHODS

from . import tracking

#: Metric columns first in this order (others follow alphabetically).
METRIC_ORDER = (
    "eval_content_distance", "eval_style_distance", "eval_ssim",
    "robust_content_distance", "robust_style_distance", "robust_style_swd", "robust_color_distance", "robust_ssim",
    "leak_ratio", "leak_own", "leak_other",
    "warping_error", "frames", "frames_per_s", "train_s", "images_per_s",
    "optimize_s", "s_per_step", "wall_s", "targets_s", "peak_rss_mb", "peak_gpu_mem_mb",
    "final_total", "final_content", "final_style", "final_tv",
)
TIMING = ("optimize_s", "s_per_step", "wall_s", "peak_rss_mb", "peak_gpu_mem_mb")
ROBUST = ("robust_content_distance", "robust_style_distance", "robust_style_swd", "robust_color_distance")
LEAKAGE = ("leak_ratio", "leak_own", "leak_other")  # region methods (nst.regions.leakage)
MEDIA = ("warping_error", "frames_per_s", "train_s", "images_per_s")  # video and fast cells (tasks.media)
THUMB = sheets.THUMB
#: Artifact of region-method cells, shown as the contact sheet's first column.
REGION_MAP = "region_map.png"


@dataclass
class Report:
    grid: str
    table: pd.DataFrame
    axes: list[str]
    directory: Path
    files: dict[str, Path] = field(default_factory=dict)


def cell_table(exp_id: str, cell_ids: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The grid's cells as a DataFrame (row per cell) and the axis names in order."""
    import mlflow

    tracking.client()  # applies the tracking URI
    runs = mlflow.search_runs(experiment_ids=[exp_id], output_format="pandas", max_results=50_000)
    if runs.empty or "tags.cell_id" not in runs:
        return pd.DataFrame(), []
    runs = runs[runs["tags.cell_id"].notna()].copy()
    if cell_ids is not None:
        runs = runs[runs["tags.cell_id"].isin(cell_ids)]
    runs["_finished"] = runs["status"] == "FINISHED"
    runs = runs.sort_values(["_finished", "start_time"], ascending=[False, False])
    runs = runs.drop_duplicates("tags.cell_id", keep="first")
    axes: list[str] = []
    for a in runs.get("tags.nst.axes", pd.Series(dtype=object)).dropna():
        for name in json.loads(a):
            if name not in axes:
                axes.append(name)
    rows = []
    for _, r in runs.iterrows():
        row: dict[str, Any] = {
            "cell": int(r.get("tags.cell_index", -1)) if pd.notna(r.get("tags.cell_index")) else -1,
            "cell_id": r["tags.cell_id"],
            "status": r["status"],
        }
        row.update({a: r.get(f"tags.axis.{a}") for a in axes})
        for col in runs.columns:
            # per-step losses are curves, system/* the host's load while the cell ran (MLflow's system
            # metrics: charts in the UI); neither is a result to compare in a table
            if col.startswith("metrics.") and not col.startswith(("metrics.loss_", "metrics.system/")):
                row[col[len("metrics."):]] = r[col]
        for t in ("method", "backbone", "weights_source", "device", "error"):
            if t not in axes:  # an axis column already holds it
                row[t] = r.get(f"tags.{t}")
        row["run_id"] = r["run_id"]
        rows.append(row)
    df = pd.DataFrame(rows).sort_values("cell").reset_index(drop=True)
    metric_cols = [c for c in df.columns if c not in ("cell", "cell_id", "status", "method", "backbone",
                                                    "weights_source", "device", "error", "run_id", *axes)]
    metric_cols = ([c for c in METRIC_ORDER if c in metric_cols]
                   + sorted(c for c in metric_cols if c not in METRIC_ORDER))
    df = df.dropna(axis=1, how="all") if len(df) else df
    tail = [t for t in ("method", "backbone", "weights_source", "device", "error", "run_id") if t not in axes]
    order = ["cell", "cell_id", "status", *axes, *[c for c in metric_cols if c in df], *tail]
    return df[[c for c in order if c in df.columns]], axes


def format_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(format_value(r[c]).replace("|", "\\|").replace("\n", " ") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def to_html(df: pd.DataFrame, grid: str, thumbs: dict[str, str], extra: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["image", *df.columns])
    body = []
    for _, r in df.iterrows():
        src = thumbs.get(r["cell_id"])
        img = f'<a href="{src}"><img src="{src}" width="{THUMB}"></a>' if src else ""
        cells = "".join(f"<td>{html.escape(format_value(r[c]))}</td>" for c in df.columns)
        body.append(f"<tr><td>{img}</td>{cells}</tr>")
    return (
        f"<!doctype html><meta charset='utf-8'><title>nst grid {html.escape(grid)}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:middle}</style>"
        f"<h1>grid {html.escape(grid)}</h1>{extra}<table><tr>{head}</tr>{''.join(body)}</table>\n"
    )


def summary(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """Mean timing and evaluator metrics per value of one axis (e.g. seed 000's network timing table)."""
    cols = [c for c in (*TIMING, "eval_content_distance", "eval_style_distance", "eval_ssim", *ROBUST, *LEAKAGE,
                        *MEDIA) if c in df]
    ok = df[df["status"] == "FINISHED"]
    out = ok.groupby(by, sort=False)[cols].mean() if cols and len(ok) else pd.DataFrame(columns=cols)
    out.insert(0, "cells", ok.groupby(by, sort=False).size() if len(ok) else 0)
    failed = df[df["status"] != "FINISHED"].groupby(by, sort=False)["error"].first() if "error" in df else None
    out = out.reindex(pd.Index(pd.unique(df[by]), name=by))
    out["cells"] = out["cells"].fillna(0).astype(int)
    if failed is not None and len(failed):
        out["failed"] = failed
    return out.reset_index()


def contact_sheet(df: pd.DataFrame, axes: list[str], images: dict[str, Path], rows: str | None, cols: str | None,
                  path: Path, title: str, region_maps: dict[str, Path] | None = None) -> Path:
    """Thumbnails on a labelled grid (`nst.sheets.grid`): rows and columns from the axes; other varying axes
    join the columns. A cell without an image shows its status.

    With `region_maps` (cell id -> colourised region map) a first column shows each row's region map,
    so the outputs can be judged against the regions they were meant to respect.
    """
    region_maps = region_maps or {}
    varying = [a for a in axes if df[a].nunique() > 1] if len(df) else []
    if rows is None and cols is None:
        rows, cols = (varying[0], varying[1]) if len(varying) >= 2 else (None, varying[0] if varying else None)
    col_axes = [a for a in ([cols] if cols else []) + [a for a in varying if a not in (rows, cols)]]
    row_keys = list(pd.unique(df[rows])) if rows else [""]
    col_key = (lambda r: " | ".join(str(r[a]) for a in col_axes)) if col_axes else (lambda r: "")
    col_keys = list(dict.fromkeys(col_key(r) for _, r in df.iterrows())) or [""]

    def tile(rk, ck) -> Path | str:
        match = df[(df[rows] == rk if rows else True) & (df.apply(col_key, axis=1) == ck)] if len(df) else df
        if len(match) and match.iloc[0]["cell_id"] in images:
            return images[match.iloc[0]["cell_id"]]
        return match.iloc[0]["status"] if len(match) else "missing"

    def region_map(rk) -> Path | None:
        in_row = df[df[rows] == rk] if rows else df
        return next((region_maps[c] for c in in_row["cell_id"] if c in region_maps), None)

    sheet = sheets.grid([[tile(rk, ck) for ck in col_keys] for rk in row_keys], title, col_keys,
                        [str(rk) for rk in row_keys] if rows else None,
                        lead=("region map", [region_map(rk) for rk in row_keys]) if region_maps else None,
                        thumb=THUMB)
    return save_image(sheet, path)


def build_report(grid: str, exp_id: str, out_dir: Path, cell_ids: list[str] | None = None,
                 rows: str | None = None, cols: str | None = None, summary_by: str | None = None,
                 parent_run_id: str | None = None) -> Report:
    """Write table.csv/.md/.html, contact_sheet.png (and summary.* with `summary_by`) and log them."""
    df, axes = cell_table(exp_id, cell_ids)
    out_dir = Path(out_dir)
    rep = Report(grid, df, axes, out_dir)
    if df.empty:
        return rep
    c = tracking.client()
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    region_maps: dict[str, Path] = {}
    region_cells = set(df.loc[df["method"].isin(REGION_METHODS), "cell_id"]) if "method" in df else set()
    for _, r in df[df["status"] == "FINISHED"].iterrows():
        for artifact, dst, into in (("output.png", img_dir / f"{r['cell_id']}.png", images),
                                    (REGION_MAP, img_dir / f"{r['cell_id']}_regions.png", region_maps)):
            if artifact == REGION_MAP and r["cell_id"] not in region_cells:
                continue
            try:
                got = Path(c.download_artifacts(r["run_id"], artifact, str(out_dir / ".download")))
                got.replace(dst)
                into[r["cell_id"]] = dst
            except Exception:  # artifact store unreachable: the table still gets written
                continue
    extra = ""
    if summary_by and summary_by in df:
        sm = summary(df, summary_by)
        rep.files["summary.csv"] = atomic_write(out_dir / "summary.csv", lambda t: sm.to_csv(t, index=False))
        md = to_markdown(sm)
        rep.files["summary.md"] = atomic_write(out_dir / "summary.md", lambda t: Path(t).write_text(md))
        extra = "<h2>summary by " + html.escape(summary_by) + "</h2>" + sm.to_html(index=False, float_format="%.4g")
    rep.files["table.csv"] = atomic_write(out_dir / "table.csv", lambda t: df.to_csv(t, index=False))
    md = to_markdown(df.drop(columns=["run_id"]))
    rep.files["table.md"] = atomic_write(out_dir / "table.md", lambda t: Path(t).write_text(md))
    page = to_html(df, grid, {k: f"images/{v.name}" for k, v in images.items()}, extra)
    rep.files["table.html"] = atomic_write(out_dir / "table.html", lambda t: Path(t).write_text(page))
    rep.files["contact_sheet.png"] = contact_sheet(
        df, axes, images, rows, cols, out_dir / "contact_sheet.png", f"grid {grid}: {len(df)} cells", region_maps
    )
    if parent_run_id:
        for p in rep.files.values():
            c.log_artifact(parent_run_id, str(p), "report")
    return rep
