"""The layout is the architecture: imports point down the floors, never up, never in a cycle.

Every import of one anyloader module by another counts: at module level, inside
a function, or for type checking only. A module may import its own floor's and
lower floors' modules; within a floor the imports must not form a cycle.
docs/architecture.md describes the same floors.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "anyloader"

#: Bottom to top. A folder's modules share its floor; top-level modules are named.
FLOORS: list[tuple[str, ...]] = [
    ("_core",),  # argument checks, signals in our threads
    ("_plan",),  # order, plan, epochs, rank, state, geometry: pure values
    ("_stats",),  # what an epoch measured, the worker channel
    ("_batch",),  # columns' forms, batch tensors, collate
    ("_decode",),  # JPEG, resize, the epoch's decode threads, placing rows
    ("_sources",),  # the Source protocol, deeplake, synthetic, faults
    ("_options",),  # every option, defined once
    ("_engine",),  # config, retry, pipeline, loop thread, handout, iterator, stream
    ("_dataset", "_loader"),  # the torch face
    ("_advice", "_profile", "_demo", "__main__"),  # the command line
    ("__init__",),  # the public API
]
FLOOR = {name: level for level, names in enumerate(FLOORS) for name in names}


def modules(root: Path = SRC) -> Iterator[tuple[str, Path]]:
    """``(dotted name within the package, path)`` of every module of the package at ``root``."""
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        yield ".".join(parts), path


def unit(name: str) -> str:
    """The floor's key of a module: its folder, or its own name at the top."""
    return name.split(".")[0]


def imports(name: str, path: Path, package_name: str = "anyloader") -> set[str]:
    """The modules of the package that ``name`` imports, as dotted names within it."""
    # The package a relative import starts from: a folder's __init__ is its folder.
    package = name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == package_name:
                target = node.module.split(".")[1:]
            else:
                continue
            if not target:  # ``from . import x`` / ``from anyloader import x``
                found.update(alias.name for alias in node.names)
            else:
                found.add(".".join(target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(f"{package_name}."):
                    found.add(alias.name.removeprefix(f"{package_name}."))
    return found


GRAPH = {name: imports(name, path) for name, path in modules()}


def test_every_module_has_a_floor() -> None:
    units = {unit(name) for name in GRAPH}
    assert units == set(FLOOR), f"on no floor: {units - set(FLOOR)}; gone: {set(FLOOR) - units}"


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_point_down(name: str) -> None:
    up = sorted(t for t in GRAPH[name] if FLOOR[unit(t)] > FLOOR[unit(name)])
    assert not up, f"anyloader.{name} imports {up}, from a floor above its own"


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """An import cycle of ``graph``, as the path around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if target not in graph:
                continue  # a package's __init__ named through its folder
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target, [*path, target])):
                return found
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name, [name])):
            return found
    return None


def test_no_cycles() -> None:
    assert cycle(GRAPH) is None


def test_the_benchmarks_import_without_cycles() -> None:
    bench = ROOT / "benchmarks"
    graph = {n: imports(n, p, "benchmarks") for n, p in modules(bench)}
    assert {"run", "report", "decode"} <= set(graph)  # it looked where the harness is
    assert cycle(graph) is None


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_check_sees_an_import_that_points_up(tmp_path: Path) -> None:
    """The checker itself: a plan module importing the engine is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from .._engine.config import LoaderConfig\n")
    found = imports("_plan.bad", bad)
    assert found == {"_engine.config"}
    assert FLOOR[unit("_engine.config")] > FLOOR[unit("_plan.bad")]
