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
    if the waiting task is cancelled and no other task waits on the same
    future, the future is cancelled and forgotten. Any number of tasks may
    wait on one future. After the poller shuts down, :meth:`wait` polls alone
    (a task that outlived the poller's block still gets its result).
    """

    def __init__(self) -> None:
        # One entry per wait, not per future: two waiters on one future both wake.
        self._pending: dict[object, tuple[Pollable[Any], anyio.Event]] = {}
        self._work = anyio.Event()
        self._closed = False

    @property
    def pending(self) -> int:
        """Number of waits in progress right now."""
        return len(self._pending)

    async def wait(self, future: Pollable[T_co]) -> T_co:
        """Wait until ``future`` completes and return its result.

        Raises:
            Exception: whatever ``future.result()`` raises.
        """
        if self._closed:
            return await _poll_alone(future)
        if not future.is_completed():
            done = anyio.Event()
            key = object()
            self._pending[key] = (future, done)
            self._work.set()
            try:
                await done.wait()
            finally:
                abandoned = self._pending.pop(key, None) is not None
                shared = any(f is future for f, _ in self._pending.values())
                if abandoned and not shared and not future.is_completed():
                    future.cancel()
            if not future.is_completed():
                # Woken by shutdown while we still wait: go on alone.
                return await _poll_alone(future)
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

    def close(self) -> None:
        """Shut down: wake every waiter (each goes on polling alone); later waits poll alone."""
        self._closed = True
        for _, done in self._pending.values():
            done.set()
        self._pending.clear()


async def _poll_alone(future: Pollable[T_co]) -> T_co:
    """Poll one future with the poller's back-off; cancel it if the wait is cancelled."""
    interval = _MIN_INTERVAL
    try:
        while not future.is_completed():
            await anyio.sleep(interval)
            interval = min(interval * 2, _MAX_INTERVAL)
    finally:
        if not future.is_completed():
            future.cancel()
    return future.result()


_current: contextvars.ContextVar[FuturePoller | None] = contextvars.ContextVar(
    "anyloader_future_poller", default=None
)


@asynccontextmanager
async def open_future_poller() -> AsyncIterator[FuturePoller]:
    """Run a poller for the body; tasks started inside share it via :func:`wait_future`.

    On exit, waits still in progress continue by polling alone (their tasks
    are normally cancelled with the body's task group, which cancels their
    futures).
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
        poller.close()
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
    return await _poll_alone(future)
