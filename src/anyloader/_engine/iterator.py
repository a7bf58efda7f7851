"""``EpochIterator``: one epoch of ``AsyncDataset`` in this process, as a plain iterator."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NamedTuple

from .._batch.memory import BatchMemory
from .._stats.recorder import EpochRecorder
from .exit import close_at_exit
from .handout import Handout, batch_slabs, positions_of
from .loop_thread import LoopThread

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import numpy as np

    from .._plan.state import Progress
    from .config import LoaderConfig

__all__ = ["EpochIterator", "Tagged"]


class Tagged(NamedTuple):
    """An item with the shard positions of its rows and the DataLoader worker that read them.

    What an ``anyloader.DataLoader`` with ``ordered=False`` receives, to know
    exactly which rows each worker delivered (a pin-memory thread passes a
    named tuple through, pinning its fields).
    """

    value: Any
    positions: list[int]
    worker: int


class EpochIterator:
    """Yields an epoch's samples (or batches) while its engine runs on a loop thread.

    After each item it reports the epoch's :class:`~anyloader._plan.state.Progress`
    to ``report``, so a checkpoint taken between two items is exact. ``stats``
    records the epoch (the engine's counters, and here the time ``next``
    waited for the engine); it is finished when the epoch ends, however it ends.

    With ``tag`` (an ``anyloader.DataLoader`` with ``ordered=False``) each item
    is a :class:`Tagged`.

    Guarantee: ``StopIteration`` only after every planned row was yielded.
    Leaving early (``close``, ``break``, an exception, garbage collection,
    Ctrl-C, interpreter exit) cancels every fetch; off the loop thread it
    returns only after the loop thread has ended.

    Raises:
        Exception: the epoch's failure as the source raised it (also
            ``KeyboardInterrupt``/``SystemExit`` raised in a fetch).
        RuntimeError: ``next`` in a forked child of the process that started it.
    """

    def __init__(
        self,
        backend: str,
        config: LoaderConfig,
        groups: Iterator[tuple[np.ndarray, np.ndarray]],
        progress: Progress,
        report: Callable[[Progress], object],
        *,
        planned: int,
        shared: bool,
        seed: int,
        stats: EpochRecorder | None = None,
        tag: int | None = None,
    ) -> None:
        self._pid = os.getpid()
        self._tag = tag  # the worker id to tag items with (see Tagged); None: plain items
        self._done = True  # until the loop thread exists: __del__ has nothing to close
        self._memory = memory = BatchMemory(shared=shared)
        slabs = batch_slabs(config.options, planned, memory)
        self._handout = Handout(config, epoch=progress.epoch, memory=memory, slabs=slabs)
        self._progress = progress
        self._report = report
        self._give_back_at = max(1, config.budget // 4)
        self._stats = stats = stats if stats is not None else EpochRecorder()
        self._thread = LoopThread(
            backend,
            config,
            groups,
            planned,
            seed=seed,
            epoch=progress.epoch,
            slabs=slabs,
            stats=stats,
        )
        self._done = False
        close_at_exit(self)

    def __iter__(self) -> EpochIterator:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"this epoch was started by process {self._pid}; a forked child cannot "
                "continue it (start a new iteration in the child)"
            )
        handout, thread = self._handout, self._thread
        try:
            while handout.waiting:
                # Waking the loop costs a system call: give rows back in bulk, and
                # always before waiting (the engine may be waiting for them).
                if handout.handed >= self._give_back_at or thread.idle:
                    thread.give_back(handout.handed)
                    handout.handed = 0
                began = self._stats.consumer_waiting()
                items = thread.get()
                self._stats.consumer_waited(began)
                handout.feed(items)
            taken = handout.pop()
        except BaseException:
            self.close()
            raise
        if taken is None:
            self.close()
            raise StopIteration
        value, positions = taken
        delivered = positions_of(positions)
        self._progress = self._progress.deliver(delivered)
        self._report(self._progress)
        return value if self._tag is None else Tagged(value, delivered, self._tag)

    def close(self) -> None:
        """Stop the epoch: cancel every fetch and end the loop thread."""
        if not self._done:
            self._done = True
            self._thread.close()  # no decode writes into batch memory after this
            self._memory.close()
            self._stats.finish()

    def __del__(self) -> None:
        self.close()
