"""``EpochRecorder``: the counters of one epoch, updated in place while it runs.

Who writes what (each counter has one writer thread, so no lock is needed):

* the engine, on the loop thread: rows, bytes, fetches and their latency
  (``anyloader._engine.pipeline``), retries and faults (``anyloader._engine.retry``), decode
  time (``anyloader._decode.threads``), and the time the row budget was full
  (``RowBudget``);
* the consumer (the thread iterating, or the task of ``SampleStream``): the
  time it waited for data, and the end of the epoch.

:meth:`EpochRecorder.snapshot` reads them from any thread into an
:class:`~anyloader._stats.epoch_stats.EpochStats`; during an epoch each counter is exact
at some moment, not necessarily all at the same one. Recording costs two
clock reads and a few additions per fetch, two clock reads each time the
consumer has to wait for the engine, and nothing per sample.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .epoch_stats import BUCKETS, OFFSET, PER_OCTAVE, EpochStats, LatencyHistogram
from .timeline import CONSUMER_WAIT, LOADER_WAIT

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .timeline import Timeline, TimelineData

__all__ = ["EpochRecorder"]

_clock = time.perf_counter
_ndarray = np.ndarray


def _nbytes(values: Any) -> int:
    """In-memory size of one column's values: arrays, and bytes/str per row; else 0."""
    if isinstance(values, _ndarray):
        return int(values.nbytes)
    total = 0
    for v in values:
        if isinstance(v, (_ndarray, np.generic)):
            total += v.nbytes
        elif isinstance(v, (bytes, bytearray, str)):
            total += len(v)
    return total


_BULK = 1024


def _with(
    latency: tuple[np.ndarray, float, float, list[float]],
) -> tuple[np.ndarray, float, float, list[float]]:
    """``latency`` with its pending latencies bucketed (a new tuple; ``latency`` is unchanged)."""
    counts, total, peak, pending = latency
    if not pending:
        return latency
    seconds = np.array(pending, dtype=np.float64)  # a copy: the list may still grow
    with np.errstate(divide="ignore"):
        found = np.floor(np.log2(seconds) * PER_OCTAVE) + OFFSET
    # log2(0) is -inf: clipped into bucket 0 with everything faster than bucket 1.
    index = np.clip(np.nan_to_num(found, neginf=0.0), 0, BUCKETS - 1).astype(np.int64)
    counts = counts + np.bincount(index, minlength=BUCKETS)
    return counts, total + float(seconds.sum()), max(peak, float(seconds.max())), []


class EpochRecorder:
    """One epoch's counters; :meth:`snapshot` gives them as :class:`EpochStats`.

    ``publish`` (DataLoader workers only) is called with the recorder at the
    end of the epoch and at most every ``publish_every`` seconds while the
    consumer waits, so the process that started the workers sees their stats.
    ``timeline`` (profile runs only) also records when requests were in flight
    and who waited.
    """

    def __init__(
        self,
        *,
        timeline: Timeline | None = None,
        publish: Callable[[EpochRecorder], object] | None = None,
        publish_every: float = 0.5,
    ) -> None:
        self.started = _clock()
        self.ended: float | None = None
        self._cpu_started = time.process_time()
        self._cpu_ended: float | None = None
        self.rows = self.bytes = 0
        # (bucket counts, latency sum, latency max, latencies not yet bucketed):
        # one tuple, replaced whole, so a snapshot from another thread reads a
        # consistent set while the loop thread records. _pending is its last item.
        self._pending: list[float] = []
        self._latency: tuple[np.ndarray, float, float, list[float]] = (
            np.zeros(BUCKETS, np.int64),
            0.0,
            0.0,
            self._pending,
        )
        self.retries = self.faults = self.timeouts = 0
        self.decoded_rows = 0
        self.decode_seconds = 0.0
        self.decode_wait = 0.0
        self.dropped_boxes = 0
        self.consumer_wait = self.stall = 0.0
        # (seconds the row budget was full before, since when it is full or None),
        # replaced whole by the loop thread so the consumer's thread reads it whole.
        self._loader: tuple[float, float | None] = (0.0, None)
        self.timeline = timeline
        self._publish = publish
        self._publish_every = publish_every
        self._next_publish = self.started + publish_every
        # What a fetch calls when it starts: the clock itself (no call of ours
        # on the hot path), or with a timeline, the clock and a count in flight.
        self.fetch_started: Callable[[], float] = _clock if timeline is None else self._traced_start

    def _traced_start(self) -> float:
        now = _clock()
        assert self.timeline is not None
        self.timeline.in_flight(now, +1)
        return now

    def fetched(self, rows: int, values: Mapping[str, Any], started: float) -> None:
        """A fetch started at ``started`` (from :attr:`fetch_started`) returned ``values``.

        Runs once per fetch, so it does the least it can: latencies are
        bucketed in bulk, :data:`_BULK` at a time (memory stays bounded).
        """
        pending = self._pending
        pending.append(_clock() - started)
        nbytes = 0
        for v in values.values():
            nbytes += v.nbytes if type(v) is _ndarray else _nbytes(v)
        self.rows += rows
        self.bytes += nbytes
        if len(pending) >= _BULK:
            self._latency = _with(self._latency)
            self._pending = self._latency[3]
        if self.timeline is not None:
            self.timeline.in_flight(_clock(), -1)

    def fault(self, exc: BaseException, *, retried: bool, timed_out: bool) -> None:
        """An attempt raised ``exc``; it is tried again if ``retried``."""
        self.faults += 1
        self.retries += retried
        self.timeouts += timed_out

    def boxes_dropped(self, boxes: int) -> None:
        """A geometry's crop dropped ``boxes`` boxes (outside it)."""
        self.dropped_boxes += boxes

    def decoded(self, rows: int, seconds: float, waited: float = 0.0) -> None:
        """A decode thread spent ``seconds`` on ``rows`` rows, ``waited`` after their submission."""
        self.decoded_rows += rows
        self.decode_seconds += seconds
        self.decode_wait += waited

    def loader_blocked(self) -> None:
        """The row budget is full: the loader waits for the consumer from now."""
        self._loader = (self._loader[0], _clock())

    def loader_unblocked(self) -> None:
        """The row budget is no longer full."""
        waited, since = self._loader
        if since is None:
            return
        end = _clock()
        self._loader = (waited + end - since, None)
        if self.timeline is not None:
            self.timeline.interval(LOADER_WAIT, since, end)

    def _loader_wait(self, now: float) -> float:
        # One read of the tuple the loop thread replaces whole: consistent.
        waited, since = self._loader
        return waited if since is None else waited + now - since

    def consumer_waiting(self) -> tuple[float, float]:
        """The consumer starts to wait for data; pass the result to :meth:`consumer_waited`."""
        now = _clock()
        return now, self._loader_wait(now)

    def consumer_waited(self, began: tuple[float, float]) -> None:
        """The consumer's wait that began with :meth:`consumer_waiting` is over.

        The part of it during which the row budget was also full is a stall:
        nothing to hand out, and no room to fetch more.
        """
        start, loader_waited = began
        end = _clock()
        self.consumer_wait += end - start
        stalled = self._loader_wait(end) - loader_waited
        if stalled > 0:
            self.stall += min(stalled, end - start)
        if self.timeline is not None:
            self.timeline.interval(CONSUMER_WAIT, start, end)
        if self._publish is not None and end >= self._next_publish:
            self._next_publish = end + self._publish_every
            self._publish(self)

    def finish(self) -> None:
        """The epoch is over (complete, failed or closed): its clock stops; publish once more."""
        if self.ended is None:
            self._cpu_ended = time.process_time()
            self.ended = _clock()
            if self._publish is not None:
                self._publish(self)

    def snapshot(self) -> EpochStats:
        """The counters now, as a value."""
        end = self.ended if self.ended is not None else _clock()
        cpu_end = self._cpu_ended if self._cpu_ended is not None else time.process_time()
        counts, total, peak, _ = _with(self._latency)
        seconds = max(0.0, end - self.started)
        return EpochStats(
            rows=self.rows,
            bytes=self.bytes,
            fetches=int(counts.sum()),
            fetch_latency=LatencyHistogram(tuple(counts.tolist()), total, peak),
            retries=self.retries,
            faults=self.faults,
            timeouts=self.timeouts,
            decoded_rows=self.decoded_rows,
            decode_seconds=self.decode_seconds,
            decode_wait_seconds=self.decode_wait,
            boxes_dropped=self.dropped_boxes,
            seconds=seconds,
            cpu_seconds=max(0.0, cpu_end - self._cpu_started),
            consumer_seconds=seconds,
            consumer_wait_seconds=self.consumer_wait,
            loader_wait_seconds=self._loader_wait(end),
            stall_seconds=self.stall,
            workers=1,
        )

    def timeline_data(self) -> TimelineData | None:
        """The timeline so far (profile runs), else None."""
        if self.timeline is None:
            return None
        return self.timeline.snapshot(self.ended if self.ended is not None else _clock())
