"""The engine: one AnyIO task group that fetches an epoch plan concurrently.

::

    plan --next group--> N fetchers --chunks--> [reorder] --emit--> consumer

Fetchers pull the next group straight from the plan: no producer task and no
hand-off per request. Backpressure is a row budget (``prefetch + concurrency *
fetch_size`` plus one batch): a fetcher takes rows from it before it pulls a
group, the consumer gives them back as it takes samples, so rows fetched but
not consumed never exceed it. Taking the budget before pulling the group also
means the lowest group in flight always holds budget, so the reorder window
cannot deadlock.

The engine's outcome travels on the same channel as its rows: after the last
chunk it emits exactly one :class:`Complete` (with the number of rows the plan
held, which the consumer checks against what it received) or one
:class:`Failed` (with the original exception, whatever its type). Nothing
else ends an epoch normally.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from .._batch.chunk import Chunk, check_columns
from .._batch.slabs import first_index
from .._decode.placing import place
from .._decode.threads import current_decoding, open_decoding
from .._sources.futures import open_future_poller
from .._stats.recorder import EpochRecorder
from .retry import retrying

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import numpy as np

    from .._batch.slabs import BatchSlabs
    from .config import LoaderConfig

__all__ = ["Complete", "Failed", "Item", "RowBudget", "run_engine"]


@dataclass(frozen=True, slots=True)
class Complete:
    """The epoch's last item when every group was fetched: ``rows`` is what the plan held."""

    rows: int


@dataclass(frozen=True, slots=True)
class Failed:
    """The epoch's last item when it failed: the original exception, to raise in the consumer."""

    error: BaseException


Item = Chunk | Complete | Failed


class ForeignCancellation(RuntimeError):
    """A fetch raised a cancellation exception that nothing in the engine asked for."""


class RowBudget:
    """Rows handed out and not yet given back; waiters are served first come, first served.

    With ``stats``, it is told when the budget fills (someone must wait: the
    loader waits for the consumer) and when no one waits any more.
    """

    def __init__(self, total: int, stats: EpochRecorder | None = None) -> None:
        self.total = total
        self.in_use = 0
        self._waiters: deque[tuple[int, anyio.Event]] = deque()
        self._stats = stats

    async def take(self, rows: int) -> None:
        """Wait until ``rows`` fit in the budget, then hold them."""
        if not self._waiters and self.in_use + rows <= self.total:
            self.in_use += rows
            return
        entry = (rows, anyio.Event())
        if not self._waiters and self._stats is not None:
            self._stats.loader_blocked()
        self._waiters.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry in self._waiters:
                self._waiters.remove(entry)
                if not self._waiters:
                    self._no_more_waiters()
            else:  # granted as the wait was cancelled: hand it on
                self.give_back(rows)
            raise

    def give_back(self, rows: int) -> None:
        """Return ``rows`` and wake the waiters that now fit, in order."""
        self.in_use -= rows
        if not self._waiters:
            return
        while self._waiters and self.in_use + self._waiters[0][0] <= self.total:
            granted, event = self._waiters.popleft()
            self.in_use += granted
            event.set()
        if not self._waiters:
            self._no_more_waiters()

    def _no_more_waiters(self) -> None:
        if self._stats is not None:
            self._stats.loader_unblocked()


async def _own_cancellation(exc: BaseException) -> None:
    """Re-raise if ``exc`` is a cancellation of ours, else raise a ForeignCancellation.

    Cancellation is level-triggered in AnyIO: when a scope around us really
    was cancelled, the next checkpoint raises again. A source whose fetch
    raises ``CancelledError`` because it awaited something someone else
    cancelled must fail the epoch, not end it quietly.
    """
    await anyio.lowlevel.checkpoint()
    raise ForeignCancellation(
        f"source.fetch raised {type(exc).__name__}, but the epoch was not cancelled; "
        "a cancellation from inside the source is an error, not the end of the epoch"
    ) from exc


async def run_engine(
    config: LoaderConfig,
    groups: Iterator[tuple[np.ndarray, np.ndarray]],
    planned: int,
    budget: RowBudget,
    emit: Callable[[Item], object],
    *,
    seed: int,
    epoch: int = 0,
    slabs: BatchSlabs | None = None,
    stats: EpochRecorder | None = None,
) -> None:
    """Fetch every group of ``groups``; ``emit`` each chunk, then exactly one outcome.

    ``emit`` must not block: the budget bounds what is emitted and not yet
    consumed. Chunks are emitted in plan order when ``config.options.ordered``.

    Guarantee: ``emit`` receives :class:`Complete` only after a chunk for every
    group, and :class:`Failed` for the first failure, whatever its type
    (including ``KeyboardInterrupt`` and a cancellation exception the engine
    did not cause). On cancellation from outside it emits nothing more and
    every fetch is cancelled before it returns. ``stats`` (if given) counts
    each fetch, its latency, retries, faults and decode time.
    """
    options = config.options
    if stats is None:
        stats = EpochRecorder()
    fetch_started, fetched, on_fault = stats.fetch_started, stats.fetched, stats.fault
    boxes_dropped = stats.boxes_dropped
    source, columns, fetch_size = config.source, config.columns, config.fetch_size
    geometry = options.geometry
    # What the engine adds to each row: its placement under the geometry.
    returned = (*columns, "geometry") if options.return_geometry else columns
    retry, is_transient = config.retry, config.is_transient
    rng = random.Random(seed)
    plan = enumerate(groups)
    early: dict[int, Chunk] = {}  # chunks ahead of the next in order; the budget bounds them
    expected = 0
    failed = False

    def deliver(seq: int, chunk: Chunk) -> None:
        nonlocal expected
        if not options.ordered:
            emit(chunk)
            return
        early[seq] = chunk
        while expected in early:
            emit(early.pop(expected))
            expected += 1

    async def fetcher(scope: anyio.CancelScope) -> None:
        nonlocal failed
        while True:
            await budget.take(fetch_size)
            try:
                seq, (positions, rows) = next(plan)
            except StopIteration:
                budget.give_back(fetch_size)
                return
            if len(rows) < fetch_size:
                budget.give_back(fetch_size - len(rows))
            indices = rows.tolist()
            # Where this group starts in the plan: a source may decode into its batch.
            first_index.set(seq * fetch_size)

            async def attempt(indices: list[int] = indices) -> Any:
                values = await source.fetch(indices, columns)
                if geometry is None:
                    return values
                # Placed inside the attempt: retries, timeouts and cancellation cover it.
                decoding = current_decoding()
                assert decoding is not None
                placed, dropped = await place(
                    check_columns(values, columns, len(indices)),
                    indices,
                    decoding,
                    first=first_index.get(),
                )
                boxes_dropped(dropped)
                return placed

            started = fetch_started()
            try:
                try:
                    values = await retrying(
                        attempt, retry, is_transient, rng, rows=indices, on_fault=on_fault
                    )
                except anyio.get_cancelled_exc_class() as exc:
                    await _own_cancellation(exc)
                picked = check_columns(values, returned, len(indices))
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # transported to the consumer, never swallowed
                if not failed:
                    failed = True
                    emit(Failed(exc))
                scope.cancel()
                return
            fetched(len(indices), picked, started)
            deliver(seq, Chunk(positions, rows, picked))

    # One poller wakes every fetch waiting on a deeplake future (see anyloader._sources.futures);
    # the decode pool is the epoch's, and is joined after every fetch has ended.
    async with (
        open_decoding(config.decode_settings(epoch), slabs, stats),
        open_future_poller(),
        anyio.create_task_group() as tg,
    ):
        for _ in range(min(config.concurrency, max(1, -(-planned // fetch_size)))):
            tg.start_soon(fetcher, tg.cancel_scope)
    if not failed:
        emit(Complete(planned))
