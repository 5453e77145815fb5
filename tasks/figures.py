"""Report figures from grid runs: the panels of one figure and the REPORT.md that gathers them.

A figure (``figures:`` in experiments.yaml) names grids and the panels to draw
from their MLflow runs: the grid's contact sheet, a table of chosen columns,
the per-axis summary, loss curves read back from the per-step metrics, grouped
bars of final metrics, and per-cell image artifacts (e.g. a training evolution
strip).  Everything is read from MLflow, so a figure can be redrawn from the
tracked runs alone.  Each figure writes ``reports/figures/<name>/`` with its
PNGs, ``figure.md`` (its section of the report) and ``figure.json``;
`write_report` stitches the sections into ``reports/REPORT.md`` in the order of
the YAML, listing the figures that have not been made yet.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nst import sheets
from nst.experiments import Experiments, FigureSpec, Grid
from nst.images import atomic_write, save_image

from . import tracking
from .plots import CURVE_COLORS, plot_curves
from .report import Report, summary, to_markdown

#: Table columns shown when a figure does not choose (those present, in this order, after the axes).
DEFAULT_COLUMNS = ("eval_content_distance", "eval_style_distance", "eval_ssim", "s_per_step", "wall_s")


@dataclass
class GridRun:
    """One grid behind a figure: its cells as planned and its report from MLflow."""

    grid: Grid
    experiment_id: str
    parent_run_id: str | None
    report: Report


def cell_label(row: pd.Series, axes: list[str]) -> str:
    varying = [a for a in axes if a in row and pd.notna(row[a])]
    return ", ".join(f"{row[a]}" for a in varying) or str(row.get("cell_id", ""))


def varying_axes(df: pd.DataFrame, axes: list[str]) -> list[str]:
    return [a for a in axes if a in df and df[a].nunique() > 1] or [a for a in axes if a in df][:1]


# --------------------------------------------------------------------------- panels


def short_error(err: Any) -> Any:
    """An error's first clause (the full text is in the cell's MLflow run and the grid's table)."""
    if not isinstance(err, str):
        return err
    return err.split("; ")[0].split(". ")[0][:140]


def table_md(df: pd.DataFrame, axes: list[str], columns: list[str] | None) -> tuple[str, list[str]]:
    """The figure's table and the requested columns that no run has (reported, not silently dropped)."""
    if columns is None:
        cols = [*axes, *[c for c in DEFAULT_COLUMNS if c in df]]
        if "error" in df and df["error"].notna().any():
            cols += ["status", "error"]
        missing: list[str] = []
    else:
        cols = [c for c in columns if c in df]
        missing = [c for c in columns if c not in df]
    table = df[cols].copy()
    if "error" in table:
        table["error"] = table["error"].map(short_error)
    return to_markdown(table), missing


def loss_curves(runs: list[tuple[str, str]], terms: list[str], path: Path, title: str) -> Path | None:
    """One subplot per loss term, one line per run (label, run id), from the logged per-step metrics."""
    c = tracking.client()
    data: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for label, run_id in runs:
        for t in terms:
            hist = sorted(c.get_metric_history(run_id, f"loss_{t}"), key=lambda m: m.step)
            if hist:
                data.setdefault(f"{t} loss", {})[label] = ([m.step for m in hist], [m.value for m in hist])
    if not data:
        return None
    return plot_curves(data, path, title, xlabel="iteration", ylabel="weighted loss")


def bar_chart(df: pd.DataFrame, axes: list[str], metrics: list[str], path: Path, title: str) -> Path | None:
    """Grouped bars: one group per finished cell, one bar per metric (e.g. own vs other-style leakage)."""
    from matplotlib.figure import Figure

    ok = df[df["status"] == "FINISHED"]
    metrics = [m for m in metrics if m in ok and ok[m].notna().any()]
    if ok.empty or not metrics:
        return None
    labels = [cell_label(r, varying_axes(df, axes)) for _, r in ok.iterrows()]
    fig = Figure(figsize=(max(4.5, 1.1 * len(labels) * max(1, len(metrics)) / 2 + 2), 3.6), dpi=110)
    ax = fig.add_subplot()
    width = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, ok[m].astype(float).tolist(), width, label=m, color=CURVE_COLORS[j % len(CURVE_COLORS)])
    vals = ok[metrics].astype(float).to_numpy()
    if (vals > 0).all() and vals.max() / vals.min() > 100:  # e.g. warping errors over three decades
        ax.set_yscale("log")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([lab[:22] for lab in labels], rotation=20, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title[:100], fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, path)


def _save_figure(fig, path: Path) -> Path:
    """Matplotlib figure -> PNG, atomically (no pyplot state: safe in worker threads)."""
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))


def _download(run_id: str, artifact: str, dest: Path) -> Path | None:
    try:
        return Path(tracking.client().download_artifacts(run_id, artifact, str(dest)))
    except Exception:  # the cell did not log it (failed, or another method): the panel says so
        return None


# --------------------------------------------------------------------------- one figure


@dataclass
class _Figure:
    """A figure being written: its Markdown lines, its images (relative to `out_dir`) and its notes."""

    out_dir: Path
    md: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def image(self, path: Path | None, alt: str) -> None:
        if path is not None:
            rel = Path(path).relative_to(self.out_dir)
            self.images.append(str(rel))
            self.md += [f"![{alt}]({rel.as_posix()})", ""]


def build_figure(name: str, spec: FigureSpec, runs: list[GridRun], out_dir: Path, variant: str,
                 command: str, experiments_file: Path) -> dict[str, Any]:
    """Draw the figure's panels into `out_dir`, write figure.md / figure.json; returns the JSON record."""
    fig = _Figure(Path(out_dir), md=_heading(spec))
    fig.out_dir.mkdir(parents=True, exist_ok=True)
    for gr in runs:
        _grid_section(fig, gr, spec)
    for gr in runs:  # downloads were copied into the panels; the figure folder keeps only what it shows
        shutil.rmtree(fig.out_dir / gr.grid.name / ".download", ignore_errors=True)
    fig.md += _reproduce_md(spec, runs, variant, command, experiments_file, fig.notes)
    record = {
        "figure": name, "title": spec.title, "variant": variant, "command": command,
        "grids": {gr.grid.name: {"experiment_id": gr.experiment_id, "parent_run_id": gr.parent_run_id,
                                 "cells": len(gr.report.table)} for gr in runs},
        "images": fig.images, "notes": fig.notes, "git_commit": tracking.git_commit(),
        "made": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
    }
    text = "\n".join(fig.md).rstrip() + "\n"
    atomic_write(fig.out_dir / "figure.md", lambda t: Path(t).write_text(text, encoding="utf-8"))
    atomic_write(fig.out_dir / "figure.json", lambda t: Path(t).write_text(json.dumps(record, indent=1)))
    c = tracking.client()
    for gr in runs:  # the figure next to the runs it was drawn from, in the MLflow UI
        if gr.parent_run_id:
            for rel in fig.images:
                c.log_artifact(gr.parent_run_id, str(fig.out_dir / rel), f"figures/{name}")
    return record


def _heading(spec: FigureSpec) -> list[str]:
    md = [f"## {spec.title}", ""]
    if spec.source:
        md += [f"*Source: {spec.source}*", ""]
    if spec.caption:
        md += [spec.caption.strip(), ""]
    return md


def _grid_section(fig: _Figure, gr: GridRun, spec: FigureSpec) -> None:
    """One grid's part of the figure: a line naming its MLflow experiment, then each panel of `spec.show`."""
    g, df = gr.grid, gr.report.table
    if df.empty:
        fig.notes.append(f"grid `{g.name}`: no runs")
        return
    n_ok = int((df["status"] == "FINISHED").sum())
    fig.md += [f"**Grid `{g.name}`** ({len(df)} cells, {n_ok} finished; MLflow experiment "
               f"`{tracking.experiment_name(g.name)}` (id {gr.experiment_id})"
               + (f", parent run `{gr.parent_run_id}`" if gr.parent_run_id else "") + ")", ""]
    if g.spec.description:
        fig.md += [f"> {' '.join(g.spec.description.split())}", ""]
    for panel in spec.show:
        _panel(fig, panel, gr, spec)


def _panel(fig: _Figure, panel: str, gr: GridRun, spec: FigureSpec) -> None:
    g, rep, df = gr.grid, gr.report, gr.report.table
    gdir = fig.out_dir / g.name
    if panel == "sheet" and "contact_sheet.png" in rep.files:
        fig.image(rep.files["contact_sheet.png"], panel)
    elif panel == "table":
        columns = spec.columns.get(g.name) if isinstance(spec.columns, dict) else spec.columns
        table, missing = table_md(df, rep.axes, columns)
        fig.md += [table]
        if missing:
            fig.notes.append(f"grid `{g.name}`: no run logged {', '.join(missing)}")
    elif panel == "summary" and g.spec.summary_by in df:
        sm = summary(df, g.spec.summary_by)
        if "failed" in sm:
            sm["failed"] = sm["failed"].map(short_error)
        fig.md += [f"Summary by `{g.spec.summary_by}`:", "", to_markdown(sm)]
    elif panel == "curves":
        ok = df[df["status"] == "FINISHED"]
        va = varying_axes(df, rep.axes)
        fig.image(loss_curves([(cell_label(r, va), r["run_id"]) for _, r in ok.iterrows()], spec.curves,
                              gdir / "loss_curves.png", f"{spec.title} ({g.name})"), panel)
    elif panel == "bars":
        fig.image(bar_chart(df, rep.axes, spec.bars, gdir / "bars.png", f"{', '.join(spec.bars)} ({g.name})"), panel)
    elif panel == "artifacts":
        arts = spec.artifacts if isinstance(spec.artifacts, list) else spec.artifacts.get(g.name, [])
        for art in arts:
            _artifact_panel(fig, art, gr)


def _artifact_panel(fig: _Figure, art: str, gr: GridRun) -> None:
    """The artifact `art` of every finished cell, under the cells' labels, as one sheet."""
    g, df = gr.grid, gr.report.table
    gdir = fig.out_dir / g.name
    va = varying_axes(df, gr.report.axes)
    rows = []
    for _, r in df[df["status"] == "FINISHED"].iterrows():
        got = _download(r["run_id"], art, gdir / ".download" / r["cell_id"])
        if got is not None:
            rows.append((cell_label(r, va), got))
    stem = Path(art).stem.replace("/", "_")
    if not rows:
        fig.notes.append(f"grid `{g.name}`: no cell logged the artifact `{art}`")
        return
    fig.image(save_image(sheets.labelled(rows, f"{art} ({g.name})"), gdir / f"{stem}_by_cell.png"), art)


def _reproduce_md(spec: FigureSpec, runs: list[GridRun], variant: str, command: str, experiments_file: Path,
                  notes: list[str]) -> list[str]:
    grids = ", ".join(f"`{gr.grid.name}`" for gr in runs)
    md = ["Reproduce:", "", "```bash", command, "```", "",
          f"Grids {grids} of `{experiments_file.name}`, {variant} variant "
          f"(settings laid over each grid: `{json.dumps(getattr(spec, variant), sort_keys=True)}`).", ""]
    if notes:
        md += ["Notes: " + "; ".join(notes) + ".", ""]
    return md


def machine() -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {dev}, "
            f"torch {torch.__version__}")


# --------------------------------------------------------------------------- REPORT.md


def write_report(exp: Experiments, figures_dir: Path, path: Path, available: dict[str, str | None]) -> Path:
    """Gather every made figure's section, in the YAML's order, into REPORT.md.

    `available` maps each figure to None when it can be made here, or the reason it cannot
    (e.g. its method is not implemented); figures not made yet are listed with their command.
    """
    figures_dir = Path(figures_dir)
    made, pending = [], []
    for name, spec in exp.figures.items():
        f = figures_dir / name / "figure.md"
        if f.is_file():
            rel = figures_dir.relative_to(path.parent) / name
            text = f.read_text(encoding="utf-8")
            text = _rebase_images(text, rel.as_posix())
            rec = json.loads((figures_dir / name / "figure.json").read_text())
            made.append((name, spec, text, rec))
        else:
            pending.append((name, spec, available.get(name)))
    lines = [
        "# nst-lab: the source reports' figures, reproduced",
        "",
        "Every figure and table below was regenerated by this project's own runs, tracked in MLflow "
        "(`mlflow ui --backend-store-uri <tracking URI>`; each section names its experiment and parent run), "
        "with the command under it. `--quick` variants are small CPU runs (minutes on 2 cores): they show "
        "the method and the trend, not the reports' image quality; the full variants are for a GPU. "
        "Timing columns (`s_per_step`, `wall_s`, ...) are as measured on the machine in the table below; on a "
        "shared machine they include waiting for the CPU, so compare them within one figure only, and use "
        "`benchmarks/` for speed claims.",
        "",
        "```bash",
        "nst reproduce --all --quick    # every figure, CPU-sized",
        "nst reproduce --all            # every figure at the reports' sizes (GPU)",
        "nst reproduce --figure NAME    # one figure (names below)",
        "```",
        "",
        "| figure | variant | made | machine |",
        "|---|---|---|---|",
    ]
    for name, spec, _, rec in made:
        lines.append(f"| [{spec.title}](#{_anchor(spec.title)}) (`{name}`) | {rec['variant']} | {rec['made']} | "
                     f"{rec['machine']} |")
    for name, spec, why in pending:
        lines.append(f"| {spec.title} (`{name}`) | not made | {why or 'run `nst reproduce --figure ' + name + '`'} | |")
    lines.append("")
    for _, _, text, _ in made:
        lines += [text, ""]
    page = "\n".join(lines).rstrip() + "\n"
    return atomic_write(path, lambda t: Path(t).write_text(page, encoding="utf-8"))


def _rebase_images(text: str, prefix: str) -> str:
    """Image links of a figure.md (relative to its folder) made relative to REPORT.md."""
    import re

    return re.sub(r"!\[([^\]]*)\]\((?!https?:|/)([^)]+)\)", lambda m: f"![{m.group(1)}]({prefix}/{m.group(2)})", text)


def _anchor(title: str) -> str:
    import re

    return re.sub(r"[^a-z0-9 -]", "", title.lower()).strip().replace(" ", "-")
