"""The engine: one AnyIO task group that fetches an epoch plan concurrently.

::

    producer --work--> N fetchers --chunks--> [reorder] --chunks--> SampleStream

Backpressure is a row budget (``prefetch + concurrency * fetch_size``): the
producer takes rows from it before handing out work, the consumer gives them
back as it takes samples, so rows fetched but not consumed never exceed it,
whatever the speed of either side. The first failure cancels the group and is
raised to the consumer as the original exception.
"""

from __future__ import annotations

import random
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

from ._bridge import open_future_poller
from ._config import LoaderConfig, LoaderOptions, non_negative_int
from ._plan import Shard, plan_epoch
from ._retry import retrying
from ._samples import Chunk, check_columns

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from typing import Unpack  # annotations only: never imported at run time

    from anyio.abc import ObjectReceiveStream, ObjectSendStream
    from anyio.streams.memory import MemoryObjectReceiveStream

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["SampleStream", "open_chunks", "open_stream"]

_Work = tuple[int, np.ndarray]  # (position in plan, rows)
_Done = tuple[int, Chunk]  # (position in plan, fetched rows)


class RowBudget:
    """Counts rows handed out and not yet given back; one task waits for room."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.in_use = 0
        self._room: anyio.Event | None = None

    async def take(self, rows: int) -> None:
        while self.in_use + rows > self.total:
            self._room = anyio.Event()
            await self._room.wait()
        self.in_use += rows

    def give_back(self, rows: int) -> None:
        self.in_use -= rows
        if self._room is not None:
            self._room.set()
            self._room = None


class _Failure:
    """The first exception of the group, kept for consumers outside the group's scope."""

    error: BaseException | None = None


class SampleStream:
    """What ``open_stream`` yields: the epoch's samples, as chunks or one by one.

    Async-iterate it for samples (dicts), or call :meth:`receive_chunks` to
    take whatever is ready in one call (the path the torch dataset uses to
    keep thread round trips per batch, not per sample). The iteration ends
    after the last row of the plan; if the pipeline failed it raises the
    original exception instead.
    """

    def __init__(
        self,
        receive: MemoryObjectReceiveStream[_Done],
        budget: RowBudget,
        failure: _Failure,
        config: LoaderConfig,
    ) -> None:
        self._receive = receive
        self._budget = budget
        self._failure = failure
        self._config = config
        self._pending: list[Any] = []
        self._handed = 0

    async def receive_chunks(self, consumed: int = 0) -> list[Chunk]:
        """Give back ``consumed`` rows of budget, then wait for the next chunks.

        Returns every chunk already available (at least one), or ``[]`` when
        the epoch is complete.

        Raises:
            Exception: the pipeline's first failure, as raised by its source.
        """
        if consumed:
            self._budget.give_back(consumed)
        try:
            chunks = [(await self._receive.receive())[1]]
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            if self._failure.error is not None:
                raise self._failure.error from None
            return []
        while True:
            try:
                chunks.append(self._receive.receive_nowait()[1])
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return chunks

    def __aiter__(self) -> SampleStream:
        return self

    async def __anext__(self) -> Any:
        if not self._pending:
            chunks = await self.receive_chunks(self._handed)
            self._handed = 0
            if not chunks:
                raise StopAsyncIteration
            for chunk in chunks:
                self._pending.extend(chunk.samples(return_index=self._config.return_index))
            self._pending.reverse()
        self._handed += 1
        sample = self._pending.pop()
        transform = self._config.transform
        return sample if transform is None else transform(sample)


async def _produce(
    plan: Sequence[np.ndarray], budget: RowBudget, send: ObjectSendStream[_Work]
) -> None:
    async with send:
        for seq, rows in enumerate(plan):
            await budget.take(len(rows))
            await send.send((seq, rows))


async def _fetch(
    config: LoaderConfig,
    receive: ObjectReceiveStream[_Work],
    send: ObjectSendStream[_Done],
    failure: _Failure,
    rng: random.Random,
) -> None:
    source, columns = config.source, config.columns
    async with receive, send:
        async for seq, rows in receive:

            async def attempt(rows: np.ndarray = rows) -> Any:
                return await source.fetch(rows.tolist(), columns)

            try:
                values = await retrying(attempt, config.retry, config.is_transient, rng, rows=rows)
                check_columns(values, columns, len(rows))
            except Exception as exc:
                if failure.error is None:
                    failure.error = exc
                raise
            await send.send((seq, Chunk(rows, {c: values[c] for c in columns})))


async def _reorder(receive: ObjectReceiveStream[_Done], send: ObjectSendStream[_Done]) -> None:
    # Holds only chunks that arrived early; the row budget bounds how many.
    early: dict[int, Chunk] = {}
    expected = 0
    async with receive, send:
        async for seq, chunk in receive:
            early[seq] = chunk
            while expected in early:
                await send.send((expected, early.pop(expected)))
                expected += 1


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception to raise for a failed group: a non-Exception first, else the first."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if not isinstance(leaf, Exception) and not isinstance(
            leaf, anyio.get_cancelled_exc_class()
        ):
            return leaf
    errors = [leaf for leaf in leaves if isinstance(leaf, Exception)]
    return errors[0] if errors else leaves[0]


@asynccontextmanager
async def open_chunks(
    config: LoaderConfig,
    shard: Shard | None = None,
    *,
    epoch: int = 0,
    start: int = 0,
) -> AsyncIterator[SampleStream]:
    """Run the engine for one epoch of ``shard``; yield the stream of its samples.

    Guarantee: the stream yields each row of ``plan_epoch(...)`` once, in plan
    order when ``config.ordered``; leaving the block, normally or not, cancels
    every task and pending fetch before it returns.

    Raises:
        Exception: the first fetch failure (retries exhausted or not transient),
            as the source raised it, not wrapped in an ``ExceptionGroup``.
    """
    non_negative_int("epoch", epoch)
    non_negative_int("start", start)
    shard = shard or Shard()
    plan = plan_epoch(
        len(config.source),
        shard,
        fetch_size=config.fetch_size,
        seed=config.seed,
        epoch=epoch,
        shuffle=config.shuffle,
        even=config.even,
        start=start,
    )
    budget = RowBudget(config.budget)
    failure = _Failure()
    # Work is handed over unbuffered: a fetcher takes a group only when free.
    # The budget bounds chunks in flight, so buffers of that size never block
    # a fetcher for any other reason.
    work_send, work_receive = anyio.create_memory_object_stream[_Work](0)
    done_send, done_receive = anyio.create_memory_object_stream[_Done](config.budget)
    if config.ordered:
        out_send, out_receive = anyio.create_memory_object_stream[_Done](config.budget)
    else:
        out_send, out_receive = done_send, done_receive
    stream = SampleStream(out_receive, budget, failure, config)
    rng = random.Random(hash((config.seed, epoch, shard)))
    try:
        async with open_future_poller(), anyio.create_task_group() as tg:
            tg.start_soon(_produce, plan, budget, work_send)
            with work_receive, done_send:
                for _ in range(min(config.concurrency, max(1, len(plan)))):
                    tg.start_soon(
                        _fetch, config, work_receive.clone(), done_send.clone(), failure, rng
                    )
            if config.ordered:
                tg.start_soon(_reorder, done_receive, out_send)
            try:
                with out_receive:
                    yield stream
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _first_error(group) from None


@asynccontextmanager
async def open_stream(
    source: object,
    *,
    epoch: int = 0,
    shard: Shard | None = None,
    start: int = 0,
    **options: Unpack[LoaderOptions],
) -> AsyncIterator[SampleStream]:
    """Stream one epoch of ``source`` from async code, on asyncio or trio.

    ``async with open_stream(url, shuffle=True) as samples: async for s in samples``.
    ``options`` are :class:`AsyncDataset`'s (``columns``, ``concurrency``,
    ``prefetch``, ``fetch_size``, ``shuffle``, ``seed``, ``ordered``,
    ``transform``, ``return_index``, ``even``, ``retries``, ``timeout``,
    ``retry_if``) with the same defaults and meaning; ``shard`` picks the
    slice of the epoch (default: all of it) and ``start`` skips that many of
    the shard's rows. The transform runs on the event loop thread here.

    Raises:
        TypeError, ValueError: bad arguments, before anything starts.
        Exception: the first fetch failure, unwrapped.
    """
    config = LoaderConfig.build(source, **options)
    if shard is not None and not isinstance(shard, Shard):
        raise TypeError(f"shard must be an anyloader.Shard or None, got {shard!r}")
    async with open_chunks(config, shard or Shard(), epoch=epoch, start=start) as stream:
        yield stream
