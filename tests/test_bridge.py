"""The future bridge: deeplake-style futures awaited on both backends without threads."""

from __future__ import annotations

import threading

import anyio
import pytest
from _doubles import FakeFuture

from anyloader import wait_future
from anyloader._bridge import open_future_poller

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


async def expect_shutdown(future: FakeFuture) -> None:
    with pytest.raises(anyio.BrokenResourceError):
        await wait_future(future)


async def test_leaving_the_poller_cancels_what_is_pending() -> None:
    futures = [FakeFuture() for _ in range(5)]
    async with anyio.create_task_group() as outer, open_future_poller() as poller:
        for f in futures:
            outer.start_soon(expect_shutdown, f)
        await anyio.wait_all_tasks_blocked()
        assert poller.pending == 5
    # Leaving the poller woke every waiter with an error instead of result(),
    # which for a cancelled deeplake future would never return.
    assert all(f.cancelled for f in futures)


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
