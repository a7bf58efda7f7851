"""The engine from async code (``open_stream``), on asyncio and trio."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import numpy as np
import pytest
from _doubles import BrokenSource, CountingSource, FlakySource, JitterSource, rows_source
from hypothesis import given, settings
from hypothesis import strategies as st

from anyloader import MemorySource, Shard, open_stream, shard_rows
from anyloader._engine.pipeline import RowBudget

pytestmark = pytest.mark.anyio


async def collect(source: Any, **kwargs: Any) -> list[int]:
    async with open_stream(source, **kwargs) as samples:
        return [int(s["row"]) async for s in samples]


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(0, 300),
    fetch_size=st.integers(1, 17),
    concurrency=st.integers(1, 12),
    prefetch=st.integers(1, 40),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32),
    world_size=st.integers(1, 3),
    num_workers=st.integers(1, 3),
)
async def test_ordered_stream_is_exactly_the_plan(
    anyio_backend: str,
    rows: int,
    fetch_size: int,
    concurrency: int,
    prefetch: int,
    shuffle: bool,
    seed: int,
    world_size: int,
    num_workers: int,
) -> None:
    source = rows_source(rows)
    everything: list[int] = []
    for rank in range(world_size):
        for worker in range(num_workers):
            shard = Shard(rank, world_size, worker, num_workers)
            got = await collect(
                source,
                fetch_size=fetch_size,
                concurrency=concurrency,
                prefetch=prefetch,
                shuffle=shuffle,
                seed=seed,
                epoch=2,
                shard=shard,
            )
            expected = shard_rows(rows, shard, seed=seed, epoch=2, shuffle=shuffle)
            assert got == expected.tolist()
            everything += got
    assert sorted(everything) == list(range(rows))


async def test_unordered_stream_yields_every_row_once_as_completed() -> None:
    source = JitterSource(300)  # completes out of plan order
    ordered = await collect(source, shuffle=True, fetch_size=3, concurrency=16)
    unordered = await collect(source, ordered=False, shuffle=True, fetch_size=3, concurrency=16)
    assert sorted(unordered) == list(range(300))
    assert unordered != ordered, "unordered must yield as fetches complete, not in plan order"


async def test_samples_hold_their_own_values_and_index() -> None:
    async with open_stream(rows_source(40), return_index=True, fetch_size=7) as samples:
        async for s in samples:
            assert s["index"] == s["row"]
            assert s["image"].tolist() == [s["index"]] * 4
            assert s["image"].flags.writeable


async def test_transform_sees_each_sample() -> None:
    def double(sample: dict[str, Any]) -> int:
        return int(sample["row"]) * 2

    async with open_stream(rows_source(10), columns=["row"], transform=double) as samples:
        assert [x async for x in samples] == [2 * i for i in range(10)]


async def test_empty_source_gives_an_empty_epoch() -> None:
    assert await collect(rows_source(0)) == []


async def test_backpressure_bounds_rows_fetched_ahead() -> None:
    source = CountingSource(400)
    concurrency, prefetch, fetch_size = 3, 10, 4
    bound = prefetch + concurrency * fetch_size
    consumed = 0
    ahead: list[int] = []
    async with open_stream(
        source, concurrency=concurrency, prefetch=prefetch, fetch_size=fetch_size
    ) as samples:
        async for _ in samples:
            consumed += 1
            # A slow consumer: let the engine run until it can do nothing more.
            await anyio.wait_all_tasks_blocked()
            ahead.append(source.fetched_rows - consumed)
    assert consumed == 400
    assert max(ahead) <= bound
    # The bound is reached, so the test would see the engine overshoot it.
    assert max(ahead) >= bound - fetch_size


async def test_error_surfaces_unwrapped_with_its_type() -> None:
    source = BrokenSource(100, bad_row=37, error=LookupError("row 37 is corrupt"))
    got: list[int] = []

    async def consume() -> None:
        async with open_stream(source, fetch_size=5, retries=3) as samples:
            async for s in samples:
                got.append(int(s["row"]))

    with pytest.raises(LookupError, match="row 37 is corrupt") as info:
        await consume()
    assert type(info.value) is LookupError  # not an ExceptionGroup around it
    assert max(got, default=0) < 35  # rows after the failed group never arrive
    if sys.version_info >= (3, 11):  # add_note exists from 3.11 on
        assert any("35, 36, 37, 38, 39" in note for note in info.value.__notes__)


async def test_transient_errors_are_retried_until_they_pass() -> None:
    source = FlakySource(60, failures=2)
    assert await collect(source, fetch_size=6, retries=2) == list(range(60))
    assert set(source.attempts.values()) == {3}


async def test_retries_run_out_and_the_last_error_is_raised() -> None:
    source = FlakySource(10, failures=3)
    with pytest.raises(ConnectionError, match="flaky store") as info:
        await collect(source, retries=2)
    assert any("after 3 attempts" in n for n in getattr(info.value, "__notes__", []))


async def test_non_transient_errors_are_not_retried() -> None:
    source = FlakySource(10, failures=1, error=ValueError)
    with pytest.raises(ValueError, match="flaky store"):
        await collect(source, retries=5)
    assert max(source.attempts.values()) == 1


async def test_retry_if_widens_what_is_transient() -> None:
    source = FlakySource(10, failures=1, error=ValueError)
    got = await collect(source, retries=1, retry_if=lambda e: isinstance(e, ValueError))
    assert got == list(range(10))


async def test_timeout_turns_a_hung_fetch_into_an_error() -> None:
    source = CountingSource(20, slow_from=10)
    with anyio.fail_after(5), pytest.raises(TimeoutError):
        await collect(source, fetch_size=10, timeout=0.05, retries=1)
    assert source.cancelled == 2  # the hung attempt and its retry were both cancelled


async def test_leaving_early_cancels_fetches_promptly() -> None:
    source = CountingSource(1000, slow_from=8)
    with anyio.fail_after(1):
        async with open_stream(source, fetch_size=4, concurrency=8) as samples:
            first = [int(s["row"]) async for s, _ in zip_first(samples, 8)]
    assert first == list(range(8))
    assert source.started == source.finished + source.cancelled
    assert source.cancelled >= 1


async def zip_first(samples: Any, n: int) -> Any:
    i = 0
    async for s in samples:
        yield s, i
        i += 1
        if i == n:
            return


async def test_row_budget_fills_exactly_and_serves_waiters_in_order() -> None:
    budget = RowBudget(10)
    await budget.take(6)
    await budget.take(4)  # exactly full
    granted: list[str] = []

    async def wait(name: str, rows: int) -> None:
        await budget.take(rows)
        granted.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "first", 5)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(wait, "second", 1)  # would fit sooner, but waits its turn
        await anyio.wait_all_tasks_blocked()
        budget.give_back(4)  # 6 in use: 'first' (5) does not fit yet, so nobody goes
        await anyio.wait_all_tasks_blocked()
        assert granted == []
        budget.give_back(1)  # 5 in use: 'first' fills the budget exactly, 'second' must wait
        await anyio.wait_all_tasks_blocked()
        assert granted == ["first"]
        assert budget.in_use == 10
        budget.give_back(1)
    assert granted == ["first", "second"]
    assert budget.in_use == 10


async def test_a_cancelled_waiter_hands_its_grant_on() -> None:
    budget = RowBudget(4)
    await budget.take(4)
    with anyio.move_on_after(0.01):
        await budget.take(3)
    budget.give_back(4)
    assert budget.in_use == 0  # the cancelled waiter holds nothing
    await budget.take(4)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 40),
    picks=st.lists(st.integers(0, 10**6), max_size=12),
    run=st.booleans(),
)
async def test_memory_source_returns_its_rows_as_copies(
    anyio_backend: str, rows: int, picks: list[int], run: bool
) -> None:
    # A run of consecutive rows takes the slice path, anything else fancy indexing:
    # both must give exactly the rows asked for, in order, and never a view.
    data = np.arange(rows * 3, dtype=np.int64).reshape(rows, 3)
    source = MemorySource({"x": data, "y": np.arange(rows) * 10})
    indices = [p % rows for p in picks]
    if run and indices:
        indices = list(range(indices[0], min(rows, indices[0] + len(indices))))
    values = await source.fetch(indices, ["x", "y"])
    assert values["x"].tolist() == data[indices].tolist()
    assert values["y"].tolist() == [10 * i for i in indices]
    values["x"][...] = -1
    values["y"][...] = -1
    assert (data >= 0).all()
    assert (source._arrays["y"] >= 0).all()
