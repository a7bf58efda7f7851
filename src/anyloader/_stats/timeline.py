"""A bounded timeline of an epoch, for ``anyloader profile`` only.

Three series over time bins of equal width: requests in flight (level x
seconds per bin, so a bin's value divided by its width is the mean number in
flight), seconds the consumer waited for data, and seconds the loader waited
for the consumer. The number of bins is fixed: when the epoch outgrows them,
neighbours are summed pairwise and the width doubles, so memory never grows
and a bin's integral stays exact. Widths are ``first_width * 2**k`` from a
shared origin, so timelines of several processes merge exactly (the finer
one is coarsened first).

Normal epochs record no timeline; a profile run turns it on.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["SERIES", "Timeline", "TimelineData"]

SERIES = ("in_flight", "consumer_wait", "loader_wait")
IN_FLIGHT, CONSUMER_WAIT, LOADER_WAIT = range(len(SERIES))


def coarsen(values: Sequence[float], factor: int) -> list[float]:
    """Sum each run of ``factor`` bins into one; the tail is zero (the length is kept)."""
    n = len(values)
    out = [sum(values[i : i + factor]) for i in range(0, n, factor)]
    return out + [0.0] * (n - len(out))


@dataclass(frozen=True)
class TimelineData:
    """A timeline's bins: ``series[k][i]`` covers ``[origin + i*width, origin + (i+1)*width)``."""

    origin: float
    width: float
    series: tuple[tuple[float, ...], ...]

    @property
    def bins(self) -> int:
        return len(self.series[0])

    def coarsened(self, width: float) -> TimelineData:
        """The same timeline in bins of ``width`` (a power-of-two multiple of this width)."""
        factor = round(width / self.width)
        if factor <= 1:
            return self
        return TimelineData(
            self.origin, width, tuple(tuple(coarsen(s, factor)) for s in self.series)
        )

    def __add__(self, other: TimelineData) -> TimelineData:
        if not isinstance(other, TimelineData):
            return NotImplemented
        width = max(self.width, other.width)
        a, b = self.coarsened(width), other.coarsened(width)
        return TimelineData(
            self.origin,
            width,
            tuple(
                tuple(x + y for x, y in zip(s, t, strict=True))
                for s, t in zip(a.series, b.series, strict=True)
            ),
        )

    def to_vector(self) -> list[float]:
        return [self.width, *(v for s in self.series for v in s)]

    @classmethod
    def from_vector(cls, origin: float, vector: Sequence[float]) -> TimelineData:
        bins = (len(vector) - 1) // len(SERIES)
        series = tuple(tuple(vector[1 + k * bins : 1 + (k + 1) * bins]) for k in range(len(SERIES)))
        return cls(origin, vector[0], series)

    @classmethod
    def empty(cls, origin: float, bins: int, width: float) -> TimelineData:
        return cls(origin, width, tuple((0.0,) * bins for _ in SERIES))


class Timeline:
    """A :class:`TimelineData` being recorded, from the loop thread and the consumer's at once.

    ``origin`` is a ``time.perf_counter()`` value; on Linux and macOS that clock
    is system-wide, so processes of one machine share it.
    """

    def __init__(self, origin: float, *, bins: int = 256, width: float = 0.01) -> None:
        self.origin = origin
        self.width = width
        self._values = [[0.0] * bins for _ in SERIES]
        self._level = 0
        self._since = origin
        self._lock = threading.Lock()

    def _add(self, series: int, start: float, end: float, weight: float) -> None:
        t0, t1 = max(0.0, start - self.origin), end - self.origin
        if t1 <= t0:
            return
        bins = len(self._values[0])
        while t1 > bins * self.width:
            self._values = [coarsen(v, 2) for v in self._values]
            self.width *= 2
        width, row = self.width, self._values[series]
        i = int(t0 / width)
        while t0 < t1 and i < bins:
            edge = min(t1, (i + 1) * width)
            row[i] += (edge - t0) * weight
            t0, i = edge, i + 1

    def interval(self, series: int, start: float, end: float) -> None:
        """Add the span ``[start, end)`` to ``series`` (a wait)."""
        with self._lock:
            self._add(series, start, end, 1.0)

    def in_flight(self, now: float, change: int) -> None:
        """Requests in flight changed by ``change`` at ``now``."""
        with self._lock:
            self._add(IN_FLIGHT, self._since, now, self._level)
            self._level += change
            self._since = max(self._since, now)

    def snapshot(self, now: float) -> TimelineData:
        """The timeline up to ``now``."""
        with self._lock:
            self._add(IN_FLIGHT, self._since, now, self._level)
            self._since = max(self._since, now)
            return TimelineData(self.origin, self.width, tuple(tuple(v) for v in self._values))
