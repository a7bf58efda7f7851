"""Test doubles: sources and futures whose behaviour a test controls exactly."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import anyio
import numpy as np

from anyloader import MemorySource
from anyloader._engine.config import REQUEST_BYTES
from anyloader._sources.source import Columns


def rows_source(n: int) -> MemorySource:
    """A source whose column ``row`` holds the row number and ``image`` a tiny array of it."""
    idx = np.arange(n, dtype=np.int64)
    return MemorySource({"row": idx, "image": np.repeat(idx[:, None], 4, axis=1)})


class _OverRows:
    """Columns and length of a ``rows_source``; subclasses decide how ``fetch`` misbehaves.

    Their scenarios are row by row (a store that stalls from row 8 on, a fault per
    row group): each row says it is as big as a whole request, so the loader's own
    choice of requests (``fetch_size=None``) is one row each, as it was before the
    loader sized them.
    """

    _inner: MemorySource

    @property
    def columns(self) -> tuple[str, ...]:
        return self._inner.columns

    def column_info(self) -> dict[str, Any]:
        return self._inner.column_info()

    def row_bytes(self, columns: Sequence[str]) -> float:
        return float(REQUEST_BYTES)

    def __len__(self) -> int:
        return len(self._inner)


class CountingSource(_OverRows):
    """Counts rows fetched and fetches in flight; optionally blocks rows from ``slow_from``."""

    def __init__(self, n: int, *, slow_from: int | None = None) -> None:
        self._inner = rows_source(n)
        self.slow_from = slow_from
        self.fetched_rows = 0
        self.started = 0
        self.finished = 0
        self.cancelled = 0

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        self.started += 1
        try:
            if self.slow_from is not None and max(indices) >= self.slow_from:
                await anyio.sleep(3600)  # sync-ok: a store that would take an hour
            values = await self._inner.fetch(indices, columns)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        self.finished += 1
        self.fetched_rows += len(indices)
        return values


class FlakySource(_OverRows):
    """Fails the first ``failures`` attempts of every group with ``error``, then succeeds."""

    def __init__(self, n: int, *, failures: int, error: type[Exception] = ConnectionError) -> None:
        self._inner = rows_source(n)
        self.failures = failures
        self.error = error
        self.attempts: dict[tuple[int, ...], int] = {}

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        key = tuple(indices)
        self.attempts[key] = self.attempts.get(key, 0) + 1
        if self.attempts[key] <= self.failures:
            raise self.error(f"flaky store, rows {list(key)}")
        return await self._inner.fetch(indices, columns)


class BrokenSource(_OverRows):
    """Raises ``error`` on the fetch that includes row ``bad_row``."""

    def __init__(self, n: int, *, bad_row: int, error: Exception) -> None:
        self._inner = rows_source(n)
        self.bad_row = bad_row
        self.error = error

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        if self.bad_row in indices:
            raise self.error
        return await self._inner.fetch(indices, columns)


class FakeFuture:
    """A deeplake-style future (``is_completed``/``result``/``cancel``) set by the test."""

    def __init__(self, *, done_at: float | None = None) -> None:
        self._lock = threading.Lock()
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None
        self.cancelled = False
        self._done_at = done_at

    def set_result(self, value: Any) -> None:
        with self._lock:
            self._value, self._done = value, True

    def set_exception(self, error: BaseException) -> None:
        with self._lock:
            self._error, self._done = error, True

    def is_completed(self) -> bool:
        if self._done_at is not None and time.monotonic() >= self._done_at:
            return True
        return self._done

    def result(self) -> Any:
        if not self.is_completed():
            raise AssertionError("result() would block: the bridge must never call it early")
        if self._error is not None:
            raise self._error
        return self._value

    def cancel(self) -> None:
        self.cancelled = True


class JitterSource(_OverRows):
    """A ``rows_source`` whose fetches take 0-3 ms, varying by row: they complete out of order."""

    def __init__(self, n: int) -> None:
        self._inner = rows_source(n)

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        await anyio.sleep((int(indices[0]) * 7919 % 4) / 1000)  # sync-ok: latency, not a wait
        return await self._inner.fetch(indices, columns)
