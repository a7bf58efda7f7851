"""Default requests: rows per request and requests in flight chosen from what a row costs."""

from __future__ import annotations

from collections.abc import Sequence

import deeplake
import numpy as np
import pytest

from anyloader import AsyncDataset, MemorySource
from anyloader._engine.config import (
    IN_FLIGHT_ROWS,
    MAX_FETCH_SIZE,
    MIN_CONCURRENCY,
    REQUEST_BYTES,
    UNKNOWN_FETCH_SIZE,
)
from anyloader._sources.source import Columns


def sized(row_bytes: int, rows: int = 8) -> MemorySource:
    return MemorySource({"x": np.zeros((rows, row_bytes), np.uint8)})


class Silent:
    """A source that says nothing of its rows' size."""

    columns = ("x",)

    def __len__(self) -> int:
        return 8

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        return {"x": np.asarray(indices)}


@pytest.mark.parametrize(
    ("row_bytes", "fetch_size", "concurrency"),
    [
        (8, MAX_FETCH_SIZE, MIN_CONCURRENCY),  # tiny rows: as many as a request takes
        (REQUEST_BYTES // 5, 4, IN_FLIGHT_ROWS // 4),  # 5 fit: the power of two below
        (REQUEST_BYTES, 1, IN_FLIGHT_ROWS),  # a request's worth: one row each
        (3 * REQUEST_BYTES, 1, IN_FLIGHT_ROWS),  # bigger still: never below one
    ],
)
def test_a_request_carries_about_request_bytes_of_rows(
    row_bytes: int, fetch_size: int, concurrency: int
) -> None:
    config = AsyncDataset(sized(row_bytes)).config
    assert (config.fetch_size, config.concurrency) == (fetch_size, concurrency)
    assert config.budget == 64 + fetch_size * concurrency  # the row budget follows


def test_a_source_silent_on_its_sizes_gets_the_middle_choice() -> None:
    config = AsyncDataset(Silent()).config
    assert config.fetch_size == UNKNOWN_FETCH_SIZE
    assert config.concurrency == max(MIN_CONCURRENCY, IN_FLIGHT_ROWS // UNKNOWN_FETCH_SIZE)


def test_the_users_choice_wins() -> None:
    config = AsyncDataset(sized(8), fetch_size=3, concurrency=7).config
    assert (config.fetch_size, config.concurrency) == (3, 7)
    assert AsyncDataset(sized(8), fetch_size=2).config.concurrency == IN_FLIGHT_ROWS // 2


def test_only_the_columns_read_count() -> None:
    source = MemorySource({"small": np.zeros((4, 8), np.uint8), "big": np.zeros((4, 1 << 20))})
    assert AsyncDataset(source, columns=["small"]).config.fetch_size == MAX_FETCH_SIZE
    assert AsyncDataset(source).config.fetch_size == 1  # 8 MiB of float64 a row


def test_deeplake_rows_are_sized_by_their_stored_bytes(pairs_url: str) -> None:
    """The statistics deeplake keeps (nothing is fetched) match the bytes a request reads."""
    source = AsyncDataset(pairs_url).config.source
    ds = deeplake.open_read_only(pairs_url)
    stored = sum(
        sum(len(b) for b in ds[c].get_bytes(slice(0, len(ds)))) / len(ds) for c in ("images",)
    )
    estimate = source.row_bytes(("images",))  # type: ignore[attr-defined]
    assert estimate == pytest.approx(stored, rel=0.01)
    assert source.row_bytes(("images", "masks")) > estimate  # type: ignore[attr-defined]
