"""Every deeplake view is a source: slices, index lists, query and filtered views, nested ones.

Each view is checked against deeplake's own read of the same view: every view row (its
position ``0..len-1``, repeated indices included) is yielded exactly once, with its content.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from torch.utils.data import DataLoader

from anyloader import AsyncDataset, DeeplakeSource

ROWS = 40

#: How each kind of view is made from a read-only dataset (``ro``) or a writable one (``rw``).
VIEWS: dict[str, Callable[[Any, Any], Any]] = {
    "slice": lambda ro, rw: ro[10:30],
    "index-list": lambda ro, rw: ro[[7, 3, 3, 25, 0, 39]],  # unsorted, 3 twice
    "query": lambda ro, rw: ro.query("SELECT * ORDER BY id DESC LIMIT 12"),
    "filtered": lambda ro, rw: ro.query("SELECT * WHERE id % 3 = 1"),
    "slice-of-query": lambda ro, rw: ro.query("SELECT * WHERE id >= 5")[3:20],
    "list-of-query": lambda ro, rw: ro.query("SELECT * WHERE id >= 5")[[4, 0, 4, 30]],
    "query-of-query": lambda ro, rw: ro.query("SELECT * WHERE id >= 5").query(
        "SELECT * WHERE id % 2 = 0"
    ),
    "writable-slice": lambda ro, rw: rw[5:25],
}
# Views deeplake cannot pickle (no schema either): read by row, fork workers only.
ROW_VIEWS = ["slice", "index-list", "slice-of-query", "list-of-query", "writable-slice"]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A dataset of ``ROWS`` rows: ``id`` = row number, a 16x16 JPEG and a text label."""
    import deeplake
    from deeplake import types

    url = f"file://{tmp_path_factory.mktemp('views') / 'ds'}"
    ds = deeplake.create(url)
    ds.add_column("id", types.Int64())
    ds.add_column("img", types.Image(types.UInt8(), sample_compression="jpeg"))
    ds.add_column("label", types.Text())
    rng = np.random.default_rng(3)
    ds.append(
        {
            "id": list(range(ROWS)),
            "img": [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(ROWS)],
            "label": [f"row-{i}" for i in range(ROWS)],
        }
    )
    ds.commit()
    return url


def make_view(url: str, kind: str) -> Any:
    import deeplake

    return VIEWS[kind](deeplake.open_read_only(url), deeplake.open(url))


def deeplake_read(view: Any, column: str) -> list[Any]:
    """deeplake's own read of every row of ``view``, in the view's order."""
    values = view[column]  # a column handle, or (views without a schema) the values
    return list(values[:] if hasattr(values, "get_async") else values)


def check_exactly_once(view: Any, samples: list[dict[str, Any]]) -> None:
    """Each view row once, by position, with deeplake's id, pixels and label for it."""
    ids, images, labels = (deeplake_read(view, c) for c in ("id", "img", "label"))
    positions = sorted(int(s["index"]) for s in samples)
    assert positions == list(range(len(view)))
    assert len(view) > 0
    for s in samples:
        row = int(s["index"])
        assert int(s["id"]) == ids[row]
        np.testing.assert_array_equal(np.asarray(s["img"]), images[row])
        assert s["label"] == labels[row]


@pytest.mark.parametrize("kind", list(VIEWS))
def test_every_view_kind_streams_each_row_once(url: str, kind: str, backend: str) -> None:
    view = make_view(url, kind)
    ds = AsyncDataset(view, backend=backend, shuffle=True, fetch_size=3, return_index=True)
    assert len(ds) == len(view)
    check_exactly_once(view, list(ds))


@pytest.mark.parametrize("kind", list(VIEWS))
def test_every_view_kind_streams_each_row_once_in_fork_workers(url: str, kind: str) -> None:
    view = make_view(url, kind)
    backend = ["asyncio", "trio"][list(VIEWS).index(kind) % 2]  # both, without doubling the cost
    ds = AsyncDataset(view, backend=backend, shuffle=True, fetch_size=2, return_index=True)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    check_exactly_once(view, list(loader))


@pytest.mark.parametrize("kind", ["query", "filtered", "query-of-query"])
def test_a_view_with_a_schema_pickles_as_itself(url: str, kind: str) -> None:
    # What a spawn worker receives: the query, run again on unpickling.
    view = make_view(url, kind)
    copy = pickle.loads(pickle.dumps(AsyncDataset(view, return_index=True)))
    check_exactly_once(view, list(copy))


@pytest.mark.slow
def test_a_chained_query_view_reaches_spawn_workers(url: str) -> None:
    view = make_view(url, "query-of-query")
    ds = AsyncDataset(view, backend="trio", fetch_size=2, return_index=True)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    check_exactly_once(view, list(loader))


@pytest.mark.parametrize("kind", ["slice", "index-list", "writable-slice"])
def test_a_view_deeplake_cannot_pickle_is_refused_by_name(url: str, kind: str) -> None:
    view = make_view(url, kind)
    with pytest.raises(TypeError, match=rf"{type(view).__name__}.*fork workers.*query view"):
        pickle.dumps(AsyncDataset(view))


@pytest.mark.slow
def test_spawn_workers_of_a_row_range_view_fail_at_once_and_say_why(url: str) -> None:
    loader = DataLoader(
        AsyncDataset(make_view(url, "slice")), num_workers=2, multiprocessing_context="spawn"
    )
    # torch warns about the pickling error (guessing at Python 3.14's start method), then
    # re-raises ours, in this process, before any worker runs.
    with (
        pytest.raises(TypeError, match=r"RowRangeView.*cannot be pickled"),
        pytest.warns(UserWarning, match="pickle error"),
    ):
        next(iter(loader))


class Recording(DeeplakeSource):
    """Records which method read the ``img`` column."""

    def __init__(self, view: Any) -> None:
        super().__init__(view)
        self.img_reads: set[str] = set()

    def _column(self, name: str) -> Any:
        column, reads = super()._column(name), self.img_reads
        if name != "img":
            return column

        class Spy:
            def get_async(self, rows: list[int]) -> Any:
                reads.add("get_async")
                return column.get_async(rows)

            def get_bytes_async(self, rows: list[int]) -> Any:
                reads.add("get_bytes_async")
                return column.get_bytes_async(rows)

        return Spy()


@pytest.mark.parametrize(
    ("kind", "read_with"),
    [
        ("filtered", "get_bytes_async"),  # bytes, decoded by us
        ("query-of-query", "get_bytes_async"),
        ("slice", "get_async"),  # no schema, so no column types: deeplake decodes
        ("list-of-query", "get_async"),
    ],
)
def test_jpeg_bytes_are_read_where_the_view_has_a_schema(
    url: str, kind: str, read_with: str, backend: str
) -> None:
    view = make_view(url, kind)
    source = Recording(view)
    samples = list(AsyncDataset(source, backend=backend, return_index=True, decode="auto"))
    assert source.img_reads == {read_with}
    check_exactly_once(view, samples)


def test_an_empty_view_without_a_schema_is_refused(url: str) -> None:
    import deeplake

    with pytest.raises(ValueError, match="RowRangeView is empty"):
        AsyncDataset(deeplake.open_read_only(url)[5:5])


@pytest.mark.parametrize("thing", [object(), [1, 2, 3], np.arange(4), {"id": [1]}])
def test_what_is_not_dataset_like_is_refused_by_type(thing: object) -> None:
    with pytest.raises(TypeError, match=rf"deeplake dataset or view.*{type(thing).__name__}"):
        AsyncDataset(thing)
    with pytest.raises(TypeError, match=type(thing).__name__):
        DeeplakeSource(thing)
