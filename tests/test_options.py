"""One definition of each option: entry points and the guide are checked against ``Options``."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path

import pytest

from anyloader import AsyncDataset, MemorySource, Options, open_stream
from anyloader._options import LoaderOptions, options_table

GUIDE = Path(__file__).parent.parent / "docs" / "guide.md"
FIELDS = {f.name: f for f in dataclasses.fields(Options)}


def test_loader_options_mirror_options_but_columns() -> None:
    hints = typing.get_type_hints(LoaderOptions)
    option_hints = typing.get_type_hints(Options)
    assert set(hints) == set(FIELDS) - {"columns"}
    for name, hint in hints.items():
        assert hint == option_hints[name], name


@pytest.mark.parametrize("entry", [AsyncDataset.__init__, open_stream])
def test_entry_points_take_columns_with_the_same_default_and_options(entry: object) -> None:
    params = inspect.signature(entry).parameters  # type: ignore[arg-type]
    assert params["columns"].default is FIELDS["columns"].default
    (var_kw,) = [p for p in params.values() if p.kind is p.VAR_KEYWORD]
    assert "LoaderOptions" in str(var_kw.annotation)


def test_every_option_has_a_check_a_type_and_a_doc() -> None:
    for f in FIELDS.values():
        assert callable(f.metadata["check"]), f.name
        assert f.metadata["kind"], f.name
        assert f.metadata["doc"], f.name
        # The default passes its own check.
        assert f.metadata["check"](f.name, f.default) == f.default, f.name


def test_defaults_are_what_entry_points_use() -> None:
    ds = AsyncDataset(MemorySource({"x": [1, 2, 3]}))
    assert ds.config.options == Options()


def test_the_guide_shows_the_generated_option_table() -> None:
    assert options_table() in GUIDE.read_text(), (
        "docs/guide.md's option table differs from anyloader._options.options_table(); "
        "paste the generated table into the guide"
    )


def test_unknown_option_names_the_valid_ones() -> None:
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['fetchsize'\].*fetch_size"):
        Options.validate(fetchsize=4)
