"""Import contracts of the three layers, read from the source with `ast` (nothing is imported):

* no import cycle among the modules of nst/, tasks/ and flows/ (imports inside functions count:
  a late import hides a cycle, it does not remove it);
* nothing in nst/ imports tasks or flows, nothing in tasks/ imports flows (nst is the plain
  library; the layers above plug into it by entry point);
* no module imports another module's private (``_underscore``) name, by ``from m import _x`` or
  as ``m._x`` on an imported module.

`KNOWN_TASKS_VIOLATIONS` lists what tasks/ still does wrong: nothing since issue 13's phase 2 (it
may only shrink, and nothing in nst/ or flows/ may be listed).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nst", "tasks", "flows")
#: Which layers each layer may not import.
FORBIDDEN = {"nst": ("tasks", "flows"), "tasks": ("flows",), "flows": ()}

#: Violations tolerated for now, each (kind, description) as reported below; empty since phase 2 of
#: issue 13 split tasks/cell.py.  Nothing may be added: fix the import instead.
KNOWN_TASKS_VIOLATIONS: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _resolve(module: str, level: int, current: str) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in module `current`."""
    if not level:
        return module
    base = current.split(".") if _is_package(current) else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _internal(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _imports(name: str, path: Path) -> tuple[set[str], list[str]]:
    """The internal modules `name` imports, and the private names it takes from other modules."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    deps: set[str] = set()
    private: list[str] = []
    aliases: dict[str, str] = {}  # local name -> internal module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _internal(a.name):
                    deps.add(a.name)
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            src = _resolve(node.module or "", node.level, name)
            if not _internal(src):
                continue
            for a in node.names:
                sub = f"{src}.{a.name}"
                if sub in MODULES:  # a module of the package
                    deps.add(sub)
                    aliases[a.asname or a.name] = sub
                else:
                    deps.add(src)
                    if a.name.startswith("_") and not a.name.startswith("__") and src != name:
                        private.append(f"{name} imports {src}.{a.name}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            target = aliases[node.value.id]
            if f"{target}.{node.attr}" not in MODULES and target != name:
                private.append(f"{name} imports {target}.{node.attr}")
    deps.discard(name)
    return {d for d in deps if d in MODULES}, sorted(set(private))


GRAPH: dict[str, set[str]] = {}
PRIVATE: list[str] = []
for _name, _path in MODULES.items():
    GRAPH[_name], _priv = _imports(_name, _path)
    PRIVATE.extend(_priv)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan): the modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(comps)


def _one_cycle(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component (for the message)."""
    start = min(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


def _violations() -> set[tuple[str, str]]:
    found = {("cycle", "among " + ", ".join(c) + f" (e.g. {' -> '.join(_one_cycle(GRAPH, set(c)))})")
             for c in _cycles(GRAPH)}
    for mod, deps in GRAPH.items():
        layer = mod.split(".")[0]
        for d in sorted(deps):
            if d.split(".")[0] in FORBIDDEN[layer]:
                found.add(("upward", f"{mod} imports {d}"))
    found |= {("private", p) for p in PRIVATE}
    return found


def _key(text: str) -> str:
    """A violation without its example path (cycles are listed by their modules)."""
    return text.split(" (e.g. ")[0]


def test_the_checker_sees_the_modules_and_their_imports() -> None:
    assert {"nst.optimize", "nst.methods", "tasks.cell", "flows.grid"} <= set(GRAPH)
    assert "nst.photoreal" in GRAPH["nst.optimize"] and "nst.regions" in GRAPH["nst.methods"]
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(toy) == [["a", "b", "c"]] and _one_cycle(toy, {"a", "b", "c"}) == ["a", "b", "c", "a"]


def test_known_violations_are_only_in_tasks() -> None:
    for _, text in KNOWN_TASKS_VIOLATIONS:
        named = re.findall(r"\b(?:nst|tasks|flows)\.[\w.]+", text)
        assert named and all(m.startswith("tasks.") for m in named), text


@pytest.mark.parametrize("kind", ["cycle", "upward", "private"])
def test_import_contract(kind: str) -> None:
    found = {v for v in _violations() if v[0] == kind}
    new = sorted(text for k, text in found if (k, _key(text)) not in KNOWN_TASKS_VIOLATIONS)
    assert not new, f"{kind} import(s) against the layer contract: " + "; ".join(new)


def test_known_violations_are_still_there() -> None:
    """A fixed violation leaves the list (so the list only shrinks)."""
    gone = sorted(text for _, text in KNOWN_TASKS_VIOLATIONS - {(k, _key(t)) for k, t in _violations()})
    assert not gone, f"fixed, remove from KNOWN_TASKS_VIOLATIONS: {gone}"
