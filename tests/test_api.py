"""The public API: what ``__all__`` promises exists, is documented and typed."""

from __future__ import annotations

import inspect
from pathlib import Path

import anyloader


def test_all_names_exist_and_are_documented() -> None:
    for name in anyloader.__all__:
        obj = getattr(anyloader, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_all_is_sorted_and_complete() -> None:
    public = {n for n in vars(anyloader) if not n.startswith("_")}
    assert set(anyloader.__all__) <= public
    assert sorted(anyloader.__all__) == sorted(set(anyloader.__all__))


def test_package_ships_py_typed() -> None:
    assert (Path(anyloader.__file__).parent / "py.typed").exists()


def test_async_dataset_signature_matches_the_documented_api() -> None:
    params = list(inspect.signature(anyloader.AsyncDataset).parameters)
    assert params[:11] == [
        "source",
        "columns",
        "backend",
        "concurrency",
        "prefetch",
        "fetch_size",
        "shuffle",
        "seed",
        "ordered",
        "transform",
        "return_index",
    ]
