"""The epoch plan: which rows a shard reads, in which order, in which groups.

Everything here is a pure function of its arguments: no I/O, no clocks, no
globals. Exactly-once lives here, so this is the module the property tests
hammer hardest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["Shard", "plan_epoch", "plan_groups", "shard_rows"]


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


def epoch_order(num_rows: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Return the global row order of one epoch, a permutation of ``range(num_rows)``.

    The order depends only on ``(num_rows, seed, epoch, shuffle)``; every rank
    computes the same one, which is what makes the shards disjoint.

    Raises:
        ValueError: if ``seed`` or ``epoch`` is negative.
    """
    if not shuffle:
        return np.arange(num_rows, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
    return rng.permutation(num_rows).astype(np.int64, copy=False)


def usable_rows(num_rows: int, world_size: int, *, even: bool) -> int:
    """Rows an epoch covers: all of them, or with ``even`` a multiple of ``world_size``.

    ``even`` drops the global tail (fewer than ``world_size`` rows) so that every
    rank yields the same number of samples; those rows are skipped this epoch,
    never duplicated. With shuffling, a different tail is dropped each epoch.
    """
    return num_rows - num_rows % world_size if even else num_rows


def shard_rows(
    num_rows: int,
    shard: Shard,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = False,
    even: bool = False,
) -> np.ndarray:
    """Return the global row indices ``shard`` reads in one epoch, in reading order.

    Guarantee: over all ``(rank, worker_id)`` of one ``(world_size, num_workers)``
    the results partition the epoch's rows: every row once, none twice. Ranks
    are interleaved over the epoch order (rank ``r`` takes positions
    ``r, r + world_size, ...``) and workers likewise over their rank's rows, so
    shard sizes differ by at most one row (zero with ``even`` across ranks).
    """
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    order = epoch_order(num_rows, seed=seed, epoch=epoch, shuffle=shuffle)
    order = order[: usable_rows(num_rows, shard.world_size, even=even)]
    rank_rows = order[shard.rank :: shard.world_size]
    return rank_rows[shard.worker_id :: shard.num_workers]


def rank_length(num_rows: int, rank: int, world_size: int, *, even: bool = False) -> int:
    """Return how many rows ``rank`` yields per epoch, all its workers together."""
    usable = usable_rows(num_rows, world_size, even=even)
    return len(range(rank, usable, world_size))


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
) -> list[np.ndarray]:
    """Split this shard's rows into the groups that are fetched one request each.

    ``start`` skips the shard's first ``start`` rows (resuming mid-epoch). The
    concatenation of the groups equals ``shard_rows(...)[start:]``; every group
    has ``fetch_size`` rows except possibly the last.

    Raises:
        ValueError: if ``fetch_size`` is not positive or ``start`` is negative.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    rows = shard_rows(num_rows, shard, seed=seed, epoch=epoch, shuffle=shuffle, even=even)
    return [group for _, group in plan_groups(rows, range(start, len(rows)), fetch_size)]


def plan_groups(
    rows: np.ndarray, positions: Sequence[int], fetch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(positions, rows[positions])`` in groups of ``fetch_size``, lazily, in order.

    ``positions`` index the shard's rows (``range(start, len(rows))``, or the
    positions a checkpoint has not delivered); every group has ``fetch_size``
    of them except possibly the last.

    Raises:
        ValueError: if ``fetch_size`` is not positive.
    """
    if fetch_size < 1:
        raise ValueError(f"fetch_size must be >= 1, got {fetch_size}")
    for i in range(0, len(positions), fetch_size):
        group = np.asarray(positions[i : i + fetch_size], dtype=np.int64)
        yield group, rows[group]
