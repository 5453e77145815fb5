"""experiments.yaml: every error case names its YAML path; expansion, include/exclude, repeats, stable ids."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from nst.data import image
from nst.errors import ConfigError
from nst.experiments import Cell, expand, load_experiments, load_grid

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def imgs(tmp_path: Path) -> Path:
    for n in ("tubingen.jpg", "chelsea.png", "starry_night.jpg", "the_scream.jpg"):
        shutil.copy(image(n), tmp_path / n)
    return tmp_path


def write(d: Path, text: str) -> Path:
    p = d / "exp.yaml"
    p.write_text(textwrap.dedent(text))
    return p


BASE = """
grids:
  g:
    settings: {{size: 32, steps: 2}}
    axes:
      content: [tubingen.jpg]
      style: [starry_night.jpg]
{extra}
"""


def grid_error(d: Path, text: str) -> str:
    from nst.methods import METHODS  # the real method registry

    with pytest.raises(ConfigError) as ei:
        load_grid(write(d, text), "g", METHODS)
    return str(ei.value)


def test_shipped_file_expands_every_grid():
    exp = load_experiments(ROOT / "experiments.yaml")
    assert {"demo", "backbones", "multistyle", "weights", "colour"} <= set(exp.grids)
    demo = expand(exp, "demo")
    assert len(demo.cells) == 4 and demo.axes == ["content", "style"]
    assert all(c.config.backbone == "vgg19" and c.config.weights is None for c in demo.cells)
    backbones = expand(exp, "backbones")
    assert [c.labels["backbone"] for c in backbones.cells] == ["alexnet", "vgg11", "vgg16", "vgg19"]
    assert len({c.config.steps for c in backbones.cells}) == 1  # same iterations on every network
    multi = expand(exp, "multistyle")
    assert {c.config.multi_style for c in multi.cells} == {"blend", "sequential"}
    assert [c.config.style_weights for c in multi.cells][:3] == [(0.5, 0.5), (0.8, 0.2), (0.2, 0.8)]
    colour = expand(exp, "colour")
    assert {c.config.preserve_color for c in colour.cells} == {None, "luminance", "histogram"}
    ratios = [c.config.style_weight / c.config.content_weight for c in expand(exp, "weights").cells]
    assert ratios == sorted(ratios) and len(set(ratios)) == 5


@pytest.mark.parametrize(
    "snippet, expected",
    [
        # unknown keys, at every level
        ("    colour: 1", "grids.g.colour: unknown key"),
        ("    axes2: {}", "grids.g.axes2: unknown key"),
        ("", None),
    ],
)
def test_unknown_grid_keys(imgs, snippet, expected):
    if expected is None:
        assert len(load_grid(write(imgs, BASE.format(extra=snippet)), "g").cells) == 1
    else:
        assert expected in grid_error(imgs, BASE.format(extra=snippet))


def test_error_cases_name_the_yaml_path(imgs):
    cases = {
        # unknown key in settings / axes / a style mix / a weight set
        """grids:\n  g:\n    settings: {size: 32, stepz: 2}\n    axes: {content: [tubingen.jpg], style: [starry_night.jpg]}\n""":
            "grids.g.settings.stepz: unknown key 'stepz'",
        """grids:\n  g:\n    axes: {content: [tubingen.jpg], style: [starry_night.jpg], colour: [a]}\n""":
            "grids.g.axes.colour: unknown key 'colour'",
        """grids:\n  g:\n    axes:\n      content: [tubingen.jpg]\n      style: [{images: [starry_night.jpg], wieghts: [1]}]\n""":
            "grids.g.axes.style[0].wieghts: unknown key",
        """grids:\n  g:\n    axes:\n      content: [tubingen.jpg]\n      style: [starry_night.jpg]\n      weights: [{content: 1, styl: 3}]\n""":
            "grids.g.axes.weights[0].styl: unknown key",
        # missing files
        """grids:\n  g:\n    axes: {content: [tubingen.jpg, nothere.jpg], style: [starry_night.jpg]}\n""":
            "grids.g.axes.content[1]: content file 'nothere.jpg' not found",
        """grids:\n  g:\n    axes:\n      content: [tubingen.jpg]\n      style: [{images: [starry_night.jpg, gone.png]}]\n""":
            "grids.g.axes.style[0].images[1]: style file 'gone.png' not found",
        # unknown backbone / layer
        """grids:\n  g:\n    axes: {content: [tubingen.jpg], style: [starry_night.jpg], backbone: [vgg19, vgg16, vgg99]}\n""":
            "grids.g.axes.backbone[2]: unknown backbone 'vgg99'",
        """grids:\n  g:\n    settings: {style_layers: [relu1_1, relu9_9]}\n    axes: {content: [tubingen.jpg], style: [starry_night.jpg]}\n""":
            "grids.g.settings.style_layers[1]: unknown layer 'relu9_9' for backbone 'vgg19'",
        """grids:\n  g:\n    axes: {content: [tubingen.jpg], style: [starry_night.jpg], content_layers: [[relu4_2], [conv9]]}\n""":
            "grids.g.axes.content_layers[1][0]: unknown layer 'conv9'",
        # negative weights
        """grids:\n  g:\n    axes:\n      content: [tubingen.jpg]\n      style: [starry_night.jpg]\n      weights: [{content: 1, style: 5}, {content: 1, style: -2}]\n""":
            "grids.g.axes.weights[1].style: Input should be greater than or equal to 0",
        """grids:\n  g:\n    axes:\n      content: [tubingen.jpg]\n      style: [{images: [starry_night.jpg, the_scream.jpg], weights: [1, -1]}]\n""":
            "grids.g.axes.style[0].weights[1]: weight -1 is negative",
        """grids:\n  g:\n    settings: {tv_weight: -1}\n    axes: {content: [tubingen.jpg], style: [starry_night.jpg]}\n""":
            "grids.g.settings.tv_weight: Input should be greater than or equal to 0",
        """grids:\n  g:\n    axes: {content: [tubingen.jpg, tubingen.jpg], style: [starry_night.jpg]}\n""":
            "grids.g.axes.content[1]: value 'tubingen.jpg' appears twice",
        # empty axis
        """grids:\n  g:\n    axes: {content: [tubingen.jpg], style: []}\n""":
            "grids.g.axes.style: empty axis",
        # other value errors
        """grids:\n  g:\n    axes: {content: [tubingen.jpg], style: [starry_night.jpg], size: [32, -5]}\n""":
            "grids.g.axes.size[1]: Input should be greater than 0",
        """grids:\n  g:\n    axes: {content: [tubingen.jpg], style: [starry_night.jpg], method: [gatys, magic]}\n""":
            "grids.g.axes.method[1]: unknown method 'magic'",
        """grids:\n  g:\n    preset: nope\n    axes: {content: [tubingen.jpg], style: [starry_night.jpg]}\n""":
            "grids.g.preset: unknown preset 'nope'",
        """grids:\n  g:\n    axes: {content: [tubingen.jpg], style: [starry_night.jpg]}\n    exclude: [{backbone: vgg19}]\n""":
            "grids.g.exclude[0].backbone: not an axis",
        """grids:\n  g:\n    settings: {weights: random}\n    axes: {content: [tubingen.jpg], style: [starry_night.jpg]}\n""":
            "grids.g.settings.weights: expected a mapping {content, style, tv}",
        """grids:\n  g:\n    axes: {content: [tubingen.jpg], style: [starry_night.jpg]}\n    exclude: [{content: tubingen}]\n""":
            "grids.g: no cells left",
    }
    for text, expected in cases.items():
        msg = grid_error(imgs, text)
        assert expected in msg, (expected, msg)
        assert "\n" not in msg


def test_file_level_errors(imgs):
    with pytest.raises(ConfigError, match="grids.g.axes.content: Input should be a valid list"):
        load_grid(write(imgs, "grids:\n  g:\n    axes: {content: tubingen.jpg}\n"), "g")
    with pytest.raises(ConfigError, match="nope: unknown key"):
        load_experiments(write(imgs, "nope: 1\ngrids: {g: {}}\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiments(write(imgs, "grids: [unclosed\n"))
    with pytest.raises(ConfigError, match="no grid 'other'"):
        load_grid(write(imgs, BASE.format(extra="")), "other")


def test_expansion_include_exclude_repeats_presets(imgs):
    p = write(imgs, """
        defaults: {steps: 7}
        presets:
          small: {size: 32, steps: 3}
        grids:
          g:
            preset: small
            settings: {seed: 10}
            axes:
              content: [tubingen.jpg, chelsea.png]
              style: [starry_night.jpg, the_scream.jpg]
              backbone: [vgg19, alexnet]
            exclude:
              - {content: chelsea, backbone: alexnet}
            include:
              - {backbone: vgg16, backbone_weights: random, content: tubingen.jpg}
            repeats: 2
    """)
    g = load_grid(p, "g")
    assert g.axes == ["content", "style", "backbone", "seed"]
    combos = [(c.labels["content"], c.labels["style"], c.labels["backbone"], c.labels["seed"]) for c in g.cells]
    # 2x2x2 product minus chelsea+alexnet (2 styles) = 6, plus vgg16 on tubingen x 2 styles = 8, x 2 repeats
    assert len(combos) == 16 == len(set(combos))
    assert not any(c == "chelsea" and b == "alexnet" for c, _, b, _ in combos)
    vgg16 = [c for c in g.cells if c.config.backbone == "vgg16"]
    assert len(vgg16) == 4 and all(c.config.weights == "random" and c.content.name == "tubingen.jpg" for c in vgg16)
    assert {c.config.seed for c in g.cells} == {10, 11}
    assert {c.config.size for c in g.cells} == {32} and {c.config.steps for c in g.cells} == {3}  # preset > defaults
    assert all(c.content.is_absolute() for c in g.cells)  # paths relative to the YAML file
    assert len({c.cell_id for c in g.cells}) == 16
    # what tells the cells apart (logged as MLflow params): the axes' and repeats' settings, not size or steps
    assert all(c.varied == ("backbone", "weights", "seed") for c in g.cells)
    # a cell survives the JSON round trip used for deployment parameters
    c = g.cells[3]
    assert Cell.from_dict(c.to_dict()).to_dict() == c.to_dict()


def test_cell_ids_hash_settings_and_file_bytes(imgs, tmp_path):
    text = BASE.format(extra="")
    ids = [c.cell_id for c in load_grid(write(imgs, text), "g").cells]
    assert ids == [c.cell_id for c in load_grid(write(imgs, text), "g").cells]  # stable
    # another file name with the same bytes: same id; different bytes: different id
    shutil.copy(imgs / "tubingen.jpg", imgs / "renamed.jpg")
    renamed = [c.cell_id for c in load_grid(write(imgs, text.replace("tubingen.jpg", "renamed.jpg")), "g").cells]
    assert renamed == ids
    shutil.copy(imgs / "chelsea.png", imgs / "tubingen.jpg")
    assert [c.cell_id for c in load_grid(write(imgs, text), "g").cells] != ids
    # a setting changes the id
    assert [c.cell_id for c in load_grid(write(imgs, text.replace("steps: 2", "steps: 3")), "g").cells] != ids


def test_options_at_their_neutral_value_keep_cell_ids() -> None:
    """Finished cells stay finished when the engine gains an option: ids ignore options at their no-op value."""
    from nst.config import make_config
    from nst.data import image
    from nst.experiments import ID_NEUTRAL, cell_id

    c, s = image("tubingen.jpg"), [image("starry_night.jpg")]
    # the engine's default schedule is not neutral: the one-scale setting (experiments.yaml's defaults) with the
    # unprojected L-BFGS of before issue 14 is; the projected default (lbfgs_clamp) changes what a cell computes
    neutral = dict(scales=None, scale_detail=False, lbfgs_clamp=False, weight_steps=0.0, lbfgs_first_step=None)
    base = cell_id("gatys", make_config(size=64, steps=3, **neutral), c, s)
    assert cell_id("gatys", make_config(size=64, steps=3, **ID_NEUTRAL), c, s) == base
    assert cell_id("gatys", make_config(size=64, steps=3, **{**neutral, "lbfgs_clamp": True}), c, s) != base
    assert cell_id("gatys", make_config(size=64, steps=3, **{**neutral, "lbfgs_first_step": 1e-3}), c, s) != base
    assert cell_id("gatys", make_config(size=64, steps=3, photoreal_weight=10.0), c, s) != base
    assert cell_id("gatys", make_config(size=64, steps=3, scales=((0.5, 10),)), c, s) != base
