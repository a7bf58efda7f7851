"""An epoch's row order as a function of position, in constant memory.

An epoch reads ``num_rows`` rows in an order that is a bijection on
``[0, num_rows)``. It is never stored: :meth:`Order.rows` maps any array of
positions to rows, so a plan over a billion rows costs the same few bytes as
one over ten, and every shard computes only its own positions.

* :class:`Sequential`: position ``p`` reads row ``p``.
* :class:`Feistel`: a keyed pseudorandom permutation, a cycle-walking Feistel
  network (8 rounds of the splitmix64 finaliser) keyed by ``(seed, epoch)``.
  Each position costs a few dozen vectorised integer operations; the inverse
  (:meth:`Feistel.positions`) is exact, which is how tests check bijectivity
  at sizes no one can enumerate.
* :class:`BlockShuffle`: a locality-aware order. Rows are taken in blocks of
  ``block_size`` consecutive rows, the blocks are permuted, and rows are
  shuffled within windows of ``window`` blocks, so a window reads only
  ``window`` runs of consecutive rows (deeplake stores neighbours in the same
  chunk, and on object storage each chunk is a request).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["BlockShuffle", "Feistel", "Order", "Sequential", "epoch_order", "mix64"]

_ROUNDS = 8
_MASK64 = (1 << 64) - 1
# Rows a dataset may have: positions and rows must fit int64 with room for
# the Feistel domain (at most 4x the size, rounded to an even bit count).
MAX_ROWS = 1 << 60


def mix64(*words: int) -> int:
    """Hash integers to 64 bits (splitmix64 over the words): keys for orders."""
    h = 0x243F6A8885A308D3
    for w in words:
        h = _splitmix((h ^ (w & _MASK64)) + 0x9E3779B97F4A7C15)
    return h


def _splitmix(z: int) -> int:
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _mix_array(z: NDArray[np.uint64]) -> NDArray[np.uint64]:
    # splitmix64's finaliser; uint64 array arithmetic wraps, as the hash wants.
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class Order(Protocol):
    """A bijection on ``[0, size)``: the epoch position ``p`` reads row ``rows(p)``."""

    @property
    def size(self) -> int: ...

    def rows(self, positions: NDArray[np.int64]) -> NDArray[np.int64]:
        """The rows at ``positions`` (int64, each in ``[0, size)``)."""
        ...


@dataclass(frozen=True)
class Sequential:
    """Position ``p`` reads row ``p``."""

    size: int

    def rows(self, positions: NDArray[np.int64]) -> NDArray[np.int64]:
        return np.asarray(positions, dtype=np.int64)


@dataclass(frozen=True)
class Feistel:
    """A keyed pseudorandom permutation of ``[0, size)``.

    A balanced Feistel network permutes ``[0, 4**half)``, the smallest even
    power of two at or above ``size``; cycle walking (apply it again while the
    result is out of range) restricts it to ``[0, size)``, which stays a
    bijection. The domain is less than ``4 * size``, so the expected walk is
    short. Different keys give independent-looking orders; the same key gives
    the same order on every machine.
    """

    size: int
    key: int
    _half: int = field(init=False, repr=False)
    _keys: NDArray[np.uint64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bits = max(2, (self.size - 1).bit_length())
        object.__setattr__(self, "_half", (bits + 1) // 2)
        keys = np.array([mix64(self.key, i) for i in range(_ROUNDS)], dtype=np.uint64)
        object.__setattr__(self, "_keys", keys)

    def rows(self, positions: NDArray[np.int64]) -> NDArray[np.int64]:
        return self._walk(positions, inverse=False)

    def positions(self, rows: NDArray[np.int64]) -> NDArray[np.int64]:
        """The inverse: the positions at which ``rows`` are read."""
        return self._walk(rows, inverse=True)

    def _walk(self, values: NDArray[np.int64], *, inverse: bool) -> NDArray[np.int64]:
        x = np.asarray(values, dtype=np.int64).astype(np.uint64)
        if self.size <= 1:
            return x.astype(np.int64)
        limit = np.uint64(self.size)
        out = self._permute(x, inverse)
        outside = np.flatnonzero(out >= limit)
        while outside.size:  # cycle walking: at most a few rounds for nearly all values
            out[outside] = self._permute(out[outside], inverse)
            outside = outside[out[outside] >= limit]
        return out.astype(np.int64)

    def _permute(self, x: NDArray[np.uint64], inverse: bool) -> NDArray[np.uint64]:
        half = np.uint64(self._half)
        mask = np.uint64((1 << self._half) - 1)
        left, right = x >> half, x & mask
        keys = self._keys[::-1] if inverse else self._keys
        for k in keys:
            if inverse:  # undo (L, R) -> (R, L ^ F(R)): F of the new left
                left, right = right ^ (_mix_array(left ^ k) & mask), left
            else:
                left, right = right, left ^ (_mix_array(right ^ k) & mask)
        return (left << half) | right


@dataclass(frozen=True)
class BlockShuffle:
    """A locality-aware permutation: whole blocks move, rows mix within a window.

    Rows are first rotated by a keyed offset (so the short last block, and the
    rows ``even`` drops at the end of an epoch, differ from epoch to epoch),
    then cut into blocks of ``block_size`` consecutive rows. A keyed
    permutation orders the full blocks; consecutive ``window`` of them form a
    window (the last window also takes the short block), and a window's rows
    are read in a keyed permutation of their own. Each window of
    ``window * block_size`` positions therefore reads ``window`` runs of
    consecutive rows (plus a wrap-around), instead of a new region per row.
    """

    size: int
    key: int
    block_size: int
    window: int
    _blocks: Feistel = field(init=False, repr=False, compare=False)
    _offset: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        blocks = Feistel(self.size // self.block_size, mix64(self.key, 1))
        object.__setattr__(self, "_blocks", blocks)
        object.__setattr__(self, "_offset", mix64(self.key, 2) % max(self.size, 1))

    def rows(self, positions: NDArray[np.int64]) -> NDArray[np.int64]:
        p = np.asarray(positions, dtype=np.int64)
        block, full = self.block_size, self._blocks.size
        span = self.window * block  # positions per window; the last holds what is left
        windows = max(1, -(-full // self.window))
        w = np.minimum(p // span, windows - 1)
        local = np.empty_like(p)
        for win in np.unique(w).tolist():  # a slab of positions touches one or two windows
            sel = w == win
            size = span if win < windows - 1 else self.size - win * span
            local[sel] = Feistel(size, mix64(self.key, 3, win)).rows(p[sel] - win * span)
        block_index = w * self.window + local // block
        in_full = block_index < full
        from_blocks = self._blocks.rows(np.where(in_full, block_index, 0)) * block + local % block
        # The short block is in the last window, after its full blocks: its rows
        # follow the full blocks' rows.
        from_tail = full * block + local - (full - w * self.window) * block
        return (np.where(in_full, from_blocks, from_tail) + self._offset) % self.size


def epoch_order(
    num_rows: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    block_size: int | None = None,
    window: int = 1,
) -> Order:
    """The order of one epoch: a pure function of its arguments, the same on every rank.

    Raises:
        ValueError: if ``num_rows`` is negative or above ``2**60``.
    """
    if not 0 <= num_rows <= MAX_ROWS:
        raise ValueError(f"num_rows must be in [0, 2**60], got {num_rows}")
    if not shuffle:
        return Sequential(num_rows)
    key = mix64(seed, epoch)
    if block_size is None:
        return Feistel(num_rows, key)
    return BlockShuffle(num_rows, key, block_size, window)
