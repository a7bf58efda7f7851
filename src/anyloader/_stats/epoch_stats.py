"""``EpochStats``: what one epoch did and where its time went, as a mergeable value.

The value is frozen and every field is a sum (the latency histogram's buckets
too; its maximum is a max), so the stats of DataLoader workers, ranks or
epochs add up exactly with ``a + b`` or :meth:`EpochStats.merge`. Nothing here
measures: :mod:`anyloader._stats.recorder` counts during an epoch and hands out
snapshots of this type.

The fetch latency is kept as a fixed log-bucket histogram (8 buckets per
doubling, about 1 us to 4 min), never as samples: its size does not grow with
the epoch, and a percentile read from it is within one bucket (9%) of the
exact one.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["BUCKETS", "EpochStats", "LatencyHistogram", "bucket_of"]

#: Buckets per doubling of the latency: each spans a factor of 2**(1/8), about 9%.
PER_OCTAVE = 8
#: Bucket ``i`` starts at ``2**((i - OFFSET) / PER_OCTAVE)`` seconds: bucket 1 at about 1 us.
OFFSET = 20 * PER_OCTAVE
#: 28 doublings: bucket 0 holds everything under about 1 us, the last everything over ~4 min.
BUCKETS = 28 * PER_OCTAVE

_log2 = math.log2


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a latency of ``seconds`` (clamped to the first and last)."""
    if seconds <= 0.0:
        return 0
    i = math.floor(_log2(seconds) * PER_OCTAVE) + OFFSET
    return 0 if i < 0 else BUCKETS - 1 if i >= BUCKETS else i


def bucket_bounds(i: int) -> tuple[float, float]:
    """Seconds covered by bucket ``i``, ``[low, high)``: the first from 0, the last without end."""
    low = 0.0 if i == 0 else 2.0 ** ((i - OFFSET) / PER_OCTAVE)
    high = math.inf if i == BUCKETS - 1 else 2.0 ** ((i + 1 - OFFSET) / PER_OCTAVE)
    return low, high


@dataclass(frozen=True)
class LatencyHistogram:
    """Fetch latencies in fixed log buckets: counts, their sum and the largest.

    ``counts[i]`` is how many latencies fell in bucket ``i`` (8 per doubling,
    about 1 us to 4 min; see :meth:`bounds`). Two histograms add exactly.

    Raises:
        ValueError: at construction, if ``counts`` does not have one entry per bucket.
    """

    counts: tuple[int, ...] = (0,) * BUCKETS
    total_seconds: float = 0.0
    max_seconds: float = 0.0

    def __post_init__(self) -> None:
        if len(self.counts) != BUCKETS:
            raise ValueError(f"counts must have {BUCKETS} buckets, got {len(self.counts)}")

    @classmethod
    def of(cls, seconds: Iterable[float]) -> LatencyHistogram:
        """The histogram of these latencies (in seconds)."""
        counts = [0] * BUCKETS
        total = peak = 0.0
        for s in seconds:
            counts[bucket_of(s)] += 1
            total += s
            peak = max(peak, s)
        return cls(tuple(counts), total, peak)

    @staticmethod
    def bounds(i: int) -> tuple[float, float]:
        """Seconds covered by bucket ``i``: ``[low, high)``."""
        return bucket_bounds(i)

    @property
    def count(self) -> int:
        """How many latencies were recorded."""
        return sum(self.counts)

    @property
    def mean_seconds(self) -> float:
        """Mean latency; 0 when empty."""
        n = self.count
        return self.total_seconds / n if n else 0.0

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0 < q <= 100) in seconds, nearest rank; 0 when empty.

        Guarantee: within one bucket (a factor of ``2**(1/8)``) of the exact
        nearest-rank percentile, and never above :attr:`max_seconds`.

        Raises:
            ValueError: ``q`` outside ``(0, 100]``.
        """
        if not 0 < q <= 100:
            raise ValueError(f"q must be in (0, 100], got {q}")
        n = self.count
        if n == 0:
            return 0.0
        rank = max(1, math.ceil(q / 100 * n))
        # The first bucket whose cumulative count reaches the rank.
        i = bisect.bisect_left(list(itertools.accumulate(self.counts)), rank)
        low, high = bucket_bounds(i)
        if math.isinf(high):
            return self.max_seconds
        middle = math.sqrt(low * high) if low > 0 else high / 2
        return min(middle, self.max_seconds)

    def __add__(self, other: LatencyHistogram) -> LatencyHistogram:
        if not isinstance(other, LatencyHistogram):
            return NotImplemented
        return LatencyHistogram(
            tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            self.total_seconds + other.total_seconds,
            max(self.max_seconds, other.max_seconds),
        )


@dataclass(frozen=True)
class EpochStats:
    """What an epoch fetched, how long it took, and who waited for whom.

    Returned by ``AsyncDataset.stats()`` and ``SampleStream.stats()`` (see
    docs/stats.md). Every field is a plain value, so ``dataclasses.replace``
    can swap in a caller's own measurement: a wrapper that times its training
    loop replaces ``consumer_seconds`` and ``consumer_wait_seconds`` (time
    between the first ``next`` and the last, and time spent inside ``next``),
    and :attr:`input_bound` follows. Stats add up: ``a + b`` and :meth:`merge`
    sum every field (durations too, so merged ``seconds`` are worker-seconds
    and the shares below become averages over the parts, weighted by their
    duration).

    Attributes:
        rows: rows fetched from the source (a row retried counts once).
        bytes: in-memory size of the values fetched (numpy ``nbytes``; the
            length of ``bytes``/``str`` values), after decoding: not the bytes
            on the wire.
        fetches: fetch requests that succeeded (one per group of ``fetch_size`` rows).
        fetch_latency: per fetch, from its first attempt to its values being
            ready: retries, back-off and decoding included.
        retries: attempts made again after a transient error.
        faults: attempts that raised (transient or not, timeouts included).
        timeouts: attempts cut by the ``timeout`` option.
        decoded_rows: rows handed to anyloader's JPEG decoder (``decode="auto"``;
            the few it cannot reproduce exactly then go to deeplake).
        decode_seconds: CPU time the decode threads spent decoding them, summed
            over threads (so it can exceed ``seconds``); with a geometry, placing
            them too (crop, resize, flip).
        decode_wait_seconds: time fetches waited for a free decode thread,
            summed over fetches: part of their latency that is not the store's.
        boxes_dropped: boxes a geometry's crops left no area of, dropped with
            their aligned entries (``anyloader.Boxes``).
        seconds: the epoch's duration, from the start of the iteration to its
            end (or to now, while it runs).
        cpu_seconds: CPU time of the process running the epoch over that
            duration, all its threads (in-process, the training loop's too).
        consumer_seconds: the consumer's time over which ``input_bound`` is
            taken; as recorded, equal to ``seconds``.
        consumer_wait_seconds: time the consumer spent waiting for data (the
            training loop, or inside a DataLoader worker the worker's own loop,
            which waits for the training loop in turn).
        loader_wait_seconds: time the loader waited for the consumer: its row
            budget was full, so at least one fetcher could not start.
        stall_seconds: time the consumer waited while the budget was full: the
            rows fetched ahead were all waiting behind a slower fetch (in plan
            order, ``ordered=True``), so nothing could be handed out or fetched.
        workers: how many iterations these stats add up (1 for one epoch in
            one process; K for K DataLoader workers).
    """

    rows: int = 0
    bytes: int = 0
    fetches: int = 0
    fetch_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    retries: int = 0
    faults: int = 0
    timeouts: int = 0
    decoded_rows: int = 0
    decode_seconds: float = 0.0
    decode_wait_seconds: float = 0.0
    boxes_dropped: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    consumer_seconds: float = 0.0
    consumer_wait_seconds: float = 0.0
    loader_wait_seconds: float = 0.0
    stall_seconds: float = 0.0
    workers: int = 0

    @property
    def input_bound(self) -> float:
        """Share of the epoch the consumer waited for data (0..1): how input-bound training was."""
        return _share(self.consumer_wait_seconds, self.consumer_seconds)

    @property
    def loader_bound(self) -> float:
        """Share of the epoch the loader waited for the consumer (0..1): backpressure."""
        return _share(self.loader_wait_seconds, self.seconds)

    @property
    def rows_per_second(self) -> float:
        """Rows fetched per second of the epoch (per worker-second when merged); 0 if no time."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def fetch_p50(self) -> float:
        """Median fetch latency, seconds."""
        return self.fetch_latency.percentile(50)

    @property
    def fetch_p95(self) -> float:
        """95th percentile fetch latency, seconds."""
        return self.fetch_latency.percentile(95)

    @property
    def fetch_p99(self) -> float:
        """99th percentile fetch latency, seconds."""
        return self.fetch_latency.percentile(99)

    def __add__(self, other: EpochStats) -> EpochStats:
        if not isinstance(other, EpochStats):
            return NotImplemented
        return EpochStats(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    @classmethod
    def merge(cls, parts: Iterable[EpochStats]) -> EpochStats:
        """The sum of ``parts`` (all zero when there are none)."""
        total = cls()
        for part in parts:
            total = total + part
        return total

    # The flat form that crosses processes (anyloader._stats.worker_channel): scalars, then buckets.

    def _to_vector(self) -> list[float]:
        """Every field as a float: scalars in field order, then the histogram."""
        h = self.fetch_latency
        scalars = [float(getattr(self, name)) for name in SCALARS]
        return [*scalars, h.total_seconds, h.max_seconds, *map(float, h.counts)]

    @classmethod
    def _from_vector(cls, vector: Sequence[float]) -> EpochStats:
        """Inverse of :meth:`_to_vector`."""
        n = len(SCALARS)
        values: dict[str, float | int] = {}
        for name, value in zip(SCALARS, vector[:n], strict=True):
            values[name] = value if name in _FLOATS else round(value)
        histogram = LatencyHistogram(
            tuple(round(c) for c in vector[n + 2 : n + 2 + BUCKETS]), vector[n], vector[n + 1]
        )
        return cls(fetch_latency=histogram, **values)  # type: ignore[arg-type]


def _share(part: float, whole: float) -> float:
    return min(1.0, part / whole) if whole > 0 else 0.0


#: The scalar fields, in order (everything but the histogram).
SCALARS = tuple(f.name for f in fields(EpochStats) if f.name != "fetch_latency")
_FLOATS = frozenset(f.name for f in fields(EpochStats) if f.type == "float")
#: Length of :meth:`EpochStats._to_vector`; the entry holding the histogram's maximum.
VECTOR_LENGTH = len(SCALARS) + 2 + BUCKETS
MAX_INDEX = len(SCALARS) + 1
