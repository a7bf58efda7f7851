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

SRC = Path(__file__).resolve().parents[1] / "src" / "anyloader"

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


def modules() -> Iterator[tuple[str, Path]]:
    """``(dotted name under anyloader, path)`` of every module in the package."""
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        yield ".".join(parts), path


def unit(name: str) -> str:
    """The floor's key of a module: its folder, or its own name at the top."""
    return name.split(".")[0]


def imports(name: str, path: Path) -> set[str]:
    """The anyloader modules ``name`` imports, as dotted names under anyloader."""
    # The package a relative import starts from: a folder's __init__ is its folder.
    package = name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "anyloader":
                target = node.module.split(".")[1:]
            else:
                continue
            if not target:  # ``from . import x`` / ``from anyloader import x``
                found.update(alias.name for alias in node.names)
            else:
                found.add(".".join(target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("anyloader."):
                    found.add(alias.name.removeprefix("anyloader."))
    return found


GRAPH = {name: imports(name, path) for name, path in modules()}


def test_every_module_has_a_floor() -> None:
    units = {unit(name) for name in GRAPH}
    assert units == set(FLOOR), f"on no floor: {units - set(FLOOR)}; gone: {set(FLOOR) - units}"


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_point_down(name: str) -> None:
    up = sorted(t for t in GRAPH[name] if FLOOR[unit(t)] > FLOOR[unit(name)])
    assert not up, f"anyloader.{name} imports {up}, from a floor above its own"


def test_no_cycles() -> None:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(GRAPH.get(name, ())):
            if target not in GRAPH:
                continue  # a package's __init__ named through its folder
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target] if target in path else [name, target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_the_check_sees_an_import_that_points_up(tmp_path: Path) -> None:
    """The checker itself: a plan module importing the engine is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from .._engine.config import LoaderConfig\n")
    found = imports("_plan.bad", bad)
    assert found == {"_engine.config"}
    assert FLOOR[unit("_engine.config")] > FLOOR[unit("_plan.bad")]
