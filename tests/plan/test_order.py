"""Epoch orders: bijections on [0, N) in constant memory, and shuffles worth the name."""

from __future__ import annotations

import numpy as np
import pytest
from _budget import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from anyloader._plan.order import BlockShuffle, Feistel, Sequential, epoch_order


def materialise(order: Feistel | BlockShuffle | Sequential) -> np.ndarray:
    return order.rows(np.arange(order.size, dtype=np.int64))


@settings(max_examples=examples(300), deadline=1000)
@given(size=st.integers(0, 3000), key=st.integers(0, 2**64 - 1))
def test_feistel_is_a_permutation_and_positions_invert_it(size: int, key: int) -> None:
    order = Feistel(size, key)
    rows = materialise(order)
    assert sorted(rows.tolist()) == list(range(size))
    assert order.positions(rows).tolist() == list(range(size))


@settings(max_examples=examples(200), deadline=2000)
@given(
    size=st.integers(2, 10**12),
    key=st.integers(0, 2**64 - 1),
    positions=st.lists(st.integers(0, 10**12), min_size=1, max_size=2000),
)
def test_feistel_at_large_sizes_maps_positions_to_distinct_rows(
    size: int, key: int, positions: list[int]
) -> None:
    # No one can enumerate 10**12 rows; a left inverse proves injectivity instead:
    # positions(rows(p)) == p for every p means no two positions share a row.
    p = np.array([x % size for x in positions], dtype=np.int64)
    order = Feistel(size, key)
    rows = order.rows(p)
    assert ((rows >= 0) & (rows < size)).all()
    assert (order.positions(rows) == p).all()
    # Injective, checked directly on what was drawn as well.
    assert len(set(rows.tolist())) == len(set(p.tolist()))


@settings(max_examples=examples(300), deadline=1000)
@given(
    size=st.integers(0, 3000),
    key=st.integers(0, 2**64 - 1),
    block_size=st.integers(1, 300),
    window=st.integers(1, 9),
)
def test_block_shuffle_is_a_permutation(size: int, key: int, block_size: int, window: int) -> None:
    rows = materialise(BlockShuffle(size, key, block_size, window))
    assert sorted(rows.tolist()) == list(range(size))


def runs(rows: np.ndarray, block_size: int) -> int:
    """How many distinct blocks of consecutive rows a stretch of rows touches."""
    return len(set((rows // block_size).tolist()))


def test_a_block_shuffle_window_reads_only_its_blocks() -> None:
    size, block, window = 100_000, 1000, 4
    order = BlockShuffle(size, key=7, block_size=block, window=window)
    rows = materialise(order)
    span = block * window
    # Each window of positions reads rows from at most window + 1 stored blocks
    # (+1: the keyed rotation makes a block straddle two stored ones).
    per_window = [runs(rows[i : i + span], block) for i in range(0, size - span, span)]
    assert max(per_window) <= 2 * window
    # A full shuffle's window of the same length touches nearly every block.
    full = materialise(Feistel(size, key=7))
    assert runs(full[:span], block) > 90


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    # Rank correlation of two permutations of 0..n-1: they are their own ranks.
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


@pytest.mark.parametrize("block_size", [None, 50])
def test_two_epochs_orders_are_uncorrelated(block_size: int | None) -> None:
    n = 20_000
    # For independent uniform orders of m units the coefficient has standard
    # deviation 1/sqrt(m): m = n rows, or n / block_size blocks moving whole.
    bound = 4 / np.sqrt(n / (block_size or 1))
    for seed in range(5):
        a = materialise(epoch_order(n, seed=seed, epoch=0, shuffle=True, block_size=block_size))
        b = materialise(epoch_order(n, seed=seed, epoch=1, shuffle=True, block_size=block_size))
        # The position of each row in epoch 0 against epoch 1.
        assert abs(spearman(np.argsort(a), np.argsort(b))) < bound
        # And the order is not the row order itself.
        assert abs(spearman(a, np.arange(n))) < bound


def test_every_rows_position_is_close_to_uniform_over_seeds() -> None:
    n, seeds = 16, 4000
    counts = np.zeros((n, n), dtype=np.int64)  # counts[row, position]
    for seed in range(seeds):
        rows = materialise(epoch_order(n, seed=seed, epoch=0, shuffle=True))
        counts[rows, np.arange(n)] += 1
    expected = seeds / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # (n-1)^2 = 225 degrees of freedom: mean 225, sd 21. 350 is six sd away.
    assert chi2 < 350, chi2
    # A biased order (the row order itself, every time) is far outside.
    assert counts.min() > expected / 2


def test_neighbouring_positions_do_not_hold_neighbouring_rows() -> None:
    n = 100_000
    rows = materialise(epoch_order(n, seed=3, epoch=0, shuffle=True))
    gaps = np.abs(np.diff(rows))
    # For a uniform order P(gap <= 10) is about 20/n: a couple of pairs, not a pattern.
    assert int((gaps <= 10).sum()) < 20
    # The typical gap of a uniform order is n/3.
    assert 0.25 * n < float(np.median(gaps)) < 0.45 * n


def test_orders_are_deterministic_and_keyed() -> None:
    a = materialise(epoch_order(1000, seed=1, epoch=2, shuffle=True, block_size=10, window=3))
    b = materialise(epoch_order(1000, seed=1, epoch=2, shuffle=True, block_size=10, window=3))
    c = materialise(epoch_order(1000, seed=1, epoch=3, shuffle=True, block_size=10, window=3))
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="num_rows"):
        epoch_order(-1, seed=0, epoch=0, shuffle=True)
    with pytest.raises(ValueError, match="num_rows"):
        epoch_order(2**61, seed=0, epoch=0, shuffle=True)
