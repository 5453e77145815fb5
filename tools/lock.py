"""Write constraints.txt: the exact versions of nst-lab's dependency closure in this environment.

Run it in an environment where ``pip install -e ".[all,test]"`` worked and the suite passed;
it walks nst-lab's requirements (with their extras and environment markers) through the
installed distributions' metadata and pins every package reached, so the README's commands
and .ci/run install exactly what was tested.  Refresh::

    python -m venv /tmp/lockenv && /tmp/lockenv/bin/pip install -e ".[all,test]" \
        && /tmp/lockenv/bin/python -m pytest -q && /tmp/lockenv/bin/python tools/lock.py
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = "nst-lab"
EXTRAS = ("all", "test")
OUT = Path(__file__).resolve().parents[1] / "constraints.txt"


def closure(root: str, extras: tuple[str, ...]) -> dict[str, str]:
    """name -> installed version of every distribution `root[extras]` needs here."""
    pinned: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"lock: {name} is required but not installed; install .[all,test] first") from None
        key = canonicalize_name(dist.metadata["Name"])
        if key != canonicalize_name(root):
            pinned[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            todo.append((req.name, frozenset(req.extras)))
    return pinned


def main() -> int:
    pins = closure(ROOT, EXTRAS)
    py = ".".join(map(str, sys.version_info[:2]))
    lines = [
        f"# nst-lab's dependency closure ({ROOT}[{','.join(EXTRAS)}]) as installed and tested on Python {py}.",
        "# Written by tools/lock.py; used by the README's commands and .ci/run as `pip install -c constraints.txt`.",
        *(f"{name}=={version}" for name, version in sorted(pins.items())),
    ]
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(OUT)
    print(f"{OUT}: {len(pins)} packages pinned")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
