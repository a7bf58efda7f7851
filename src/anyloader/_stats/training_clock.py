"""``TrainingClock``: the training loop's own view of waiting for data.

Time inside ``iter``/``next`` on the loader is time training waited; the rest
is training. ``anyloader.DataLoader.stats()``, ``anyloader profile`` and the
demo put it in place of the consumer fields of the loader's stats.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from .timeline import CONSUMER_WAIT

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from .epoch_stats import EpochStats
    from .timeline import Timeline

__all__ = ["TrainingClock"]

T = TypeVar("T")
_clock = time.perf_counter


class TrainingClock:
    """Times a loop over a loader: time inside ``iter``/``next`` (waiting for data) and in all.

    ``for batch in clock(loader)``; :meth:`applied` puts the result into a
    loader's stats in place of the consumer fields, so their ``input_bound``
    is the training loop's own.
    """

    def __init__(self, timeline: Timeline | None = None) -> None:
        self.wait = 0.0
        self.startup = 0.0  # iter() and the first next(): workers starting, first fetches
        self.started: float | None = None
        self.ended: float | None = None
        self._timeline = timeline

    def _waited(self, start: float, end: float) -> None:
        self.wait += end - start
        if self._timeline is not None:
            self._timeline.interval(CONSUMER_WAIT, start, end)

    def __call__(self, loader: Iterable[T]) -> Iterator[T]:
        self.started = start = _clock()
        iterator = iter(loader)  # starts DataLoader workers: training waits for that too
        first = True
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                self.ended = end = _clock()
                self._waited(start, end)
                return
            end = _clock()
            self._waited(start, end)
            if first:
                self.startup, first = end - self.started, False
            yield item
            start = _clock()

    @property
    def seconds(self) -> float:
        """From the start of the loop to its end (or now)."""
        if self.started is None:
            return 0.0
        return (self.ended if self.ended is not None else _clock()) - self.started

    @property
    def input_bound(self) -> float:
        """Share of the loop's time spent waiting for data."""
        seconds = self.seconds
        return min(1.0, self.wait / seconds) if seconds > 0 else 0.0

    def applied(self, stats: EpochStats) -> EpochStats:
        """``stats`` with this loop as the consumer."""
        return replace(stats, consumer_seconds=self.seconds, consumer_wait_seconds=self.wait)
