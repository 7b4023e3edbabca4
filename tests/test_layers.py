"""The house's layering, read from the code's own imports: no module imports one that imports it back, and the
packages under fleetsim/ (runner, results, report, broker/embedded, ...) depend on each other in one direction
only, so each can be read without the ones above it. Pure: the sources are parsed, nothing is imported."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "fleetsim"
README = ROOT.parent / "README.md"


def _modules() -> dict[str, Path]:
    """Every module of fleetsim by its dotted name (a package by its __init__.py)."""
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = ("fleetsim", *path.relative_to(ROOT).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The fleetsim modules a file imports, wherever in it (inside functions too): ``from P import m`` is m when m
    is a module, else P."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module in modules and node.level == 0:
            for a in node.names:
                yield f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module


def _graph(group: int | None = None) -> dict[str, set[str]]:
    """Who imports whom: modules, or (``group`` = depth) the packages holding them, e.g. fleetsim.runner."""
    modules = _modules()

    def key(name: str) -> str:
        if group is None:
            return name
        cut = ".".join(name.split(".")[:group])
        return cut if cut in modules and modules[cut].name == "__init__.py" else name

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph.setdefault(key(name), set()).update(key(m) for m in _imports(path, modules) if key(m) != key(name))
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected parts of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while (w := stack.pop()) != v:
                part.append(w)
            if part:
                out.append(sorted([v, *part]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert _circles(_graph()) == []


def test_the_packages_depend_on_each_other_in_one_direction() -> None:
    """fleetsim.X for the top level, fleetsim.broker.X inside the broker."""
    assert _circles(_graph(group=2)) == []
    assert _circles(_graph(group=3)) == []


def test_the_scenario_rules_know_no_scenario() -> None:
    """validate checks plain data against the parts; the Scenario is made through it, not the reverse."""
    modules = _modules()
    assert "fleetsim.scenario.schema" not in set(_imports(modules["fleetsim.scenario.validate"], modules))


def _table_rows() -> list[list[str]]:
    """The README's "How it fits together": each row's fleetsim paths as dotted names, first row first."""
    text = README.read_text().split("## How it fits together", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| `fleetsim/")]
    return [[p.removesuffix("/").removesuffix(".py").replace("/", ".") for p in re.findall(r"`(fleetsim/[\w/.]*)`", row)]
            for row in rows]


def test_the_readme_table_names_every_part_and_each_uses_only_the_rows_above_it() -> None:
    rows = _table_rows()
    modules = _modules()

    def row_of(name: str) -> int | None:
        found = [i for i, row in enumerate(rows) for part in row if name == part or name.startswith(part + ".")]
        return found[-1] if found else None

    unplaced = sorted(m for m in modules if row_of(m) is None and m not in ("fleetsim", "fleetsim.__main__"))
    assert unplaced == [], "give each a row in the README's table"
    below = sorted(f"{name} -> {m}" for name, path in modules.items() if (mine := row_of(name)) is not None
                   for m in _imports(path, modules) if (theirs := row_of(m)) is not None and theirs > mine)
    assert below == [], "an import of a row below: move a row, or the code"
