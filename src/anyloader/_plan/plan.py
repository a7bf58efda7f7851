"""The epoch plan: which rows a shard reads, in which order, in which groups.

Everything here is a pure function of its arguments: no I/O, no clocks, no
globals. Exactly-once lives here, so this is the module the property tests
hammer hardest.

Nothing grows with the dataset. An epoch is a *sequence* of positions, mapped
to rows by an :class:`~anyloader._plan.order.Order`; a shard is every
``world_size``-th position of its rank, every ``num_workers``-th of those for
its worker, so a shard's ``i``-th row is arithmetic on ``i``. Rows are
computed a slab at a time as the fetchers ask for them.

Elastic resume adds :class:`Cut`\\ s: a layout (world size, workers per rank,
batch size) took some steps from the sequence, and what it left, in sequence
order, is the next sequence. Which positions a layout has taken after ``t``
lockstep steps is arithmetic too (see :class:`Cut`), so a resumed plan is a
chain of constant-size maps, however large the epoch. With ``ordered=False`` a
worker's rows arrive as their fetches complete, not in plan order: its cut
also lists the few positions where that differs from the arithmetic (bounded
by the row budget), and the map stays exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .order import Order, Sequential, epoch_order

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from numpy.typing import NDArray

__all__ = [
    "Cut",
    "Rest",
    "Shard",
    "ShardPlan",
    "out_of_order",
    "plan_epoch",
    "plan_groups",
    "rank_length",
    "shard_rows",
    "skipped_rows",
    "truncated",
    "usable_rows",
]

# Positions whose rows are computed together: big enough to amortise the
# vectorised order, small enough to be nothing next to the fetches.
_SLAB = 4096


@dataclass(frozen=True)
class Shard:
    """One reader's slice of an epoch: a DataLoader worker on a distributed rank.

    An epoch is split first across ``world_size`` ranks, then each rank's part
    across its ``num_workers`` DataLoader workers (``num_workers=1`` when the
    dataset is iterated in the main process).

    Raises:
        ValueError: if a size is not positive or an index is out of range.
    """

    rank: int = 0
    world_size: int = 1
    worker_id: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        if not 0 <= self.worker_id < self.num_workers:
            raise ValueError(f"worker_id must be in [0, {self.num_workers}), got {self.worker_id}")


def usable_rows(num_rows: int, world_size: int, *, even: bool) -> int:
    """Rows an epoch covers: all of them, or with ``even`` a multiple of ``world_size``.

    ``even`` drops the global tail (fewer than ``world_size`` rows) so that every
    rank yields the same number of samples; those rows are skipped this epoch,
    never duplicated. With shuffling, a different tail is dropped each epoch.
    """
    return num_rows - num_rows % world_size if even else num_rows


def rank_length(num_rows: int, rank: int, world_size: int, *, even: bool = False) -> int:
    """Return how many rows ``rank`` yields per epoch, all its workers together."""
    return len(range(rank, usable_rows(num_rows, world_size, even=even), world_size))


@dataclass(frozen=True)
class Cut:
    """A layout that took ``steps`` batches on every rank from a sequence.

    ``world_size`` ranks, each with ``num_workers`` DataLoader workers that
    yield batches of ``batch_size`` rows of their shard (the last one short).
    A DataLoader takes batches from its workers in turn, skipping those that
    are done; worker batch counts differ by at most one and never increase
    with the worker id, so step ``s`` of a rank is batch ``s // num_workers``
    of worker ``s % num_workers``. After ``steps`` steps, worker ``k`` has
    delivered its first ``batch_size * c_k`` rows, where ``c_k`` counts the
    steps below ``steps`` that are ``k`` modulo ``num_workers``.

    ``holes`` and ``extras`` correct that for rows delivered out of plan
    order (``ordered=False``): positions of the cut sequence that the
    arithmetic counts as delivered but were not, and positions it counts as
    left that were delivered. Each worker delivered as many rows as the
    arithmetic says, so there are as many of one as of the other.
    """

    world_size: int
    num_workers: int
    batch_size: int
    steps: int
    holes: tuple[int, ...] = ()
    extras: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("world_size", "num_workers", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {self.steps!r}")
        for name in ("holes", "extras"):
            value = getattr(self, name)
            if not all(isinstance(p, int) and p >= 0 for p in value):
                raise ValueError(f"{name} must be positions (ints >= 0), got {value!r}")
            object.__setattr__(self, name, tuple(sorted(set(value))))
            if len(getattr(self, name)) != len(value):
                raise ValueError(f"{name} lists a position twice: {value!r}")
        if len(self.holes) != len(self.extras):
            raise ValueError(
                f"a cut has as many holes as extras, got {len(self.holes)} and {len(self.extras)}"
            )

    def taken(self, worker: int) -> int:
        """Rows worker ``worker`` of each rank has delivered (if it had that many)."""
        q, s = divmod(self.steps, self.num_workers)
        return self.batch_size * (q + (worker < s))

    def position(self, rank: int, worker: int, i: int) -> int:
        """The cut sequence's position of the ``i``-th row of ``worker`` on ``rank``."""
        return rank + self.world_size * (worker + self.num_workers * i)

    def as_list(self) -> list[Any]:
        """``[W, K, B, steps]``, with ``holes`` and ``extras`` appended when there are any."""
        head: list[Any] = [self.world_size, self.num_workers, self.batch_size, self.steps]
        return [*head, list(self.holes), list(self.extras)] if self.holes else head


def out_of_order(
    cut: Cut, rank: int, delivered: Sequence[tuple[int, int, tuple[int, ...]]]
) -> tuple[list[int], list[int]]:
    """``cut``'s holes and extras on ``rank``, from what its workers really delivered.

    ``delivered[k]`` is worker ``k``'s ``(shard length, mark, extra)``: it
    delivered its shard positions below ``mark`` and those in ``extra``,
    reading its shard of the cut sequence from the start (no ``taken``).
    Returns positions of the cut sequence.
    """
    holes: list[int] = []
    extras: list[int] = []
    for worker, (length, mark, extra) in enumerate(delivered):
        counted = min(cut.taken(worker), length)
        done = set(extra)
        holes += [cut.position(rank, worker, i) for i in range(mark, counted) if i not in done]
        extras += [cut.position(rank, worker, i) for i in extra if i >= counted]
    return holes, extras


@dataclass(frozen=True)
class Rest:
    """What is left of an epoch: the sequence after ``cuts``, minus what ``taken`` took.

    ``taken`` is set when the layout resuming is the one that stopped: each
    worker then continues its own shard, in the order the DataLoader would have
    used, instead of the rest being dealt out anew.
    """

    cuts: tuple[Cut, ...] = ()
    taken: Cut | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable: ``{"cuts": [[W, K, B, steps], ...], "taken": [...] | None}``."""
        return {
            "cuts": [cut.as_list() for cut in self.cuts],
            "taken": None if self.taken is None else self.taken.as_list(),
        }

    @classmethod
    def parse(cls, saved: object) -> Rest:
        """The inverse of :meth:`as_dict` (``None``: nothing taken).

        Raises:
            ValueError: not of that form (the message shows it).
        """
        if saved is None:
            return cls()
        try:
            if not isinstance(saved, Mapping):
                raise TypeError("not a mapping")
            cuts = tuple(_cut(cut) for cut in saved["cuts"])
            taken = saved["taken"]
            return cls(cuts, None if taken is None else _cut(taken))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"rest must be {{'cuts': [[world_size, num_workers, batch_size, steps"
                f"(, holes, extras)], ...], 'taken': [...] or None}}, got {saved!r} ({exc})"
            ) from None


def _cut(saved: Sequence[Any]) -> Cut:
    """A :class:`Cut` from its :meth:`Cut.as_list`."""
    if isinstance(saved, (str, bytes)) or len(saved) not in (4, 6):
        raise ValueError(f"a cut is [W, K, B, steps] or [W, K, B, steps, holes, extras]: {saved!r}")
    head, tail = saved[:4], saved[4:]
    return Cut(*head, *(tuple(part) for part in tail))


@dataclass(frozen=True, eq=False)
class _Remainder:
    """Maps the positions a cut left (in order) to positions of the sequence it cut.

    In positions of the cut sequence, worker ``k`` of rank ``r`` reads
    ``r + W * (k + K * i)``; with ``t = q * K + s`` steps taken, positions
    below ``P1 = W*K*B*q`` are all delivered, those at or above
    ``P2 = P1 + W*K*B`` all remain, and between them a position remains when
    its offset in its period of ``W*K`` is at least ``W * s``. A cut's
    ``extras`` are then taken out of what remains, and its ``holes`` put back
    in, in sequence order (a search in a few sorted arrays per slab).
    """

    period: int
    skip: int
    p1: int
    p2: int
    count2: int
    usable: int
    base: int  # what the arithmetic leaves, before holes and extras
    holes: NDArray[np.int64]
    extras: NDArray[np.int64]
    length: int

    @classmethod
    def of(cls, cut: Cut, length: int, even: bool) -> _Remainder:
        usable = usable_rows(length, cut.world_size, even=even)
        period = cut.world_size * cut.num_workers
        q, s = divmod(cut.steps, cut.num_workers)
        p1 = period * cut.batch_size * q
        p2 = p1 + period * cut.batch_size
        skip = cut.world_size * s
        end2 = min(p2, usable)
        count2 = 0
        if end2 > p1:
            full, part = divmod(end2 - p1, period)
            count2 = full * (period - skip) + max(0, part - skip)
        base = count2 + max(0, usable - p2)
        holes = np.asarray(cut.holes, dtype=np.int64)
        extras = np.asarray(cut.extras, dtype=np.int64)
        remainder = cls(period, skip, p1, p2, count2, usable, base, holes, extras, base)
        remainder._check(cut)
        return replace(remainder, length=base - len(extras) + len(holes))

    def _check(self, cut: Cut) -> None:
        """Refuse corrections that do not fit the arithmetic (a state from elsewhere)."""
        inside = self._below(self.extras + 1) - self._below(self.extras)
        if len(self.extras) and not inside.all():
            raise ValueError(f"extras {list(cut.extras)} are not rows this cut left")
        inside = self._below(self.holes + 1) - self._below(self.holes)
        if len(self.holes) and (inside.any() or (self.holes >= self.usable).any()):
            raise ValueError(f"holes {list(cut.holes)} are not rows this cut took")

    def _below(self, p: NDArray[np.int64]) -> NDArray[np.int64]:
        """How many positions the arithmetic leaves below each position ``p``."""
        q = np.clip(p, self.p1, max(self.p1, min(self.p2, self.usable))) - self.p1
        full, part = np.divmod(q, self.period)
        middle = full * (self.period - self.skip) + np.maximum(0, part - self.skip)
        tail = np.maximum(0, np.minimum(p, self.usable) - self.p2)
        below: NDArray[np.int64] = middle + tail
        return below

    def _base_parent(self, j: NDArray[np.int64]) -> NDArray[np.int64]:
        per = self.period - self.skip
        in_part = self.p1 + (j // per) * self.period + self.skip + j % per
        return np.where(j < self.count2, in_part, self.p2 + (j - self.count2))

    def parent(self, j: NDArray[np.int64]) -> NDArray[np.int64]:
        if not len(self.holes):
            return self._base_parent(j)
        # Where each hole lands among what remains, and which base positions the
        # extras take out (as their index in the base, minus those before them).
        extra_index = self._below(self.extras)
        gaps = extra_index - np.arange(len(extra_index))
        hole_at = (
            self._below(self.holes)
            - np.searchsorted(self.extras, self.holes)
            + np.arange(len(self.holes))
        )
        before = np.searchsorted(hole_at, j, side="right")  # holes at or before j
        last = np.maximum(before - 1, 0)
        is_hole = (before > 0) & (hole_at[last] == j)
        i = j - before
        base = self._base_parent(i + np.searchsorted(gaps, i, side="right"))
        return np.where(is_hole, self.holes[last], base)


@dataclass(frozen=True)
class ShardPlan:
    """The rows one shard reads in one epoch, computed on demand.

    ``rows(i)`` is the row the shard reads ``i``-th. Over all shards of one
    layout the plans partition the rest of the epoch: every row once, none
    twice, shard sizes within one row of each other (zero across ranks with
    ``even``).
    """

    order: Order
    remainders: tuple[_Remainder, ...]  # last cut first
    shard: Shard
    worker: int  # the shard of the layout this worker continues (rotated by `taken`)
    first: int  # shard index of this plan's first row
    length: int

    def rows(self, positions: NDArray[np.int64]) -> NDArray[np.int64]:
        """The rows at these shard positions (each in ``[0, length)``)."""
        s = self.shard
        i = np.asarray(positions, dtype=np.int64) + self.first
        seq = s.rank + s.world_size * (self.worker + s.num_workers * i)
        for remainder in self.remainders:
            seq = remainder.parent(seq)
        return self.order.rows(seq)

    def all_rows(self) -> NDArray[np.int64]:
        """Every row of the shard, materialised: for tests and small datasets."""
        return self.rows(np.arange(self.length, dtype=np.int64))


def rest_length(num_rows: int, cuts: tuple[Cut, ...], *, even: bool) -> int:
    """Length of the sequence left after ``cuts``."""
    length = num_rows
    for cut in cuts:
        length = _Remainder.of(cut, length, even).length
    return length


def shard_plan(order: Order, shard: Shard, rest: Rest = Rest(), *, even: bool = False) -> ShardPlan:
    """The plan of ``shard`` over what ``rest`` leaves of the epoch ``order``.

    Raises:
        ValueError: ``rest.taken`` was taken by another world size or number of workers.
    """
    length, remainders = order.size, []
    for cut in rest.cuts:
        remainder = _Remainder.of(cut, length, even)
        remainders.append(remainder)
        length = remainder.length
    worker, first = shard.worker_id, 0
    taken = rest.taken
    if taken is not None:
        if (taken.world_size, taken.num_workers) != (shard.world_size, shard.num_workers):
            raise ValueError(
                f"steps were taken with world_size={taken.world_size}, "
                f"num_workers={taken.num_workers}; this shard is of world_size="
                f"{shard.world_size}, num_workers={shard.num_workers}"
            )
        # The DataLoader starts its round robin at worker 0; the stopped one
        # would have gone on at worker `steps % K`: worker 0 continues that one.
        worker = (shard.worker_id + taken.steps) % shard.num_workers
        first = taken.taken(worker)
    rank_rows = rank_length(length, shard.rank, shard.world_size, even=even)
    worker_rows = len(range(worker, rank_rows, shard.num_workers))
    return ShardPlan(
        order,
        tuple(reversed(remainders)),
        shard,
        worker,
        min(first, worker_rows),
        max(0, worker_rows - first),
    )


def rank_steps(
    order_size: int,
    rest: Rest,
    world_size: int,
    num_workers: int,
    batch_size: int,
    *,
    even: bool,
    drop_last: bool = False,
) -> list[int]:
    """Batches each rank yields over what ``rest`` leaves, in the given layout.

    With ``drop_last`` each worker yields whole batches only.
    """
    order = Sequential(order_size)
    steps = []
    for r in range(world_size):
        lengths = [
            shard_plan(order, Shard(r, world_size, k, num_workers), rest, even=even).length
            for k in range(num_workers)
        ]
        if drop_last:
            steps.append(sum(n // batch_size for n in lengths))
        else:
            steps.append(sum(-(-n // batch_size) for n in lengths))
    return steps


def skipped_rows(num_rows: int, rest: Rest, world_size: int, *, even: bool) -> int:
    """Rows of an epoch that ``even`` skips over all ranks when ``world_size`` ranks read ``rest``.

    Each layout that read part of the epoch skipped the tail of what it was
    dealt (fewer than its world size), and so does this one.
    """
    length, skipped = num_rows, 0
    for cut in rest.cuts:
        skipped += length - usable_rows(length, cut.world_size, even=even)
        length = _Remainder.of(cut, length, even).length
    return skipped + length - usable_rows(length, world_size, even=even)


def plan_groups(
    plan: ShardPlan, positions: range | Positions, fetch_size: int
) -> Iterator[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """Yield ``(positions, rows)`` in groups of ``fetch_size``, lazily, in order.

    ``positions`` index the shard's plan (``range(start, length)``, or the
    positions a checkpoint has not delivered); every group has ``fetch_size``
    of them except possibly the last. Rows are computed a slab at a time.

    Raises:
        ValueError: if ``fetch_size`` is not positive.
    """
    if fetch_size < 1:
        raise ValueError(f"fetch_size must be >= 1, got {fetch_size}")
    slab = fetch_size * max(1, _SLAB // fetch_size)
    for group_positions in _slabs(positions, slab):
        group_rows = plan.rows(group_positions)
        for i in range(0, len(group_positions), fetch_size):
            yield group_positions[i : i + fetch_size], group_rows[i : i + fetch_size]


@dataclass(frozen=True)
class Positions:
    """Shard positions ``[mark, length)`` except ``extra``: what a checkpoint left, in order."""

    mark: int
    length: int
    extra: tuple[int, ...]

    def __len__(self) -> int:
        return max(0, self.length - self.mark) - len(self.extra)

    def __iter__(self) -> Iterator[int]:
        for slab in _slabs(self, _SLAB):
            yield from slab.tolist()


def truncated(positions: range | Positions, stop: int) -> range | Positions:
    """``positions`` below ``stop`` only."""
    if isinstance(positions, range):
        return range(positions.start, max(positions.start, min(positions.stop, stop)))
    kept = tuple(p for p in positions.extra if p < stop)
    return Positions(positions.mark, max(positions.mark, min(positions.length, stop)), kept)


def _slabs(positions: range | Positions, size: int) -> Iterator[NDArray[np.int64]]:
    """``positions`` as arrays of ``size`` (the last may be shorter), in order."""
    if isinstance(positions, range):
        for i in range(0, len(positions), size):
            window = positions[i : i + size]
            yield np.arange(window.start, window.stop, window.step, dtype=np.int64)
        return
    extra = np.asarray(positions.extra, dtype=np.int64)
    pending: list[NDArray[np.int64]] = []
    held = 0
    for start in range(positions.mark, positions.length, size):
        part = np.arange(start, min(start + size, positions.length), dtype=np.int64)
        part = part[~np.isin(part, extra)]
        pending.append(part)
        held += len(part)
        if held >= size:
            joined = np.concatenate(pending)
            for i in range(0, len(joined) - size + 1, size):
                yield joined[i : i + size]
            left = joined[len(joined) - len(joined) % size :]
            pending, held = [left], len(left)
    if held:
        yield np.concatenate(pending)


def shard_rows(
    num_rows: int,
    shard: Shard,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = False,
    even: bool = False,
) -> NDArray[np.int64]:
    """Return the global row indices ``shard`` reads in one epoch, in reading order.

    Guarantee: over all ``(rank, worker_id)`` of one ``(world_size, num_workers)``
    the results partition the epoch's rows: every row once, none twice. Ranks
    are interleaved over the epoch order (rank ``r`` takes positions
    ``r, r + world_size, ...``) and workers likewise over their rank's rows, so
    shard sizes differ by at most one row (zero with ``even`` across ranks).
    The result is materialised (8 bytes a row): the loader itself never does.

    Raises:
        ValueError: if ``num_rows`` is negative.
    """
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    order = epoch_order(num_rows, seed=seed, epoch=epoch, shuffle=shuffle)
    return shard_plan(order, shard, even=even).all_rows()


def plan_epoch(
    num_rows: int,
    shard: Shard,
    *,
    fetch_size: int,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = False,
    even: bool = False,
    start: int = 0,
) -> list[NDArray[np.int64]]:
    """Split this shard's rows into the groups that are fetched one request each.

    ``start`` skips the shard's first ``start`` rows (resuming mid-epoch). The
    concatenation of the groups equals ``shard_rows(...)[start:]``; every group
    has ``fetch_size`` rows except possibly the last. Materialised, like
    :func:`shard_rows`: for inspection and tests.

    Raises:
        ValueError: if ``fetch_size`` is not positive or ``start`` is negative.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    order = epoch_order(num_rows, seed=seed, epoch=epoch, shuffle=shuffle)
    plan = shard_plan(order, shard, even=even)
    positions = range(min(start, plan.length), plan.length)
    return [rows for _, rows in plan_groups(plan, positions, fetch_size)]
