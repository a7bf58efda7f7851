"""Decoding inside an epoch: its settings and the pool of threads the epoch owns.

The engine opens one :class:`EpochDecoding` per epoch (:func:`open_decoding`);
a source's ``fetch`` finds it with :func:`current_decoding` and runs decodes in
its pool, so retries, timeouts and cancellation of the fetch cover the decode
too, and decoding never runs on the event-loop thread. The pool's threads start
on the first decode and are joined when the epoch ends, however it ends.

A finished decode wakes its waiting task through the event loop's own
thread-safe scheduling (``call_soon_threadsafe`` / ``TrioToken.run_sync_soon``):
no polling, no blocking call into the loop.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
import anyio.lowlevel

from .._core.signals import signals_blocked
from .resize import single_threaded_torch

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence
    from concurrent.futures import Future

    from .._batch.slabs import BatchSlabs
    from .._plan.geometry import Boxes, Geometry
    from .._stats.recorder import EpochRecorder

__all__ = ["EpochDecoding", "current_decoding", "open_decoding"]

T = TypeVar("T")
P = TypeVar("P", bound="Sequence[int]")  # a part of a fetch's rows


@dataclass(frozen=True)
class DecodeSettings:
    """How an epoch decodes images: ``mode`` "auto" or "deeplake", threads, reduced size,
    and with a geometry, what it places (the roles of columns, boxes) for which epoch."""

    mode: str = "auto"
    threads: int | None = None
    image_size: tuple[int, int] | None = None
    geometry: Geometry | None = None
    roles: Mapping[str, str] = field(default_factory=dict)
    reference: str | None = None
    boxes: Sequence[Boxes] = ()
    return_geometry: bool = False
    seed: int = 0
    epoch: int = 0


class EpochDecoding:
    """One epoch's decode settings and thread pool.

    Guarantee: after :meth:`close`, no decode of this epoch is running and the
    pool's threads have ended. A decode whose waiting task is cancelled is
    dropped if it has not started; if it has, the task waits for it to end
    (its result is ignored), so no decode outlives the fetch attempt it served. With
    ``stats``, each decode's rows and its CPU time in the thread are counted.
    """

    def __init__(
        self,
        settings: DecodeSettings,
        slabs: BatchSlabs | None = None,
        stats: EpochRecorder | None = None,
    ) -> None:
        self.settings = settings
        self.slabs = slabs  # batch tensors to decode into, in ordered batch mode
        self._stats = stats
        self._pool: ThreadPoolExecutor | None = None
        self._call_soon: Callable[..., object] | None = None
        self._closed = False

    @functools.cached_property
    def threads(self) -> int:
        """The pool's threads: ``decode_threads``, else this process's share of the CPUs."""
        from .jpeg import default_decode_threads

        return self.settings.threads or default_decode_threads()

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            token: Any = anyio.lowlevel.current_token().native_token
            self._call_soon = getattr(token, "run_sync_soon", None) or token.call_soon_threadsafe
            # Resizes use torch ops: no OpenMP team per decode thread (see .resize).
            self._pool = ThreadPoolExecutor(
                self.threads,
                thread_name_prefix="anyloader-decode",
                initializer=single_threaded_torch,
            )
        return self._pool

    async def run_parts(self, fn: Callable[[P], T], cuts: Sequence[P]) -> list[T]:
        """``fn(part)`` for every part of ``cuts`` at once in the pool, results in their order.

        Each call counts ``len(part)`` decoded rows (see :meth:`run`).

        Raises:
            Exception: whatever a call raises (the others are then cancelled).
        """
        results: list[T | None] = [None] * len(cuts)

        async def one(k: int, part: P) -> None:
            results[k] = await self.run(fn, part, rows=len(part))

        async with anyio.create_task_group() as tg:
            for k, part in enumerate(cuts):
                tg.start_soon(one, k, part)
        return cast("list[T]", results)

    async def run(self, fn: Callable[..., T], *args: Any, rows: int = 0, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in the epoch's pool; return its result.

        ``rows`` (not passed to ``fn``) is how many rows the call decodes; the
        epoch's stats count them and the CPU time ``fn`` took, once it returns.

        Raises:
            RuntimeError: the epoch is over (the pool is closed).
            Exception: whatever ``fn`` raises.
        """
        if self._closed:
            raise RuntimeError("this epoch's decode pool is closed")
        done = anyio.Event()
        took = [0.0, 0.0]  # CPU seconds decoding, seconds waiting for a free thread
        submitted = time.perf_counter()

        def timed() -> T:
            # The pool thread's CPU time: neither the wait for a free thread nor
            # time the thread was not running (other processes) is decoding.
            took[1] = time.perf_counter() - submitted
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                took[0] = time.thread_time() - start

        executor = self._executor()
        # The pool starts its threads in submit: they inherit the blocked mask.
        with signals_blocked():
            future = executor.submit(timed)
        call_soon = self._call_soon
        assert call_soon is not None

        def wake(_: Future[T]) -> None:
            # From a pool thread (or this one, if it is already done): never block the loop.
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                call_soon(done.set)

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            if not future.cancel():
                # Running: it writes into this fetch's slots of a batch tensor, which
                # a retry fills again and a later batch may reuse. It ends before we do
                # (one call: a few images).
                with anyio.CancelScope(shield=True):
                    await done.wait()
            raise
        result = future.result()
        if self._stats is not None:
            self._stats.decoded(rows, took[0], took[1])
        return result

    def close(self) -> None:
        """Drop queued decodes, wait for running ones (one image each) and end the threads."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            _release_thread_arenas()


def _release_thread_arenas() -> None:
    """Give the memory the pool's threads freed back to the system (glibc only).

    glibc gives threads their own malloc arenas and keeps what they free for
    reuse. Decoded images are allocated in the decode threads, which are new
    every epoch; over 400-row epochs of 64 px images RSS grew 10.4 MiB in 9
    epochs without this and 6.9 MiB with it, then levelled off (+12 MiB after
    ~10 epochs, flat for the next 30). ``MALLOC_ARENA_MAX=1`` makes it flat.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc: nothing to trim, nothing leaked this way
        return None


_current: contextvars.ContextVar[EpochDecoding | None] = contextvars.ContextVar(
    "anyloader_decoding", default=None
)


def current_decoding() -> EpochDecoding | None:
    """The decoding of the epoch this task runs in; None outside an engine (or after it)."""
    decoding = _current.get()
    return None if decoding is None or decoding._closed else decoding


@asynccontextmanager
async def open_decoding(
    settings: DecodeSettings, slabs: BatchSlabs | None = None, stats: EpochRecorder | None = None
) -> AsyncIterator[EpochDecoding]:
    """Provide an :class:`EpochDecoding` to the tasks started in the body; close it at exit."""
    decoding = EpochDecoding(settings, slabs, stats)
    token = _current.set(decoding)
    try:
        yield decoding
    finally:
        decoding.close()
        _current.reset(token)
