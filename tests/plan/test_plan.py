"""The epoch plan partitions every epoch: each row exactly once over all shards."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from _budget import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from anyloader import Shard, plan_epoch, shard_rows
from anyloader._plan.plan import epoch_order, rank_length

layouts = st.tuples(
    st.integers(0, 1500),  # rows
    st.integers(1, 5),  # world size
    st.integers(1, 8),  # workers per rank
)


def all_shards(world_size: int, num_workers: int) -> list[Shard]:
    return [
        Shard(rank=r, world_size=world_size, worker_id=w, num_workers=num_workers)
        for r in range(world_size)
        for w in range(num_workers)
    ]


@settings(max_examples=examples(400), deadline=1000)
@given(
    layout=layouts,
    fetch_size=st.integers(1, 70),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**63),
    epoch=st.integers(0, 10_000),
)
def test_every_row_exactly_once(
    layout: tuple[int, int, int], fetch_size: int, shuffle: bool, seed: int, epoch: int
) -> None:
    rows, world_size, num_workers = layout
    seen: Counter[int] = Counter()
    sizes = []
    for shard in all_shards(world_size, num_workers):
        groups = plan_epoch(
            rows, shard, fetch_size=fetch_size, seed=seed, epoch=epoch, shuffle=shuffle
        )
        assert all(1 <= len(g) <= fetch_size for g in groups)
        assert all(len(g) == fetch_size for g in groups[:-1])
        flat = [int(i) for g in groups for i in g]
        sizes.append(len(flat))
        seen.update(flat)
    assert sorted(seen) == list(range(rows))
    assert set(seen.values()) <= {1}
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=examples(200), deadline=1000)
@given(layout=layouts, seed=st.integers(0, 2**32), epoch=st.integers(0, 100))
def test_even_gives_equal_ranks_and_drops_only_the_tail(
    layout: tuple[int, int, int], seed: int, epoch: int
) -> None:
    rows, world_size, num_workers = layout
    per_rank = []
    seen: Counter[int] = Counter()
    for rank in range(world_size):
        got = [
            int(i)
            for w in range(num_workers)
            for i in shard_rows(
                rows,
                Shard(rank, world_size, w, num_workers),
                seed=seed,
                epoch=epoch,
                shuffle=True,
                even=True,
            )
        ]
        assert len(got) == rank_length(rows, rank, world_size, even=True)
        per_rank.append(len(got))
        seen.update(got)
    assert len(set(per_rank)) == 1
    assert set(seen.values()) <= {1}
    assert rows - len(seen) == rows % world_size  # at most world_size - 1 dropped


@settings(max_examples=examples(100), deadline=1000)
@given(layout=layouts)
def test_rank_length_counts_what_the_rank_reads(layout: tuple[int, int, int]) -> None:
    rows, world_size, num_workers = layout
    for rank in range(world_size):
        total = sum(
            len(shard_rows(rows, Shard(rank, world_size, w, num_workers)))
            for w in range(num_workers)
        )
        assert total == rank_length(rows, rank, world_size)


@settings(max_examples=examples(100), deadline=1000)
@given(rows=st.integers(0, 500), start=st.integers(0, 600), fetch_size=st.integers(1, 9))
def test_start_skips_exactly_the_first_rows(rows: int, start: int, fetch_size: int) -> None:
    shard = Shard(0, 1, 0, 1)
    full = shard_rows(rows, shard, seed=3, epoch=1, shuffle=True)
    groups = plan_epoch(
        rows, shard, fetch_size=fetch_size, seed=3, epoch=1, shuffle=True, start=start
    )
    rest = np.concatenate(groups) if groups else np.empty(0, np.int64)
    assert rest.tolist() == full[start:].tolist()


def order_list(rows: int, **kwargs: int | bool) -> list[int]:
    order = epoch_order(rows, **kwargs)  # type: ignore[arg-type]
    return order.rows(np.arange(rows, dtype=np.int64)).tolist()


def test_same_seed_and_epoch_same_order_other_epoch_other_order() -> None:
    a = order_list(1000, seed=7, epoch=3, shuffle=True)
    b = order_list(1000, seed=7, epoch=3, shuffle=True)
    c = order_list(1000, seed=7, epoch=4, shuffle=True)
    d = order_list(1000, seed=8, epoch=3, shuffle=True)
    assert a == b
    assert a != c
    assert a != d
    assert sorted(a) == list(range(1000))


def test_unshuffled_order_is_the_row_order() -> None:
    assert order_list(5, seed=1, epoch=9, shuffle=False) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"world_size": 0}, "world_size"),
        ({"num_workers": 0}, "num_workers"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"worker_id": -1}, "worker_id"),
    ],
)
def test_bad_shard_is_rejected(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Shard(**kwargs)


def test_bad_plan_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="fetch_size"):
        plan_epoch(10, Shard(), fetch_size=0)
    with pytest.raises(ValueError, match="start"):
        plan_epoch(10, Shard(), fetch_size=1, start=-1)
    with pytest.raises(ValueError, match="num_rows"):
        shard_rows(-1, Shard())
