"""Bad input, fuzzed: mutations of the shipped experiments.yaml and of CLI arguments each get one line.

Every case must end as exit 0 (a harmless mutation) or exit 2 with a single ``nst: error: ...`` line
that names where (a YAML path, a flag or the file) — never a traceback.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nst.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = yaml.safe_load((ROOT / "experiments.yaml").read_text())
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder where the shipped file's relative paths resolve, with its own tracking store."""
    d = tmp_path_factory.mktemp("fuzz")
    (d / "nst").symlink_to(ROOT / "nst")
    return d


@pytest.fixture(autouse=True)
def _store(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NST_HOME", str(workdir / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'home' / 'mlflow.db'}")


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_one_line(code: int, err: str, what: str) -> None:
    assert code in (0, 2), (code, err[-2000:], what)
    if code == 2:
        # progress bars (tqdm, redrawn with \r on a terminal) are not messages
        lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
        assert "Traceback" not in err, (err[-3000:], what)
        assert len(lines) == 1 or (lines[0].startswith("usage:") and len(lines) <= 3), (err, what)
        assert "error" in lines[-1], (err, what)


# --------------------------------------------------------------------------- mutations of the YAML

def _paths(node, prefix=()):
    """Every (path, value) in the document, containers included."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


ALL_PATHS = [p for p, _ in _paths(SHIPPED) if p]
LEAVES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True) |
    st.text(max_size=12) | st.sampled_from(["nst/data/images/tubingen.jpg", "vgg99", "-1", "1e400", "~", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _set(doc, path, value):
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


def _deep(depth: int):
    v: object = "x"
    for i in range(depth):
        v = [v] if i % 2 else {"k": v}
    return v


MUTATIONS = st.one_of(
    st.tuples(st.just("replace"), st.sampled_from(ALL_PATHS), LEAVES),
    st.tuples(st.just("delete"), st.sampled_from(ALL_PATHS), st.none()),
    st.tuples(st.just("unknown key"), st.sampled_from([p for p in ALL_PATHS if isinstance(
        dict(_paths(SHIPPED))[p], dict)]), st.text(min_size=1, max_size=8)),
    st.tuples(st.just("deep"), st.sampled_from(ALL_PATHS), st.integers(20, 200)),
    st.tuples(st.just("empty axis"), st.sampled_from([p for p in ALL_PATHS if len(p) == 4 and p[2] == "axes"]),
              st.none()),
)


def _mutate(kind, path, arg):
    doc = copy.deepcopy(SHIPPED)
    if kind == "replace":
        _set(doc, path, arg)
    elif kind == "delete":
        node = doc
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
    elif kind == "unknown key":
        node = doc
        for k in path:
            node = node[k]
        node[arg] = 1
    elif kind == "deep":
        _set(doc, path, _deep(arg))
    else:
        _set(doc, path, [])
    grid = path[1] if len(path) > 1 and path[0] == "grids" and isinstance(path[1], str) else "demo"
    return doc, grid


@FUZZ
@given(MUTATIONS)
def test_mutated_experiments_file_gets_one_line(workdir: Path, mutation) -> None:
    doc, grid = _mutate(*mutation)
    f = workdir / "exp.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, _, err = run_cli(["grid", "run", str(f), "--grid", str(grid), "--dry-run", "--quiet"])
    assert_one_line(code, err, repr(mutation)[:300])


@FUZZ
@given(st.integers(0, len((ROOT / "experiments.yaml").read_text()) - 1), st.text(min_size=1, max_size=5))
def test_broken_yaml_text_gets_one_line(workdir: Path, cut: int, junk: str) -> None:
    text = (ROOT / "experiments.yaml").read_text()
    f = workdir / "broken.yaml"
    f.write_text(text[:cut] + junk + text[cut + len(junk):])
    code, _, err = run_cli(["grid", "run", str(f), "--grid", "demo", "--dry-run", "--quiet"])
    assert_one_line(code, err, f"cut {cut} junk {junk!r}")


def test_a_huge_axis_product_is_refused_before_any_work_with_the_count(workdir: Path) -> None:
    doc = copy.deepcopy(SHIPPED)
    doc["grids"]["demo"]["axes"]["seed"] = list(range(1000))
    doc["grids"]["demo"]["axes"]["style_weight"] = [float(i) for i in range(1, 101)]
    f = workdir / "huge.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, _, err = run_cli(["grid", "run", str(f), "--grid", "demo", "--dry-run"])
    assert code == 2 and err.count("\n") == 1, err
    assert "grids.demo.axes: 400,000 cells" in err and "100,000" in err, err


# --------------------------------------------------------------------------- CLI arguments

FLAGS = ["--size", "--steps", "--style-weight", "--content-weight", "--tv-weight", "--lr", "--scales", "--seed",
         "--backbone", "--pooling", "--init", "--optimizer", "--precision", "--device", "--style-scale",
         "--content-layers", "--style-layers", "--preserve-color", "--style-weights"]
VALUES = st.sampled_from(["-1", "0", "4", "16", "abc", "1e400", "nan", "", "0.5:x", "vgg99", "cuda:7", "relu9_9", "inf",
                          "2:3:4", "--", "999999999"])


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(FLAGS), VALUES), min_size=1, max_size=3))
def test_bad_stylize_arguments_get_one_line(workdir: Path, args) -> None:
    out = workdir / "out.png"
    argv = ["stylize", "--content", str(ROOT / "nst/data/images/tubingen.jpg"),
            "--style", str(ROOT / "nst/data/images/starry_night.jpg"), "--out", str(out)]
    given_flags = {f for f, _ in args}
    for flag, default in (("--size", "32"), ("--steps", "1"), ("--scales", "none")):
        if flag not in given_flags:
            argv += [flag, default]
    for flag, value in args:
        argv += [flag, value] if not value.startswith("-") else [f"{flag}={value}"]
    out.unlink(missing_ok=True)
    code, _, err = run_cli(argv)
    assert_one_line(code, err, repr(args))
    if code == 2:
        assert not out.exists() and not list(workdir.glob("*.tmp")), "a failed run wrote a file"
