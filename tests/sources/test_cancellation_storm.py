"""Cancellation storm: leave an epoch at hundreds of random points, leak nothing.

Each Hypothesis example starts epochs over a real deeplake dataset and leaves
them after a random number of samples, by ``break``, by an exception in the
loop or by dropping the iterator. After each one: no thread of ours is left,
no deeplake future is left pending (every one completed or was cancelled, and
the poller's set is empty), and no warning or unraisable exception (an
un-awaited coroutine, an unclosed stream) was emitted.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from anyloader import AsyncDataset, DeeplakeSource, FaultySource
from anyloader._sources import futures as _bridge
from anyloader._sources.synthetic import read_row_id

pytestmark = pytest.mark.anyio

ROWS = 97


class TrackedFuture:
    """A deeplake future that remembers whether anyone cancelled it."""

    def __init__(self, future: Any) -> None:
        self._future = future
        self.cancelled = False

    def is_completed(self) -> bool:
        return bool(self._future.is_completed())

    def result(self) -> Any:
        return self._future.result()

    def cancel(self) -> Any:
        self.cancelled = True
        return self._future.cancel()


class TrackedColumn:
    def __init__(self, column: Any, log: list[TrackedFuture]) -> None:
        self._column = column
        self._log = log

    def get_async(self, rows: Sequence[int]) -> TrackedFuture:
        future = TrackedFuture(self._column.get_async(rows))
        self._log.append(future)
        return future

    def get_bytes_async(self, rows: Sequence[int]) -> TrackedFuture:
        future = TrackedFuture(self._column.get_bytes_async(rows))
        self._log.append(future)
        return future


class TrackingSource(DeeplakeSource):
    """A ``DeeplakeSource`` that logs every future it creates."""

    futures: list[TrackedFuture]

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.futures = []

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "futures": []}

    def _column(self, name: str) -> Any:
        return TrackedColumn(super()._column(name), self.futures)

    def pending(self) -> list[TrackedFuture]:
        """Futures neither completed nor cancelled: a leak."""
        return [f for f in self.futures if not f.cancelled and not f.is_completed()]


class PollerLog(list[_bridge.FuturePoller]):
    """Every poller created during a test (short repr: Hypothesis prints it)."""

    def __repr__(self) -> str:
        return f"<{len(self)} pollers, {sum(p.pending for p in self)} futures pending>"


class RecordingPoller(_bridge.FuturePoller):
    instances = PollerLog()

    def __init__(self) -> None:
        super().__init__()
        RecordingPoller.instances.append(self)


@pytest.fixture
def pollers(monkeypatch: pytest.MonkeyPatch) -> list[_bridge.FuturePoller]:
    RecordingPoller.instances = PollerLog()
    monkeypatch.setattr(_bridge, "FuturePoller", RecordingPoller)
    return RecordingPoller.instances


def native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@contextmanager
def no_leaks(baseline: set[int]) -> Iterator[None]:
    """Fail if the body leaves a thread behind or emits a warning or unraisable exception."""
    unraisable: list[str] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda info: unraisable.append(f"{info.exc_value!r} in {info.object!r}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
            gc.collect()
    finally:
        sys.unraisablehook = old_hook
    assert [str(w.message) for w in caught] == []
    assert unraisable == []
    leftover = [t.name for t in threading.enumerate() if t.ident not in baseline]
    assert leftover == []


class Stop(Exception):
    """Raised by the training loop to leave the epoch."""


STORM = st.fixed_dictionaries(
    {
        "stops": st.lists(st.integers(0, ROWS), min_size=4, max_size=4),
        "how": st.sampled_from(["break", "raise", "drop"]),
        "concurrency": st.integers(1, 16),
        "fetch_size": st.integers(1, 8),
        "ordered": st.booleans(),
        "shuffle": st.booleans(),
        "transient_rate": st.sampled_from([0.0, 0.2]),
    }
)


def _source(url: str, storm: dict[str, Any]) -> tuple[TrackingSource, FaultySource]:
    tracking = TrackingSource(url)
    faulty = FaultySource(
        tracking, seed=sum(storm["stops"]), transient_rate=storm["transient_rate"]
    )
    return tracking, faulty


@pytest.fixture(scope="module")
def warm(pairs_url: str) -> str:
    """Read the dataset once: deeplake starts its own (lasting) thread pool on first use."""
    assert len(list(AsyncDataset(pairs_url))) == ROWS
    return pairs_url


# --- async: open_stream on asyncio and trio ------------------------------------


@settings(max_examples=50, deadline=None)
@given(storm=STORM)
async def test_leaving_open_stream_anywhere_leaks_nothing(
    warm: str, pollers: list[_bridge.FuturePoller], storm: dict[str, Any]
) -> None:
    from anyloader import open_stream

    tracking, source = _source(warm, storm)
    before = len(pollers)
    for stop in storm["stops"]:
        taken = 0
        try:
            async with open_stream(
                source,
                concurrency=storm["concurrency"],
                fetch_size=storm["fetch_size"],
                ordered=storm["ordered"],
                shuffle=storm["shuffle"],
                retries=20,
            ) as samples:
                async for sample in samples:
                    assert read_row_id(sample["images"]) == read_row_id(sample["masks"])
                    if taken == stop:
                        if storm["how"] == "raise":
                            raise Stop
                        break
                    taken += 1
        except Stop:
            assert storm["how"] == "raise"
        else:
            assert storm["how"] != "raise" or stop == ROWS
        assert tracking.pending() == []
        assert all(p.pending == 0 for p in pollers)
    assert len(pollers) - before == len(storm["stops"])  # one poller per epoch


async def test_cancelling_the_scope_mid_fetch_leaks_nothing(
    warm: str, pollers: list[_bridge.FuturePoller]
) -> None:
    """A cancel scope around the stream (a timeout, a shutdown) cancels pending futures."""
    from anyloader import open_stream

    for taken in range(0, 40, 3):
        # Rows from `taken` on never complete (as the poller sees them), so at
        # the cut there are futures in flight, whatever the timing.
        tracking = StallingFromSource(warm, stall_from=taken)
        with anyio.fail_after(30), anyio.CancelScope() as scope:
            async with open_stream(tracking, concurrency=16, fetch_size=1) as samples:
                count = 0
                if taken:
                    async for _ in samples:
                        count += 1
                        if count == taken:
                            break
                await anyio.wait_all_tasks_blocked()
                in_flight = [f for f in tracking.futures if not f.is_completed()]
                assert in_flight, "the cut must find futures in flight"
                scope.cancel()
                await anyio.lowlevel.checkpoint()
        assert scope.cancelled_caught
        assert all(f.cancelled for f in in_flight)
        assert tracking.pending() == []
    assert all(p.pending == 0 for p in pollers)


# --- sync: AsyncDataset through a DataLoader ----------------------------------


@settings(max_examples=25, deadline=None)
@given(storm=STORM)
def test_leaving_a_dataloader_anywhere_leaks_nothing(
    warm: str, backend: str, pollers: list[_bridge.FuturePoller], storm: dict[str, Any]
) -> None:
    tracking, source = _source(warm, storm)
    dataset = AsyncDataset(
        source,
        backend=backend,
        concurrency=storm["concurrency"],
        fetch_size=storm["fetch_size"],
        ordered=storm["ordered"],
        shuffle=storm["shuffle"],
        retries=20,
    )
    baseline = {t.ident for t in threading.enumerate()}
    native = native_threads()
    for stop in storm["stops"]:
        with no_leaks(baseline):
            loader = DataLoader(dataset, batch_size=1 + stop % 5)
            iterator = iter(loader)
            if storm["how"] == "drop":
                for _ in range(stop // 4 + 1):
                    next(iterator, None)
                # Dropped into a reference cycle: only the collector (in no_leaks) ends it.
                cycle: list[Any] = [iterator]
                cycle.append(cycle)
                del cycle
            else:
                try:
                    for i, batch in enumerate(iterator):
                        assert len(batch["images"]) >= 1
                        if i == stop // 4:
                            if storm["how"] == "raise":
                                raise Stop
                            break
                except Stop:
                    pass
            del iterator, loader  # no reference to the epoch survives
        assert tracking.pending() == []
        assert all(p.pending == 0 for p in pollers)
    # deeplake's pool is warm; an epoch adds no lasting native thread either. A
    # thread that join() has returned for may still be leaving the kernel's task
    # list, and nothing signals when it has: give that a bounded moment.
    deadline = time.monotonic() + 5
    while native_threads() > native and time.monotonic() < deadline:
        time.sleep(0.01)  # sync-ok: OS thread teardown after join has no event
    assert native_threads() <= native


@settings(max_examples=12, deadline=None)
@given(stop=st.integers(0, 20), batch_size=st.integers(1, 8))
def test_leaving_a_dataloader_with_two_workers_leaks_nothing(
    warm: str, backend: str, stop: int, batch_size: int
) -> None:
    dataset = AsyncDataset(
        FaultySource(DeeplakeSource(warm), seed=stop, transient_rate=0.2),
        backend=backend,
        concurrency=8,
        retries=20,
    )
    baseline = {t.ident for t in threading.enumerate()}
    with no_leaks(baseline):
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=2)
        iterator = iter(loader)
        workers = list(iterator._workers)  # type: ignore[attr-defined]
        assert len(workers) == 2
        for i, _ in enumerate(iterator):
            if i == stop:
                break
        del iterator, loader
        # The workers were shut down, not killed: each left its loop and exited 0.
        assert [w.exitcode for w in workers] == [0, 0]
        # multiprocessing's queue feeder threads (torch's, not ours) end on their own.
        for thread in threading.enumerate():
            if thread.name == "QueueFeederThread":
                thread.join(timeout=10)


class NeverColumn(TrackedColumn):
    """Requests for rows at or past ``stall_from`` never complete (as far as the poller sees)."""

    def __init__(self, column: Any, log: list[TrackedFuture], stall_from: int) -> None:
        super().__init__(column, log)
        self._stall_from = stall_from

    def get_async(self, rows: Sequence[int]) -> TrackedFuture:
        return self._stall(super().get_async(rows), rows)

    def get_bytes_async(self, rows: Sequence[int]) -> TrackedFuture:
        return self._stall(super().get_bytes_async(rows), rows)

    def _stall(self, future: TrackedFuture, rows: Sequence[int]) -> TrackedFuture:
        if max(int(r) for r in rows) >= self._stall_from:
            future.is_completed = lambda: False  # type: ignore[method-assign]
        return future


class StallingFromSource(TrackingSource):
    def __init__(self, url: str, *, stall_from: int) -> None:
        super().__init__(url)
        self.stall_from = stall_from

    def _column(self, name: str) -> Any:
        return NeverColumn(DeeplakeSource._column(self, name), self.futures, self.stall_from)


class StallingColumn(TrackedColumn):
    """The first request for each group of rows never completes (as far as the poller sees)."""

    def __init__(self, column: Any, log: list[TrackedFuture], seen: set[tuple[int, ...]]) -> None:
        super().__init__(column, log)
        self._seen = seen

    def get_async(self, rows: Sequence[int]) -> TrackedFuture:
        future = super().get_async(rows)
        key = tuple(int(r) for r in rows)
        if key not in self._seen:
            self._seen.add(key)
            future.is_completed = lambda: False  # type: ignore[method-assign]
        return future


class StallingSource(TrackingSource):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.stalled: set[tuple[int, ...]] = set()

    def _column(self, name: str) -> Any:
        return StallingColumn(DeeplakeSource._column(self, name), self.futures, self.stalled)


async def test_a_timeout_cancels_the_stalled_deeplake_future_and_the_retry_succeeds(
    warm: str, pollers: list[_bridge.FuturePoller]
) -> None:
    from anyloader import open_stream

    source = StallingSource(warm)
    with anyio.fail_after(60):
        async with open_stream(
            source, columns=["masks"], fetch_size=8, timeout=0.05, retries=2, return_index=True
        ) as samples:
            got = [(int(s["index"]), read_row_id(s["masks"])) async for s in samples]
    assert sorted(i for i, _ in got) == list(range(ROWS))
    assert all(i == row for i, row in got)
    stalled = [f for f in source.futures if not f.is_completed()]
    assert len(stalled) == len(source.stalled) == -(-ROWS // 8)  # one per group
    assert all(f.cancelled for f in stalled)  # cancelled by the timeout, not left waiting
    assert source.pending() == []
    assert all(p.pending == 0 for p in pollers)
