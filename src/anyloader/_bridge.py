"""Await deeplake futures on any AnyIO backend, without threads.

deeplake's ``Future.__await__`` only works under asyncio (and crashed the
interpreter at exit there), and a thread blocked in ``Future.result()`` never
returns once the future is cancelled. So we never block on a future: one
poller task per event loop checks ``is_completed()`` of every pending future
and wakes its waiter. A waiter that is cancelled cancels its future, which no
thread is waiting on, so nothing is left behind.
"""

from __future__ import annotations

import contextvars
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["FuturePoller", "open_future_poller", "wait_future"]

T_co = TypeVar("T_co", covariant=True)

# Poll fast while futures keep completing, back off while nothing does, so a
# stalled store costs a few hundred wake-ups a second, not thousands.
_MIN_INTERVAL = 0.0002
_MAX_INTERVAL = 0.004


class Pollable(Protocol[T_co]):
    """What we need of a deeplake ``Future``: the three methods it really has."""

    def is_completed(self) -> bool: ...
    def result(self) -> T_co: ...
    def cancel(self) -> Any: ...


class FuturePoller:
    """Wakes tasks waiting on pollable futures; run :meth:`run` in a task group.

    Guarantee: :meth:`wait` returns the future's result or raises its exception;
    if the waiting task is cancelled, the future is cancelled and forgotten.
    """

    def __init__(self) -> None:
        self._pending: dict[int, tuple[Pollable[Any], anyio.Event]] = {}
        self._work = anyio.Event()

    @property
    def pending(self) -> int:
        """Number of futures being waited on right now."""
        return len(self._pending)

    async def wait(self, future: Pollable[T_co]) -> T_co:
        """Wait until ``future`` completes and return its result.

        Raises:
            anyio.BrokenResourceError: if the poller shuts down first (the
                future is then cancelled).
            Exception: whatever ``future.result()`` raises.
        """
        if not future.is_completed():
            done = anyio.Event()
            key = id(future)
            self._pending[key] = (future, done)
            self._work.set()
            try:
                await done.wait()
            finally:
                if self._pending.pop(key, None) is not None and not future.is_completed():
                    future.cancel()
            if not future.is_completed():
                # Woken by shutdown: result() of a cancelled future never returns.
                raise anyio.BrokenResourceError(
                    "the future poller shut down before the future completed"
                )
        return future.result()

    async def run(self) -> None:
        """Poll pending futures until cancelled."""
        interval = _MIN_INTERVAL
        while True:
            if not self._pending:
                await self._work.wait()
                self._work = anyio.Event()
                interval = _MIN_INTERVAL
                continue
            finished = [k for k, (f, _) in self._pending.items() if f.is_completed()]
            for key in finished:
                _, done = self._pending.pop(key)
                done.set()
            interval = _MIN_INTERVAL if finished else min(interval * 2, _MAX_INTERVAL)
            await anyio.sleep(interval)

    def cancel_all(self) -> None:
        """Cancel every pending future (called when the poller shuts down)."""
        for future, done in self._pending.values():
            if not future.is_completed():
                future.cancel()
            done.set()
        self._pending.clear()


_current: contextvars.ContextVar[FuturePoller | None] = contextvars.ContextVar(
    "anyloader_future_poller", default=None
)


@asynccontextmanager
async def open_future_poller() -> AsyncIterator[FuturePoller]:
    """Run a poller for the body; tasks started inside share it via :func:`wait_future`.

    On exit, futures still pending are cancelled.
    """
    poller = FuturePoller()
    token = _current.set(poller)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller.run)
            try:
                yield poller
            finally:
                tg.cancel_scope.cancel()
    finally:
        poller.cancel_all()
        _current.reset(token)


async def wait_future(future: Pollable[T_co]) -> T_co:
    """Await a deeplake-style future on asyncio or trio.

    Uses the poller of the enclosing :func:`open_future_poller` when there is
    one; otherwise polls this one future with the same back-off.

    Raises:
        Exception: whatever ``future.result()`` raises.
    """
    poller = _current.get()
    if poller is not None:
        return await poller.wait(future)
    interval = _MIN_INTERVAL
    try:
        while not future.is_completed():
            await anyio.sleep(interval)
            interval = min(interval * 2, _MAX_INTERVAL)
    finally:
        if not future.is_completed():
            future.cancel()
    return future.result()
