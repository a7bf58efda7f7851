"""The future bridge: deeplake-style futures awaited on both backends without threads."""

from __future__ import annotations

import threading
import time

import anyio
import pytest
from _doubles import FakeFuture

from anyloader import wait_future
from anyloader._sources.futures import open_future_poller

pytestmark = pytest.mark.anyio


async def test_result_and_exception_come_through_without_threads() -> None:
    threads = set(threading.enumerate())
    async with open_future_poller() as poller:
        ok, bad = FakeFuture(), FakeFuture()
        results: list[object] = []

        async def waiter() -> None:
            results.append(await wait_future(ok))
            with pytest.raises(KeyError, match="gone"):
                await wait_future(bad)
            results.append("raised")

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert poller.pending == 1
            ok.set_result(42)
            bad.set_exception(KeyError("gone"))
        assert results == [42, "raised"]
        # The trio test runner uses guest mode, whose I/O waits run in a
        # "Trio thread": that is the runner's, not ours.
        ours = {t for t in threading.enumerate() if not t.name.startswith("Trio thread")}
        assert ours <= threads, "the bridge must not start threads"
    assert poller.pending == 0


async def test_cancelled_waiter_cancels_its_future() -> None:
    future = FakeFuture()
    async with open_future_poller() as poller:
        with anyio.move_on_after(0.05):
            await wait_future(future)
        assert future.cancelled
        assert poller.pending == 0


async def test_waits_that_outlive_the_poller_still_complete() -> None:
    """Tasks started inside the block may wait longer than it: they go on polling alone."""
    waiting = [FakeFuture() for _ in range(3)]
    later = FakeFuture()
    got: list[object] = []

    async def wait_for(future: FakeFuture) -> None:
        got.append(await wait_future(future))

    async def wait_after(block_done: anyio.Event) -> None:
        await block_done.wait()
        got.append(await wait_future(later))  # the poller's block has exited by now

    block_done = anyio.Event()
    with anyio.fail_after(10):  # a guard against the hang this test is about
        async with anyio.create_task_group() as outer:
            async with open_future_poller() as poller:
                for f in waiting:
                    outer.start_soon(wait_for, f)
                outer.start_soon(wait_after, block_done)
                await anyio.wait_all_tasks_blocked()
                assert poller.pending == 3
            block_done.set()
            await anyio.wait_all_tasks_blocked()
            for n, f in enumerate([*waiting, later]):
                f.set_result(n)
    assert sorted(got) == [0, 1, 2, 3]
    assert not any(f.cancelled for f in [*waiting, later])


async def test_two_waiters_on_one_future_both_wake() -> None:
    future = FakeFuture()
    got: list[object] = []

    async def waiter() -> None:
        got.append(await wait_future(future))

    with anyio.fail_after(10):
        async with open_future_poller() as poller, anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert poller.pending == 2
            future.set_result("x")
    assert got == ["x", "x"]


async def test_a_cancelled_waiter_leaves_a_shared_future_to_the_other() -> None:
    future = FakeFuture()
    got: list[object] = []
    async with open_future_poller(), anyio.create_task_group() as tg:

        async def waiter() -> None:
            got.append(await wait_future(future))

        tg.start_soon(waiter)
        with anyio.move_on_after(0.01):
            await wait_future(future)
        assert not future.cancelled  # the other waiter still wants it
        future.set_result(7)
    assert got == [7]


async def test_wait_future_works_without_a_poller() -> None:
    future = FakeFuture()
    future.set_result("ready")
    assert await wait_future(future) == "ready"
    pending = FakeFuture()
    with anyio.move_on_after(0.05):
        await wait_future(pending)
    assert pending.cancelled


async def test_many_futures_complete_in_any_order() -> None:
    futures = [FakeFuture() for _ in range(50)]
    got: dict[int, int] = {}

    async def wait_one(i: int) -> None:
        got[i] = await wait_future(futures[i])

    async with open_future_poller(), anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(wait_one, i)
        await anyio.wait_all_tasks_blocked()
        for i in reversed(range(50)):
            futures[i].set_result(i * i)
    assert got == {i: i * i for i in range(50)}


class PollCountingFuture(FakeFuture):
    """Completes at ``done_at``; counts how often it was asked."""

    polls = 0

    def is_completed(self) -> bool:
        self.polls += 1
        return super().is_completed()


@pytest.mark.parametrize("shared_poller", [True, False])
async def test_polling_backs_off_while_nothing_completes(shared_poller: bool) -> None:
    # Backing off from 0.2 ms to 4 ms, 0.3 s of waiting costs about 80 polls; without
    # the back-off (or with a 0.2 ms cap) it would be about 1,500.
    future = PollCountingFuture(done_at=time.monotonic() + 0.3)
    if shared_poller:
        async with open_future_poller():
            await wait_future(future)
    else:
        await wait_future(future)
    assert 10 < future.polls < 200, future.polls
