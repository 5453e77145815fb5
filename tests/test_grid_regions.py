"""Region methods as grid cells: a tiny real COCO grid through Prefect and MLflow, and the schema's errors.

The grid runs two region methods on the bundled COCO photo (people in one
style, the rest in another) and checks that every cell logs the leakage
metrics and its region map, that the table has them per cell, and that the
contact sheet carries the region-map column.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from nst.data import image
from nst.errors import ConfigError
from nst.experiments import load_grid

COCO = Path(__file__).resolve().parent / "data" / "coco"
PHOTO, ANNOTATIONS = "000000547503.jpg", "instances_547503.json"

GRID = """
grids:
  g:
    settings:
      content: 000000547503.jpg
      regions: coco:person
      coco: instances_547503.json
      region_styles: {person: the_scream.jpg, background: starry_night.jpg}
      size: 40
      steps: 3
    eval_resolution: 64
    intermediate_images: 0
    axes:
      method: [guided-gram, stitched]
    contact_sheet: {cols: method}
"""


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    for n in ("starry_night.jpg", "the_scream.jpg", "tubingen.jpg"):
        shutil.copy(image(n), tmp_path / n)
    for n in (PHOTO, ANNOTATIONS):
        shutil.copy(COCO / n, tmp_path / n)
    return tmp_path


@pytest.fixture()
def home(files: Path, monkeypatch) -> Path:
    monkeypatch.setenv("NST_HOME", str(files / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{files / 'home' / 'mlflow.db'}")
    monkeypatch.delenv("NST_ARTIFACT_ROOT", raising=False)
    (files / "exp.yaml").write_text(GRID)
    return files


def test_region_grid_logs_leakage_and_region_map(home: Path, prefect_server):
    from mlflow import MlflowClient
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.grid import grid_flow

    flow = grid_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))
    out = flow(str(home / "exp.yaml"), "g", devices=["cpu"], progress=False, reports_dir=str(home / "reports"))
    assert [r["status"] for r in out["results"]] == ["FINISHED", "FINISHED"], out["results"]

    client = MlflowClient(f"sqlite:///{home / 'home' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("nst-grid/g")
    cells = [r for r in client.search_runs([exp.experiment_id]) if "cell_id" in r.data.tags]
    assert sorted(r.data.tags["method"] for r in cells) == ["guided-gram", "stitched"]
    for run in cells:
        m = run.data.metrics
        assert 0 < m["leak_own"] and 0 < m["leak_other"]
        assert m["leak_ratio"] == pytest.approx(m["leak_own"] / m["leak_other"])
        assert {"leak_own.person", "leak_own.background"} <= set(m)
        assert run.data.params["regions"] == "coco:person"
        assert run.data.params["region_styles"] == "person=the_scream.jpg,background=starry_night.jpg"
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"output.png", "region_map.png", "cell.json"} <= arts
        local = client.download_artifacts(run.info.run_id, "region_map.png", str(home / "dl" / run.info.run_id))
        with Image.open(local) as rm:
            colours = {c for _, c in rm.convert("RGB").getcolors(1 << 16)}
        assert len(colours) == 2  # background and person, as the COCO annotations say

    rep = home / "reports" / "g"
    table = pd.read_csv(rep / "table.csv")
    assert sorted(table["method"]) == ["guided-gram", "stitched"]
    assert {"leak_ratio", "leak_own", "leak_other", "wall_s"} <= set(table)
    assert table[["leak_ratio", "leak_own", "leak_other", "wall_s"]].notna().all().all()
    assert "leak_ratio" in (rep / "table.md").read_text()
    with Image.open(rep / "contact_sheet.png") as sheet:
        assert sheet.width >= 3 * 160  # region map column + one column per method
    assert len(list((rep / "images").glob("*_regions.png"))) == 2


REGION_BASE = """
grids:
  g:
    settings:
      content: {content}
      size: 32
      steps: 2
{extra}
"""


def _error(d: Path, content: str, extra: str) -> str:
    from nst.methods import METHODS  # the real registry: region methods are registered there

    extra = textwrap.indent(textwrap.dedent(extra), "    ")
    (d / "exp.yaml").write_text(REGION_BASE.format(content=content, extra=extra))
    with pytest.raises(ConfigError) as ei:
        load_grid(d / "exp.yaml", "g", METHODS)
    return str(ei.value)


@pytest.mark.parametrize(
    "content, extra, expected",
    [
        # a region method without a region map or styles
        ("tubingen.jpg", "axes: {method: [gatys, guided-gram], style: [starry_night.jpg]}",
         "grids.g.axes.method[1]: region method 'guided-gram' needs regions and region_styles"),
        # a missing mask file / an unknown region spec form
        ("tubingen.jpg", "axes:\n  method: [stitched]\n  regions: [mask.png]\n"
                         "  region_styles: [{background: starry_night.jpg}]",
         "grids.g.axes.regions[0]: region spec 'mask.png' is neither coco:CATEGORY, person, deeplab[:CLASS,...] "
         "nor an existing mask file"),
        ("tubingen.jpg", "axes:\n  method: [stitched]\n  regions: ['segformer:person']\n"
                         "  region_styles: [{background: starry_night.jpg}]",
         "grids.g.axes.regions[0]: region spec 'segformer:person' is neither"),
        # gatys must not get region settings
        ("tubingen.jpg", "axes:\n  style: [starry_night.jpg]\n  region_styles: [{person: the_scream.jpg}]",
         "grids.g.axes.region_styles[0]: 'region_styles' is only for the region methods"),
        # a missing style file inside region_styles
        (PHOTO, "axes:\n  method: [portion]\n  regions: [coco:person]\n  coco: [instances_547503.json]\n"
                "  region_styles: [{person: nope.jpg}]",
         "grids.g.axes.region_styles[0].person: style file 'nope.jpg' not found"),
        # coco regions need the annotations, the content must be in them, categories and names must exist
        (PHOTO, "axes:\n  method: [portion]\n  regions: [coco:person]\n  region_styles: [{person: the_scream.jpg}]",
         "grids.g.axes.regions[0]: 'coco:person' needs 'coco'"),
        ("tubingen.jpg", "axes:\n  method: [portion]\n  regions: [coco:person]\n  coco: [instances_547503.json]\n"
                         "  region_styles: [{person: the_scream.jpg}]",
         "grids.g.axes.coco[0]: content image 'tubingen.jpg' is not in instances_547503.json"),
        (PHOTO, "axes:\n  method: [portion]\n  regions: ['coco:persn']\n  coco: [instances_547503.json]\n"
                "  region_styles: [{person: the_scream.jpg}]",
         "grids.g.axes.regions[0]: unknown COCO category 'persn'"),
        (PHOTO, "axes:\n  method: [portion]\n  regions: [coco:person]\n  coco: [instances_547503.json]\n"
                "  region_styles: [{people: the_scream.jpg}]",
         "grids.g.axes.region_styles[0].people: no region 'people'"),
    ],
)
def test_region_schema_errors_name_the_yaml_path(files: Path, content: str, extra: str, expected: str):
    assert expected in _error(files, content, extra)


def test_region_cell_ids_hash_the_spec_and_the_mask_bytes(files: Path):
    from nst.methods import METHODS

    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (0, 0, 32, 48))
    mask.save(files / "mask.png")
    text = REGION_BASE.format(content="tubingen.jpg", extra=textwrap.indent(textwrap.dedent("""\
        axes:
          method: [guided-gram]
          regions: [mask.png]
          region_styles:
            - {foreground: the_scream.jpg, background: starry_night.jpg}
            - {foreground: starry_night.jpg, background: the_scream.jpg}
        """), "    "))
    (files / "exp.yaml").write_text(text)
    g = load_grid(files / "exp.yaml", "g", METHODS)
    a, b = g.cells
    assert a.regions["spec"] == str((files / "mask.png").resolve())
    assert a.cell_id != b.cell_id  # swapping the styles between the regions is another experiment
    assert a.styles == [files / "the_scream.jpg", files / "starry_night.jpg"]
    mask.paste(255, (0, 0, 40, 48))
    mask.save(files / "mask.png")
    assert load_grid(files / "exp.yaml", "g", METHODS).cells[0].cell_id != a.cell_id  # new mask bytes, new id
