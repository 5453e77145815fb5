"""Lint is part of the suite: `ruff check` (rules and their reasons in pyproject.toml) on every Python
folder of the project, so the test command fails on a finding, with ruff's own report as the message."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("nst", "tasks", "flows", "tests", "benchmarks", "tools")


def _ruff() -> list[str]:
    try:
        import ruff  # noqa: F401  (the wheel of the `test` extra; `python -m ruff` runs its binary)
    except ImportError:
        if shutil.which("ruff"):
            return ["ruff"]
        pytest.fail("ruff is not installed: pip install -c constraints.txt -e '.[test]'")
    return [sys.executable, "-m", "ruff"]


def test_ruff_finds_nothing() -> None:
    out = subprocess.run([*_ruff(), "check", "--no-cache", "--output-format", "concise", *FOLDERS],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"ruff check {' '.join(FOLDERS)}:\n{out.stdout}{out.stderr}"
