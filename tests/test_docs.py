"""The documentation stays true: docs/cli.md is what the parsers say, and every local link resolves."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

# [text](target) and ![alt](target), also inside tables; <img src="..."> too
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMG = re.compile(r"<img[^>]+src=\"([^\"]+)\"")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


#: The README's first two commands: CI (.ci/run) and users run exactly these.
COMMANDS = (
    'pip install -c constraints.txt -e ".[all]" && nst grid run experiments.yaml --grid demo\n'
    'pip install -c constraints.txt -e ".[all,test]" && python -m pytest -q\n'
)


def _cli_reference():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "tools" / "cli_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_reference_is_generated_from_the_parsers_and_current(tmp_path):
    """docs/cli.md is regenerated into a temporary file; a difference means a parser changed without
    `python tools/cli_reference.py` being run."""
    mod = _cli_reference()
    from nst.cli import build_parser

    commands = set()
    for action in build_parser()._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            commands |= set(action.choices)
    if "grid" not in commands:
        pytest.skip("the flows plug-in (nst grid) is not installed here; docs/cli.md documents it")
    out = tmp_path / "cli.md"
    assert mod.main(["--out", str(out)]) == 0
    fresh = out.read_text(encoding="utf-8")
    for name in commands:
        assert f"## `nst {name}`" in fresh
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == fresh, (
        "docs/cli.md is stale: run `python tools/cli_reference.py`"
    )


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in FENCE.sub("", text).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            out.add(slug)
    return out


def _local_links(path: Path):
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    for target in LINK.findall(text) + IMG.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        yield target


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_local_link_and_image_exists(doc):
    missing = []
    for target in _local_links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / unquote(file_part)).resolve() if file_part else doc
        if not dest.exists():
            missing.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text(encoding="utf-8")):
            missing.append(f"{target} (no such heading)")
    assert not missing, f"{doc.relative_to(ROOT)}: broken links: {missing}"


def test_readme_is_a_guide_of_a_few_screens():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("# nst-lab\n\n```bash\n" + COMMANDS + "```\n"), "the two commands come first, unchanged"
    assert len(text.splitlines()) <= 150
    assert "docs/images/browse_compare.png" in text
