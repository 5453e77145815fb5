"""`nst reproduce`: a real report figure (quick variant of experiments.yaml's `loss-curves`) end to end.

Checks: the figure's grid runs as tracked MLflow runs, the loss curves are read back from
MLflow and drawn, REPORT.md gets the section with its command and working image links,
a second call redoes no cell, and figure-section mistakes name their YAML path.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from nst.errors import ConfigError
from nst.experiments import figure_grids, load_experiments

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("NST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    monkeypatch.delenv("NST_ARTIFACT_ROOT", raising=False)
    return tmp_path


def test_quick_loss_curve_figure_end_to_end(prefect_server, home: Path) -> None:
    import mlflow

    from flows.reproduce import reproduce_flow
    from tasks import tracking
    from tasks.settings import configure

    configure()
    reports = home / "reports"
    out = reproduce_flow(str(ROOT / "experiments.yaml"), ["loss-curves"], quick=True, reports_dir=str(reports),
                         progress=False)
    assert out["failed_cells"] == []
    report = (reports / "REPORT.md").read_text()
    assert "## Loss curves of a Gatys run" in report
    assert "nst reproduce --figure loss-curves --quick" in report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert links and all((reports / link).is_file() for link in links)
    curves = reports / "figures" / "loss-curves" / "loss-curves" / "loss_curves.png"
    assert curves.as_posix().endswith(next(link for link in links if link.endswith("loss_curves.png")))
    with Image.open(curves) as im:
        assert im.width > 600 and im.height > 200
    # figures that were not made are listed, not silently missing
    assert "| not made |" in report and "`style-grid`" in report

    exp_id = tracking.experiment_id("loss-curves", create=False)
    runs = mlflow.search_runs([exp_id], output_format="list")
    cells = [r for r in runs if "cell_id" in r.data.tags]
    assert len(cells) == 2 and all(r.info.status == "FINISHED" for r in cells)
    assert {r.data.params["size"] for r in cells} == {"128"}  # the quick variant's settings
    for r in cells:
        style = [m.value for m in tracking.client().get_metric_history(r.info.run_id, "loss_style")]
        assert len(style) == 60 and style[-1] < 0.5 * style[0]
    parent = next(r for r in runs if r.data.tags.get("nst.kind") == "grid")
    logged = [a.path for a in tracking.client().list_artifacts(parent.info.run_id, "figures/loss-curves")]
    assert any(p.endswith("loss_curves.png") for p in logged)

    again = reproduce_flow(str(ROOT / "experiments.yaml"), ["loss-curves"], quick=True, reports_dir=str(reports),
                           progress=False)
    assert again["failed_cells"] == []
    runs2 = mlflow.search_runs([exp_id], output_format="list")
    assert len([r for r in runs2 if "cell_id" in r.data.tags]) == 2  # nothing redone


FIG = """
grids:
  g:
    settings: {{content: tubingen.jpg, style: starry_night.jpg, size: 32, steps: 2}}
    axes:
      method: [{method}]
figures:
  f:
    title: A figure
    grids: [{grid}]
    show: [{panel}]
    artifacts: {artifacts}
    columns: {columns}
    quick: {{size: {size}}}
"""


@pytest.mark.parametrize("fields, where", [
    ({"grid": "nope"}, "figures.f.grids[0]: no grid 'nope'"),
    ({"size": -3}, "figures.f.quick.size"),
    ({"panel": "pie"}, "figures.f.show[0]"),
    ({"artifacts": "{h: [evolution.png]}"}, "figures.f.artifacts.h: not a grid of this figure (its grids: g)"),
    ({"columns": "{h: [wall_s]}"}, "figures.f.columns.h: not a grid of this figure (its grids: g)"),
])
def test_figure_mistakes_name_their_yaml_path(tmp_path: Path, fields: dict, where: str) -> None:
    from nst.data import image

    for n in ("tubingen.jpg", "starry_night.jpg"):
        shutil.copy(image(n), tmp_path / n)
    values = {"method": "gatys", "grid": "g", "panel": "sheet", "size": 32, "artifacts": "[]", "columns": "null",
              **fields}
    (tmp_path / "exp.yaml").write_text(FIG.format(**values))
    with pytest.raises(ConfigError) as err:
        exp = load_experiments(tmp_path / "exp.yaml")
        figure_grids(exp, "f", quick=True, methods=["gatys"])
    assert where in str(err.value)


def test_figure_of_a_missing_method_is_listed_not_fatal(tmp_path: Path) -> None:
    from flows.reproduce import availability
    from nst.data import image

    for n in ("tubingen.jpg", "starry_night.jpg"):
        shutil.copy(image(n), tmp_path / n)
    (tmp_path / "exp.yaml").write_text(FIG.format(method="hologram", grid="g", panel="sheet", size=32, artifacts="[]",
                                                     columns="null"))
    why = availability(tmp_path / "exp.yaml", quick=True)["f"]
    assert why is not None and "hologram" in why


def test_every_figure_of_the_project_validates() -> None:
    """All figures of experiments.yaml expand in both variants (methods built so far)."""
    from flows.reproduce import availability

    avail = availability(ROOT / "experiments.yaml", quick=True)
    assert {"style-grid", "loss-curves", "backbones", "regions"} <= {k for k, v in avail.items() if v is None}
    exp = load_experiments(ROOT / "experiments.yaml")
    for name, why in avail.items():
        if why is None:
            for quick in (True, False):
                assert figure_grids(exp, name, quick)
