"""One epoch's engine on a private event-loop thread, handing items to a consumer thread.

::

    consumer thread                          loop thread (anyio.run)
    get()      <-- queue.SimpleQueue.put ---  run_engine(emit=put)
    give_back  --- call soon, thread-safe --> RowBudget.give_back
    close()    --- call soon: cancel -------> engine cancelled, loop returns; join

Items cross in a ``queue.SimpleQueue``: the engine never blocks on it (the
row budget bounds it), the consumer blocks in ``get`` without spinning, in
slices, so a Ctrl-C reaches it within one whichever thread the kernel gave the
signal to (see :mod:`anyloader._core.signals`); the loop thread and its decode
threads block the asynchronous signals, so the kernel gives them to the main
thread. Calls into the loop use the backend's own non-blocking,
thread-safe scheduling (``loop.call_soon_threadsafe``, ``TrioToken.run_sync_soon``),
never a blocking portal call: that is what lets a trio loop thread be driven
from a thread that is itself running ``trio.run``, and lets ``close`` run on
the loop thread itself (garbage collection can run a finaliser anywhere).

Anything the loop thread raises (including ``KeyboardInterrupt`` from a
fetch, or a loop that fails to start) reaches the consumer as a ``Failed``
item: the consumer raises it as itself.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import queue
import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .._core.signals import SLICE, join, signals_blocked
from .pipeline import Failed, RowBudget, run_engine

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import numpy as np

    from .._batch.slabs import BatchSlabs
    from .._stats.recorder import EpochRecorder
    from .config import LoaderConfig
    from .pipeline import Item

__all__ = ["LoopThread", "load_backend"]


def load_backend(backend: str) -> None:
    """Import AnyIO's support for ``backend`` now, rather than inside the first epoch.

    AnyIO imports a backend's module on its first ``anyio.run``: 11 ms for
    asyncio and 92 ms for trio (which imports trio) on an idle 2-core machine,
    paid on the loop thread while the first batch is awaited (a third of the
    first batch's 0.12 s in a profile). Done with the dataset, it is paid once,
    outside every epoch, and fork DataLoader workers inherit it.
    """
    # AnyIO's module layout is its own business: if it moves, the import just
    # happens at the first epoch again.
    with contextlib.suppress(ImportError):
        importlib.import_module(f"anyio._backends._{backend}")


class LoopThread:
    """Runs :func:`run_engine` for one epoch on a new thread with its own event loop.

    Guarantee: after :meth:`close` returns on any other thread, the loop
    thread has ended and no fetch of this epoch is running. Called on the
    loop thread itself, :meth:`close` cancels the engine and returns at once;
    the thread then ends by itself. In a forked child (which has no copy of
    the thread) it does nothing.
    """

    def __init__(
        self,
        backend: str,
        config: LoaderConfig,
        groups: Iterator[tuple[np.ndarray, np.ndarray]],
        planned: int,
        *,
        seed: int,
        epoch: int = 0,
        slabs: BatchSlabs | None = None,
        stats: EpochRecorder | None = None,
    ) -> None:
        self._items: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._pid = os.getpid()
        self._started = threading.Event()
        self._call_soon: Callable[..., object] | None = None
        self._scope: anyio.CancelScope | None = None
        self._budget = RowBudget(config.budget, stats)
        self._closed = False

        async def main() -> None:
            token: Any = anyio.lowlevel.current_token().native_token
            # asyncio's loop and trio's TrioToken: both schedule a call from any thread.
            self._call_soon = getattr(token, "run_sync_soon", None) or token.call_soon_threadsafe
            with anyio.CancelScope() as self._scope:
                self._started.set()
                await run_engine(
                    config,
                    groups,
                    planned,
                    self._budget,
                    self._items.put,
                    seed=seed,
                    epoch=epoch,
                    slabs=slabs,
                    stats=stats,
                )

        def run() -> None:
            try:
                anyio.run(main, backend=backend)
            except BaseException as exc:  # reaches the consumer, raised there as itself
                self._items.put(Failed(exc))
            finally:
                self._started.set()

        # A daemon: an iterator left open at exit is closed by an atexit hook
        # (anyloader._engine.exit), which runs only after non-daemon threads are joined.
        self._thread = threading.Thread(target=run, name="anyloader", daemon=True)
        with signals_blocked():  # the thread inherits the mask: signals go to the main thread
            self._thread.start()

    def get(self) -> list[Item]:
        """Block until the engine has emitted something; return all that is ready.

        Waits in slices: a signal's Python handler (``KeyboardInterrupt``) runs
        within one, even if the C-level handler ran on another thread.
        """
        while True:
            try:
                items = [self._items.get(timeout=SLICE)]
                break
            except queue.Empty:
                continue
        while True:
            try:
                items.append(self._items.get_nowait())
            except queue.Empty:
                return items

    @property
    def idle(self) -> bool:
        """Nothing has been emitted that the consumer has not taken: :meth:`get` would wait."""
        return self._items.empty()

    def _call(self, fn: Callable[..., object], *args: Any) -> bool:
        """Schedule ``fn(*args)`` on the loop; False if the loop has already finished."""
        while not self._started.wait(SLICE):
            pass
        if self._call_soon is None:
            return False
        try:
            self._call_soon(fn, *args)
        except RuntimeError:  # asyncio: loop closed; trio: RunFinishedError
            return False
        return True

    def give_back(self, rows: int) -> None:
        """Return ``rows`` to the engine's row budget (they were consumed)."""
        if rows:
            self._call(self._budget.give_back, rows)

    def close(self) -> None:
        """Cancel the engine and (off the loop thread) wait until its thread has ended."""
        if self._closed or os.getpid() != self._pid:
            return  # a forked child has no loop thread: nothing of ours runs here
        self._closed = True
        self._call(self._cancel)
        if threading.current_thread() is not self._thread:
            join(self._thread)

    def _cancel(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
