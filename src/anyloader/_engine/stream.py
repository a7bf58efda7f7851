"""``open_stream``: one epoch of the engine, for async code on asyncio or trio."""

from __future__ import annotations

import contextlib
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .._batch.memory import BatchMemory
from .._core.checks import non_negative_int
from .._options import Options
from .._plan.plan import Shard, plan_groups, shard_plan
from .._plan.state import Dataset
from .._stats.recorder import EpochRecorder
from .config import LoaderConfig
from .handout import Handout, batch_slabs
from .pipeline import Item, RowBudget, run_engine

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence
    from typing import Unpack  # annotations only: never imported at run time

    import numpy as np
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from .._batch.slabs import BatchSlabs
    from .._options import LoaderOptions
    from .._stats.epoch_stats import EpochStats

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["SampleStream", "open_stream"]


class SampleStream:
    """The samples of one epoch (batches with ``batch_size``), from :func:`open_stream`.

    ``async for sample in stream`` or ``await stream.receive()``. Rows go back
    to the row budget as you take samples, so a consumer can never stall the
    engine by taking samples the wrong way.

    Guarantee: the iteration ends (``StopAsyncIteration``, or
    ``anyio.EndOfStream`` from :meth:`receive`) only after every planned row
    was yielded.

    Raises:
        Exception: the epoch's failure as the source raised it (also
            ``KeyboardInterrupt``/``SystemExit`` raised in a fetch).
        RuntimeError: the transform raised ``StopIteration``/``StopAsyncIteration``.
    """

    def __init__(
        self,
        receive: MemoryObjectReceiveStream[Item],
        budget: RowBudget,
        handout: Handout,
        stats: EpochRecorder,
    ) -> None:
        self._receive = receive
        self._budget = budget
        self._handout = handout
        self._stats = stats

    def stats(self) -> EpochStats:
        """This epoch's :class:`~anyloader.EpochStats` so far (final once it ended).

        The consumer is the task calling :meth:`receive`: its wait is the time
        ``receive`` waited for the engine. The epoch's clock stops when the
        stream ends or the ``open_stream`` block exits.
        """
        return self._stats.snapshot()

    async def receive(self) -> Any:
        """The next sample (or batch).

        Raises:
            anyio.EndOfStream: the epoch is complete.
            Exception: see the class.
        """
        handout = self._handout
        while handout.waiting:
            self._budget.give_back(handout.handed)
            handout.handed = 0
            try:
                # What receive() does, with the clock read only when it must wait.
                await anyio.lowlevel.checkpoint()
                try:
                    item = self._receive.receive_nowait()
                except anyio.WouldBlock:
                    began = self._stats.consumer_waiting()
                    item = await self._receive.receive()
                    self._stats.consumer_waited(began)
                handout.feed([item])
                while True:  # whatever else is ready, without a checkpoint per item
                    handout.feed([self._receive.receive_nowait()])
            except anyio.WouldBlock:
                pass
            except anyio.EndOfStream:
                # The engine closes its end after its outcome; before it, only a bug can.
                handout.feed_end()
        taken = handout.pop()
        if taken is None:
            self._stats.finish()
            raise anyio.EndOfStream
        return taken[0]

    def __aiter__(self) -> SampleStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


@asynccontextmanager
async def open_stream(
    source: object,
    *,
    columns: Sequence[str] | None = None,
    epoch: int = 0,
    shard: Shard | None = None,
    start: int = 0,
    **options: Unpack[LoaderOptions],
) -> AsyncIterator[SampleStream]:
    """Stream one epoch of ``source`` from async code, on asyncio or trio.

    ``async with open_stream(url, shuffle=True) as samples: async for s in samples``.
    ``columns`` and ``options`` are ``AsyncDataset``'s (docs/guide.md lists
    them), with the same defaults and meaning; the transform runs on the
    event loop thread here. ``shard`` picks the slice of the epoch (default:
    all of it) and ``start`` skips that many of the shard's rows.

    Guarantee: leaving the block, normally or not, cancels every fetch before
    it returns. An exception raised in the block leaves it as itself, never
    wrapped in an exception group and never replaced.

    Raises:
        TypeError, ValueError: bad arguments, before anything starts.
        Exception: the epoch's failure, unwrapped (from the stream).
    """
    config = LoaderConfig.build(source, Options.validate(columns=columns, **options))
    non_negative_int("epoch", epoch)
    non_negative_int("start", start)
    if shard is not None and not isinstance(shard, Shard):
        raise TypeError(f"shard must be an anyloader.Shard or None, got {shard!r}")
    shard = shard or Shard()
    o = config.options
    order = Dataset.of(len(config.source), o).order(epoch)
    plan = shard_plan(order, shard, even=o.even)
    positions = range(min(start, plan.length), plan.length)
    stats = EpochRecorder()
    budget = RowBudget(config.budget, stats)
    # Chunks in flight hold at least a row of budget each, plus the outcome: never full.
    send, receive = anyio.create_memory_object_stream[Item](config.budget + 1)
    memory = BatchMemory(shared=False)
    slabs = batch_slabs(o, len(positions), memory)
    handout = Handout(config, epoch=epoch, memory=memory, slabs=slabs)
    stream = SampleStream(receive, budget, handout, stats)
    body_error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                _run,
                config,
                plan_groups(plan, positions, config.fetch_size),
                len(positions),
                budget,
                send,
                hash((o.seed, epoch, shard)),
                epoch,
                slabs,
                stats,
            )
            try:
                with receive:
                    yield stream
            except BaseException as exc:
                # Kept out of the task group, which would wrap it in a group of
                # its own: the block's exception leaves as itself.
                body_error = exc
            finally:
                tg.cancel_scope.cancel()
                memory.close()
                stats.finish()
    except BaseExceptionGroup as group:
        # Only the engine's own tasks are in this group, never the block's errors.
        if len(group.exceptions) == 1 and body_error is None:
            raise group.exceptions[0] from group
        raise
    if body_error is not None:
        raise body_error


async def _run(
    config: LoaderConfig,
    groups: Iterator[tuple[np.ndarray, np.ndarray]],
    planned: int,
    budget: RowBudget,
    send: MemoryObjectSendStream[Item],
    seed: int,
    epoch: int,
    slabs: BatchSlabs | None,
    stats: EpochRecorder,
) -> None:
    def emit(item: Item) -> None:
        # Broken: the block has exited, nobody reads this epoch, and it is being cancelled.
        with contextlib.suppress(anyio.BrokenResourceError):
            send.send_nowait(item)

    with send:
        await run_engine(
            config, groups, planned, budget, emit, seed=seed, epoch=epoch, slabs=slabs, stats=stats
        )
