"""Epoch stats: exact counts, bounded latency summary, who waited, summed over workers."""

from __future__ import annotations

import math
import pickle
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import anyio
import numpy as np
import pytest
from _doubles import CountingSource, _OverRows, rows_source
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

import anyloader
from anyloader import AsyncDataset, EpochStats, FaultySource, LatencyHistogram, open_stream
from anyloader._sources.source import Columns
from anyloader._stats.epoch_stats import BUCKETS, bucket_bounds, bucket_of
from anyloader._stats.recorder import _BULK, EpochRecorder, _with
from anyloader._stats.timeline import CONSUMER_WAIT, Timeline

pytestmark = pytest.mark.anyio  # the async tests run on asyncio and trio

ONE_BUCKET = 2 ** (1 / 8)
# rows_source: "row" is one int64, "image" four int64 per row.
ROW_BYTES = 8 + 4 * 8


# The value: histogram and merging (pure).


@given(st.floats(1e-7, 1e3))
def test_every_latency_falls_in_the_bucket_that_covers_it(seconds: float) -> None:
    low, high = bucket_bounds(bucket_of(seconds))
    assert low <= seconds < high


def test_percentiles_are_within_one_bucket_of_the_exact_ones() -> None:
    latencies = np.random.default_rng(0).lognormal(math.log(0.004), 1.0, 5000)
    h = LatencyHistogram.of(latencies.tolist())
    assert h.count == 5000
    assert h.max_seconds == latencies.max()
    assert h.total_seconds == pytest.approx(latencies.sum())
    for q in (1, 50, 90, 95, 99, 99.9, 100):
        exact = float(np.percentile(latencies, q, method="inverted_cdf"))
        assert exact / ONE_BUCKET <= h.percentile(q) <= exact * ONE_BUCKET, q
    assert h.percentile(100) <= h.max_seconds


def test_percentiles_of_constructed_data() -> None:
    # 90 fetches of 1 ms and 10 of 100 ms: p50 and p90 near 1 ms, p95 and p99 near 100 ms.
    h = LatencyHistogram.of([0.001] * 90 + [0.1] * 10)
    for q, exact in ((50, 0.001), (90, 0.001), (91, 0.1), (99, 0.1)):
        assert exact / ONE_BUCKET <= h.percentile(q) <= exact * ONE_BUCKET
    assert h.percentile(100) == 0.1
    assert LatencyHistogram().percentile(99) == 0.0
    with pytest.raises(ValueError, match="q must be in"):
        h.percentile(0)


def test_the_recorder_buckets_exactly_like_the_histogram() -> None:
    latencies = [0.0, 1e-9, 3e-7, 1e-6, 0.0042, 0.5, 1.0, 7.5, 1e4, *np.linspace(1e-5, 2, 500)]
    empty = (np.zeros(BUCKETS, np.int64), 0.0, 0.0, list(latencies))
    counts, total, peak, pending = _with(empty)
    expected = LatencyHistogram.of(latencies)
    assert counts.tolist() == list(expected.counts)
    assert (total, peak, pending) == (pytest.approx(expected.total_seconds), 1e4, [])


def test_memory_does_not_grow_with_the_epoch() -> None:
    recorder = EpochRecorder()
    values = {"x": np.zeros(3)}
    for _ in range(10 * _BULK + 5):
        recorder.fetched(1, values, recorder.fetch_started())
    assert len(recorder._pending) < _BULK
    stats = recorder.snapshot()
    assert stats.fetches == stats.rows == stats.fetch_latency.count == 10 * _BULK + 5
    assert stats.bytes == (10 * _BULK + 5) * 24


def _some_stats(seed: int) -> EpochStats:
    rng = np.random.default_rng(seed)
    return EpochStats(
        rows=int(rng.integers(100)),
        bytes=int(rng.integers(10**6)),
        fetches=int(rng.integers(50)),
        fetch_latency=LatencyHistogram.of(rng.lognormal(-5, 1, 20).tolist()),
        retries=int(rng.integers(5)),
        faults=int(rng.integers(5)),
        timeouts=int(rng.integers(5)),
        decoded_rows=int(rng.integers(100)),
        decode_seconds=float(rng.random()),
        seconds=float(rng.random()),
        cpu_seconds=float(rng.random()),
        consumer_seconds=float(rng.random()),
        consumer_wait_seconds=float(rng.random()),
        loader_wait_seconds=float(rng.random()),
        workers=1,
    )


def test_stats_merge_exactly() -> None:
    a, b, c = (_some_stats(seed) for seed in range(3))
    total = EpochStats.merge([a, b, c])
    assert total == a + b + c
    assert total.rows == a.rows + b.rows + c.rows
    assert total.workers == 3
    assert total.fetch_latency.counts == tuple(
        x + y + z
        for x, y, z in zip(
            a.fetch_latency.counts, b.fetch_latency.counts, c.fetch_latency.counts, strict=True
        )
    )
    assert total.fetch_latency.max_seconds == max(s.fetch_latency.max_seconds for s in (a, b, c))
    assert EpochStats.merge([]) == EpochStats()
    # The form that crosses processes holds every field.
    assert EpochStats._from_vector(total._to_vector()) == total


def test_consumer_fields_can_be_replaced_and_input_bound_follows() -> None:
    stats = replace(_some_stats(0), consumer_seconds=10.0, consumer_wait_seconds=4.0)
    assert stats.input_bound == pytest.approx(0.4)
    assert replace(stats, consumer_seconds=0.0).input_bound == 0.0


def test_timelines_merge_exactly_whatever_their_widths() -> None:
    fine = Timeline(100.0, bins=8, width=0.5)
    fine.interval(CONSUMER_WAIT, 100.25, 101.75)  # 1.5 s
    coarse = Timeline(100.0, bins=8, width=0.5)
    coarse.interval(CONSUMER_WAIT, 100.0, 109.0)  # 9 s: outgrows 8 x 0.5 s, so widths double
    a, b = fine.snapshot(100.0), coarse.snapshot(100.0)
    assert (a.width, b.width) == (0.5, 2.0)
    merged = a + b
    assert merged.width == 2.0
    assert sum(merged.series[CONSUMER_WAIT]) == pytest.approx(10.5)
    assert merged.series[CONSUMER_WAIT][0] == pytest.approx(1.5 + 2.0)


# Counting in the engine, on both backends.


async def test_stream_counts_rows_bytes_and_fetches_exactly() -> None:
    async with open_stream(rows_source(100), fetch_size=7, concurrency=3) as samples:
        assert sum([1 async for _ in samples]) == 100
    stats = samples.stats()
    assert (stats.rows, stats.fetches, stats.bytes) == (100, 15, 100 * ROW_BYTES)
    assert stats.fetch_latency.count == 15
    assert stats.fetch_p50 <= stats.fetch_p95 <= stats.fetch_p99 <= stats.fetch_latency.max_seconds
    assert (stats.retries, stats.faults, stats.timeouts, stats.decoded_rows) == (0, 0, 0, 0)
    assert stats.workers == 1
    assert stats.seconds >= stats.consumer_wait_seconds > 0
    assert samples.stats() == stats, "the epoch is over: its stats no longer change"


async def test_retries_and_faults_are_counted_exactly() -> None:
    faulty = FaultySource(rows_source(120), seed=3, transient_rate=0.3)
    async with open_stream(faulty, fetch_size=4, retries=50, backoff=0.0) as samples:
        assert len([s async for s in samples]) == 120
    stats = samples.stats()
    assert faulty.stats.transient > 0
    assert stats.faults == stats.retries == faulty.stats.transient
    assert stats.fetches == 30
    assert faulty.stats.calls == stats.fetches + stats.retries
    assert stats.timeouts == 0


async def test_timeouts_are_counted() -> None:
    # Seed 8: 6 of the 16 first attempts hang, no retry does (one timeout's wait in all).
    faulty = FaultySource(rows_source(16), seed=8, hang_rate=0.3, hang_seconds=math.inf)
    async with open_stream(faulty, timeout=0.25, retries=20, backoff=0.0, fetch_size=1) as samples:
        assert len([s async for s in samples]) == 16
    stats = samples.stats()
    assert faulty.stats.hangs > 0
    # Every hang times out and is retried; on a loaded machine an attempt that
    # did not hang may take longer than 0.25 s too, and is counted the same way.
    assert stats.timeouts == stats.faults == stats.retries >= faulty.stats.hangs


class SignalSource(_OverRows):
    """``rows_source`` that sets ``event`` on fetching ``row``, after its last checkpoint."""

    def __init__(self, n: int, row: int, event: threading.Event | anyio.Event) -> None:
        self._inner = rows_source(n)
        self.row = row
        self.event = event

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        values = await self._inner.fetch(indices, columns)
        if self.row in indices:
            # Nothing awaits between here and the fetcher blocking on the full budget.
            self.event.set()
        return values


async def test_a_slow_consumer_makes_the_loader_wait() -> None:
    # Budget: prefetch 3 + concurrency 1 x fetch_size 1 = 4 rows, so fetching row 3
    # fills it and the fetcher blocks before the consumer can give anything back.
    filled = anyio.Event()
    source = SignalSource(40, 3, filled)
    async with open_stream(source, prefetch=3, concurrency=1) as samples:
        await samples.receive()
        await filled.wait()
        assert len([s async for s in samples]) == 39
    stats = samples.stats()
    assert stats.loader_wait_seconds > 0
    assert 0 < stats.loader_bound < 1
    assert 0 < stats.input_bound < 1


class StragglerSource(_OverRows):
    """Row 0 waits for ``release``; fetching row ``last`` sets ``filled`` (as SignalSource)."""

    def __init__(self, n: int, last: int) -> None:
        self._inner = rows_source(n)
        self.last = last
        self.filled = anyio.Event()
        self.release = anyio.Event()

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        if 0 in indices:
            await self.release.wait()
        values = await self._inner.fetch(indices, columns)
        if self.last in indices:
            self.filled.set()
        return values


async def test_a_straggler_in_ordered_mode_stalls_the_consumer() -> None:
    # Budget 5 rows: rows 1-4 arrive, wait in the reorder window behind row 0 and
    # fill the budget, while the consumer waits for row 0: a stall.
    source = StragglerSource(20, last=4)

    async def release_when_full() -> None:
        await source.filled.wait()
        source.release.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(release_when_full)
        async with open_stream(source, prefetch=2, concurrency=3) as samples:
            assert [int(s["row"]) async for s in samples] == list(range(20))
    stats = samples.stats()
    assert stats.stall_seconds > 0
    assert stats.stall_seconds <= stats.consumer_wait_seconds
    assert stats.loader_wait_seconds >= stats.stall_seconds


def test_a_slow_consumer_makes_the_loader_wait_in_a_dataset(backend: str) -> None:
    filled = threading.Event()
    ds = AsyncDataset(SignalSource(40, 3, filled), backend=backend, prefetch=3, concurrency=1)
    it = iter(ds)
    next(it)
    assert filled.wait(timeout=30)
    assert len(list(it)) == 39
    stats = ds.stats()
    assert stats.rows == 40
    assert stats.loader_wait_seconds > 0
    assert 0 < stats.input_bound < 1
    assert stats.consumer_seconds == stats.seconds >= stats.consumer_wait_seconds


def test_dataset_stats_are_the_latest_epoch_so_far(backend: str) -> None:
    source = CountingSource(50)
    ds = AsyncDataset(source, backend=backend, fetch_size=5)
    assert ds.stats() == EpochStats()
    assert len(list(ds)) == 50
    first = ds.stats()
    assert (first.rows, first.fetches, first.bytes, first.workers) == (50, 10, 50 * ROW_BYTES, 1)
    assert first == ds.stats(), "the epoch is over: its clock stopped"
    source.slow_from = 10  # the next epoch gets no further than row 9
    it = iter(ds)
    next(it)
    assert ds.stats().rows < 50, "a new iteration's stats, not the last one's"
    it.close()
    assert ds.stats() == ds.stats(), "closed: the clock stopped"


def test_decoding_is_counted(pairs_url: str, backend: str) -> None:
    ours = AsyncDataset(pairs_url, backend=backend, batch_size=16)
    assert sum(len(b["images"]) for b in ours) == 97
    stats = ours.stats()
    assert stats.decoded_rows == 97
    assert stats.decode_seconds > 0
    assert stats.bytes == 97 * (64 * 64 * 3 + 64 * 64 * 1)
    theirs = AsyncDataset(pairs_url, backend=backend, batch_size=16, decode="deeplake")
    assert sum(len(b["images"]) for b in theirs) == 97
    assert theirs.stats().decoded_rows == 0


# DataLoader workers: their stats add up in the process that started them.


def _rows(batches: Iterable[Any]) -> int:
    return sum(len(batch["row"]) for batch in batches)


@pytest.mark.parametrize("persistent", [False, True])
def test_stats_add_up_over_dataloader_workers(backend: str, persistent: bool) -> None:
    ds = AsyncDataset(rows_source(101), backend=backend, fetch_size=4)
    loader = DataLoader(ds, batch_size=8, num_workers=2, persistent_workers=persistent)
    for _ in range(2):  # the second epoch's stats replace the first's
        batches = iter(loader)
        first = next(batches)
        # Workers report when they start: the cells hold this epoch, not the last.
        assert ds.stats().rows < 101
        assert len(first["row"]) + _rows(batches) == 101
        stats = ds.stats()
        assert stats.workers == 2
        assert (stats.rows, stats.bytes) == (101, 101 * ROW_BYTES)
        # Shards of 51 and 50 rows, in fetches of 4.
        assert stats.fetches == stats.fetch_latency.count == 13 + 13
    # An iteration in this process is now the latest.
    it = iter(ds)
    next(it)
    assert ds.stats().workers == 1
    it.close()


@pytest.mark.slow
def test_stats_reach_the_main_process_from_spawned_workers() -> None:
    ds = AsyncDataset(rows_source(30), fetch_size=2)
    loader = DataLoader(ds, batch_size=5, num_workers=2, multiprocessing_context="spawn")
    assert _rows(loader) == 30
    stats = ds.stats()
    assert (stats.workers, stats.rows, stats.fetches) == (2, 30, 8 + 8)


def test_a_copy_made_any_other_way_has_stats_of_its_own() -> None:
    ds = AsyncDataset(rows_source(10))
    assert len(list(ds)) == 10
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.stats() == EpochStats()
    assert len(list(copy)) == 10
    assert copy.stats().rows == ds.stats().rows == 10


def test_stats_types_are_public() -> None:
    assert {"EpochStats", "LatencyHistogram"} <= set(anyloader.__all__)


def test_a_profile_timeline_crosses_from_workers_and_agrees_with_the_latencies() -> None:
    from anyloader._stats.timeline import IN_FLIGHT
    from anyloader._stats.worker_channel import SharedStats

    ds = AsyncDataset(rows_source(64), fetch_size=2)
    ds._stats = SharedStats(timeline_bins=32, origin=time.perf_counter())
    assert _rows(DataLoader(ds, batch_size=8, num_workers=2)) == 64
    stats, timeline = ds.stats(), ds._stats.latest_timeline()
    assert timeline is not None
    assert stats.workers == 2
    # Each fetch is in flight for its latency: the integrals over time agree (Little's law).
    in_flight = sum(timeline.series[IN_FLIGHT])
    assert in_flight == pytest.approx(stats.fetch_latency.total_seconds, rel=0.05, abs=1e-3)
    assert in_flight > 0
