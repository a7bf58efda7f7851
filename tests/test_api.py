"""The public API: ``__all__`` is exactly the public names, in order, documented and typed."""

from __future__ import annotations

import inspect
from pathlib import Path

import anyloader


def test_all_is_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(anyloader).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert set(anyloader.__all__) == public
    assert len(anyloader.__all__) == len(set(anyloader.__all__))


def test_all_is_in_isort_order() -> None:
    # Constants, then classes, then functions, each alphabetical (ruff's RUF022 order).
    def key(name: str) -> tuple[bool, bool, str]:
        return (not name.isupper(), not name[0].isupper(), name)

    assert anyloader.__all__ == sorted(anyloader.__all__, key=key)


def test_every_public_class_and_function_is_documented() -> None:
    for name in anyloader.__all__:
        obj = getattr(anyloader, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_package_ships_py_typed() -> None:
    assert (Path(anyloader.__file__).parent / "py.typed").exists()


def test_async_dataset_keeps_source_columns_backend_positional() -> None:
    params = list(inspect.signature(anyloader.AsyncDataset).parameters.values())
    assert [p.name for p in params[:3]] == ["source", "columns", "backend"]
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params[:3])
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params[3:])


def test_examples_use_only_the_public_api() -> None:
    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))
    assert {"ddp_train.py", "lightning_train.py"} <= {e.name for e in examples}
    for example in examples:
        text = example.read_text()
        private = "anyloader._" in text or "from anyloader import _" in text
        assert not private, f"{example.name} imports a private module"
