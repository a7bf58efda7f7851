"""Epoch stats of DataLoader workers, added up where the DataLoader was started.

Workers are other processes, and each keeps its own copy of the dataset. So
each dataset creates, in the process that owns it, a small shared array (a
spawn-context ``multiprocessing.Array`` of about 2 KiB) that its DataLoader
workers inherit (fork) or receive pickled (spawn, forkserver), as
:class:`~anyloader._plan.epochs.SharedSchedule` does, with the same ownership
rules. A worker adds what its epoch recorded since it last did (so any number
of workers share one set of cells, exactly) at the start of each epoch, at
most every half second while its loop waits for data, and at the end of the
epoch, before its iterator raises ``StopIteration``. No thread of ours runs
for it.

"The latest epoch" is the latest iteration started: one ``iter(loader)``
(each persistent worker's next iteration is a new one), or an iteration in
the owner process itself. Every iteration has a number from the dataset's
epoch schedule (:class:`~anyloader._plan.epochs.SharedSchedule`): the workers of
one DataLoader iteration share it, and a later iteration has a larger one,
however torch's random generator was seeded. The cells hold the iteration
with the largest number reported so far; a report of a larger number resets
them, one of a smaller number (an older iteration, late) is dropped.
``latest()`` returns the newer of that and the owner's own iteration.
"""

from __future__ import annotations

import multiprocessing
import os
import weakref
from typing import TYPE_CHECKING, Any

from .epoch_stats import MAX_INDEX, VECTOR_LENGTH, EpochStats
from .recorder import EpochRecorder
from .timeline import SERIES, Timeline, TimelineData

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["SharedStats"]

# [iteration number of the cells, timeline origin, timeline bins]
_NUMBER, _ORIGIN, _BINS = range(3)
_VECTOR = 3

_live: weakref.WeakSet[SharedStats] = weakref.WeakSet()


class SharedStats:
    """The latest epoch's stats of a dataset, across the process and its DataLoader workers.

    Guarantee: in the owner process, :meth:`latest` is the stats of the
    latest iteration: its own, or the sum over the workers of the latest
    DataLoader iteration as far as they have reported (all of it once the
    DataLoader iterator is exhausted). Inside a worker it is the worker's
    own. A copy that reaches any other process (``pickle``, ``os.fork()``,
    ``torch.multiprocessing.spawn``) starts empty, with cells of its own.

    ``timeline_bins`` > 0 (profile runs) also ships a timeline per iteration.
    """

    def __init__(self, *, timeline_bins: int = 0, origin: float = 0.0) -> None:
        self._timeline_bins = timeline_bins
        self._origin = origin
        self._local: tuple[int, EpochRecorder] | None = None
        self._create()

    def _create(self) -> None:
        self._owner = os.getpid()
        bins = self._timeline_bins
        size = _VECTOR + VECTOR_LENGTH + (1 + len(SERIES) * bins if bins else 0)
        self._cells: Any = multiprocessing.get_context("spawn").Array("d", size)
        self._cells[:_VECTOR] = [0.0, self._origin, self._timeline_bins]
        self._local = None
        _live.add(self)

    def _own(self) -> None:
        """Outside a worker of the owner, detach: this process's stats are its own."""
        from torch.utils.data import get_worker_info

        if os.getpid() == self._owner:
            return
        if get_worker_info() is not None and os.getppid() == self._owner:
            return
        self._create()

    def start(self, number: int) -> EpochRecorder:
        """Iteration ``number`` (from the epoch schedule) starts in this process: its recorder.

        In a DataLoader worker the recorder reports to the cells, at once (so
        they hold this iteration, not the one before) and as it goes.
        """
        from torch.utils.data import get_worker_info

        self._own()
        bins = self._timeline_bins
        timeline = Timeline(self._origin, bins=bins) if bins else None
        if get_worker_info() is None:
            recorder = EpochRecorder(timeline=timeline)
        else:
            publish = _Publisher(self, number)
            recorder = EpochRecorder(timeline=timeline, publish=publish)
            publish(recorder)
        self._local = (number, recorder)
        return recorder

    def latest(self) -> EpochStats:
        """The latest iteration's stats (all zero before the first)."""
        local, shared = self._latest()
        if local is not None:
            return local.snapshot()
        return EpochStats() if shared is None else EpochStats._from_vector(shared)

    def latest_timeline(self) -> TimelineData | None:
        """The latest iteration's timeline, if it recorded one."""
        local, _ = self._latest()
        if local is not None:
            return local.timeline_data()
        bins = self._timeline_bins
        if not bins:
            return None
        with self._cells.get_lock():
            if self._cells[_NUMBER] == 0:
                return None
            vector = self._cells[_VECTOR + VECTOR_LENGTH :]
        return TimelineData.from_vector(self._origin, vector)

    def _latest(self) -> tuple[EpochRecorder | None, list[float] | None]:
        """The owner's own recorder if its iteration is the latest, else the workers' cells."""
        from torch.utils.data import get_worker_info

        self._own()
        local = self._local
        if get_worker_info() is not None:
            return (None if local is None else local[1]), None
        with self._cells.get_lock():
            number = self._cells[_NUMBER]
            vector = self._cells[_VECTOR : _VECTOR + VECTOR_LENGTH]
        if local is not None and local[0] > number:
            return local[1], None
        return None, (vector if number > 0 else None)

    def _add(
        self, number: int, delta: Sequence[float], peak: float, timeline: TimelineData | None
    ) -> bool:
        """Add a worker's news of iteration ``number``; False if a newer one holds the cells."""
        cells = self._cells
        with cells.get_lock():
            if number < cells[_NUMBER]:
                return False  # an older iteration, reporting late: no longer the latest
            if number > cells[_NUMBER]:
                cells[_NUMBER] = number
                cells[_VECTOR:] = [0.0] * (len(cells) - _VECTOR)
            end = _VECTOR + VECTOR_LENGTH
            cells[_VECTOR:end] = [a + b for a, b in zip(cells[_VECTOR:end], delta, strict=True)]
            cells[_VECTOR + MAX_INDEX] = max(cells[_VECTOR + MAX_INDEX], peak)
            if timeline is not None:
                stored = cells[end:]
                if stored[0] == 0.0:  # nothing yet: this timeline's width
                    stored[0] = timeline.width
                merged = TimelineData.from_vector(self._origin, stored) + timeline
                cells[end:] = merged.to_vector()
        return True

    def __getstate__(self) -> dict[str, Any]:
        from multiprocessing.context import get_spawning_popen

        self._own()
        state = {"bins": self._timeline_bins, "origin": self._origin}
        if get_spawning_popen() is not None:
            # A process being started (a DataLoader worker among them) shares the cells.
            state.update(owner=self._owner, cells=self._cells)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._timeline_bins, self._origin = state["bins"], state["origin"]
        self._local = None
        if "cells" in state:
            self._owner, self._cells = state["owner"], state["cells"]
            _live.add(self)
        else:
            self._create()


class _Publisher:
    """Adds one worker's iteration to the cells: what it recorded since the last time."""

    def __init__(self, channel: SharedStats, number: int) -> None:
        self._channel = channel
        self._number = number
        self._pid = os.getpid()
        self._sent = [0.0] * VECTOR_LENGTH
        self._sent_timeline: TimelineData | None = None

    def __call__(self, recorder: EpochRecorder) -> None:
        if os.getpid() != self._pid:
            return  # a forked child's copy of a worker's iterator: not that worker
        vector = recorder.snapshot()._to_vector()
        delta = [now - before for now, before in zip(vector, self._sent, strict=True)]
        delta[MAX_INDEX] = 0.0  # a maximum does not add up: _add takes the max
        timeline = recorder.timeline_data()
        news = timeline
        if timeline is not None and self._sent_timeline is not None:
            before = self._sent_timeline.coarsened(timeline.width)
            news = TimelineData(
                timeline.origin,
                timeline.width,
                tuple(
                    tuple(a - b for a, b in zip(s, t, strict=True))
                    for s, t in zip(timeline.series, before.series, strict=True)
                ),
            )
        if self._channel._add(self._number, delta, vector[MAX_INDEX], news):
            self._sent = vector
            self._sent_timeline = timeline


def _own_before_fork() -> None:
    # As SharedSchedule: a process that received a channel (a rank started by
    # torch.multiprocessing.spawn) owns it before it forks DataLoader workers.
    for channel in list(_live):
        channel._own()


os.register_at_fork(before=_own_before_fork)
