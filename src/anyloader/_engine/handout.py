"""The consumer's side of an epoch: engine items in, samples or batches out, outcome checked.

Shared by the async :class:`~anyloader.SampleStream` and the synchronous
iterator of ``AsyncDataset``, so both end an epoch the same way: normally only
after :class:`~anyloader._engine.pipeline.Complete` arrived and the rows received
equal the rows planned; otherwise by raising.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from .._batch.builder import BatchBuilder
from .._batch.chunk import Chunk
from .pipeline import Complete, Failed

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .._batch.memory import BatchMemory
    from .._batch.slabs import BatchSlabs
    from .._options import Options
    from .config import LoaderConfig
    from .pipeline import Item

__all__ = ["EpochIncomplete", "Handout"]


class EpochIncomplete(RuntimeError):
    """The engine reported the epoch complete, but fewer (or more) rows arrived than planned."""


class Handout:
    """Cuts chunks into samples (or batches) and hands them out one at a time, in order.

    Raises:
        Exception: from :meth:`pop`, the epoch's failure as the source raised it,
            :class:`EpochIncomplete` if rows went missing, or ``RuntimeError``
            if the transform raised ``StopIteration``/``StopAsyncIteration``
            (which would otherwise end the consumer's loop silently).
    """

    def __init__(
        self,
        config: LoaderConfig,
        *,
        epoch: int,
        memory: BatchMemory,
        slabs: BatchSlabs | None = None,
    ) -> None:
        options = config.options
        self._transform = options.transform
        self._epoch = epoch if options.return_epoch else None
        self._return_index = options.return_index
        self._builder = (
            None
            if options.batch_size is None
            else BatchBuilder(
                options.batch_size,
                return_index=options.return_index,
                memory=memory,
                slabs=slabs,
                stacks=batch_stacks(config),
                # A geometry gives the columns it places a shape of its own.
                described={
                    name: info
                    for name, info in config.roles.info.items()
                    if name not in config.roles.roles
                },
            )
        )
        self._chunks: deque[Chunk] = deque()  # received, not yet cut into samples or batches
        self._ready: deque[tuple[Any, Any]] = deque()  # (sample or batch, positions)
        self._received = 0
        self._outcome: Complete | Failed | None = None
        self.handed = 0  # rows handed out since the budget was last told

    def feed(self, items: Iterable[Item]) -> None:
        """Take items from the engine, in the order it emitted them."""
        for item in items:
            if isinstance(item, Chunk):
                self._received += len(item)
                self._chunks.append(item)
            elif isinstance(item, Complete):
                self._outcome = item
                if self._received != item.rows:
                    self._outcome = Failed(
                        EpochIncomplete(
                            f"the epoch ended with {self._received} of its {item.rows} rows; "
                            "anyloader never ends an epoch early: this is a bug, please report it"
                        )
                    )
            else:
                self._outcome = item

    def feed_end(self) -> None:
        """The engine's stream closed: without an outcome, the epoch did not complete."""
        if self._outcome is None:
            self._outcome = Failed(
                EpochIncomplete(
                    f"the engine stopped after {self._received} rows without an outcome"
                )
            )

    def _cut(self) -> None:
        # Samples and batches are made as they are asked for, so an error in
        # one (a batch whose column changed form) comes after those before it.
        while not self._ready and self._chunks:
            chunk = self._chunks.popleft()
            if self._builder is not None:
                self._ready.extend(self._builder.add(chunk))
            else:
                samples = chunk.samples(return_index=self._return_index)
                self._ready.extend(zip(samples, chunk.positions.tolist(), strict=True))
        if not self._ready and self._builder is not None and isinstance(self._outcome, Complete):
            self._ready.extend(self._builder.finish())

    @property
    def waiting(self) -> bool:
        """Nothing to hand out and the epoch not over: the engine must be asked for more."""
        self._cut()
        return not self._ready and self._outcome is None

    def pop(self) -> tuple[Any, Any] | None:
        """The next sample (or batch) with its positions, transformed; None at the end.

        Call only when not :attr:`waiting`.
        """
        self._cut()
        if not self._ready:
            if isinstance(self._outcome, Failed):
                raise self._outcome.error
            return None
        value, positions = self._ready.popleft()
        self.handed += 1 if isinstance(positions, int) else len(positions)
        if self._epoch is not None:
            # One int per sample, or per batch: the transform sees it either way.
            value["epoch"] = self._epoch
        if self._transform is not None:
            try:
                value = self._transform(value)
            except (StopIteration, StopAsyncIteration) as exc:
                raise RuntimeError(
                    f"transform raised {type(exc).__name__}; that would end the epoch silently"
                ) from exc
        return value, positions


def batch_stacks(config: LoaderConfig) -> frozenset[str]:
    """The columns batch mode stacks: those the roles say, and the rows' placements."""
    stacks = config.roles.stacks
    return stacks | {"geometry"} if config.options.return_geometry else stacks


def batch_slabs(options: Options, planned: int, memory: BatchMemory) -> BatchSlabs | None:
    """Batch tensors for fetches to decode into: ordered batch mode only (the plan fixes slots)."""
    from .._batch.slabs import BatchSlabs

    if options.batch_size is None or not options.ordered:
        return None
    return BatchSlabs(options.batch_size, planned, memory)


def positions_of(positions: Any) -> list[int]:
    """Positions as a list, for one sample (an int) or a batch (an array)."""
    if isinstance(positions, np.ndarray):
        return [int(p) for p in positions.tolist()]
    return [int(positions)]
