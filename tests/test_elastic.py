"""Elastic resume: a DataLoader checkpoint resumes on any layout, each row exactly once.

The reference model is torch's DataLoader itself, written out plainly: each
worker reads its shard in batches, and a rank takes batches from its workers
in turn, skipping those that are done. The model knows nothing of the
arithmetic in ``anyloader._plan.plan``; it only runs plans and counts.
"""

from __future__ import annotations

import random
import time
import warnings
from collections import Counter

import numpy as np
import pytest
import torch.utils.data.distributed
from hypothesis import given, settings
from hypothesis import strategies as st

import anyloader
from anyloader import Shard, StateError
from anyloader._loader import Layout, Position
from anyloader._plan.order import epoch_order
from anyloader._plan.plan import Rest, rank_steps, shard_plan
from anyloader._plan.state import Progress

layouts = st.builds(Layout, st.integers(1, 4), st.integers(1, 4), st.integers(1, 6))


def rank_batches(order, rest: Rest, layout: Layout, rank: int, even: bool) -> list[list[int]]:
    """The batches one rank yields, in the order torch's DataLoader yields them."""
    queues = []
    for worker in range(layout.num_workers):
        shard = Shard(rank, layout.world_size, worker, layout.num_workers)
        rows = shard_plan(order, shard, rest, even=even).all_rows().tolist()
        queues.append(
            [rows[i : i + layout.batch_size] for i in range(0, len(rows), layout.batch_size)]
        )
    out: list[list[int]] = []
    worker = 0
    while any(queues):
        if queues[worker]:
            out.append(queues[worker].pop(0))
        worker = (worker + 1) % layout.num_workers
    return out


def run(order, position: Position, layout: Layout, even: bool, steps: int | None):
    """Every rank takes ``steps`` steps (None: to the end); return rows and the new position."""
    rest, _ = position.rest_for(layout)
    position = position.begin(layout)
    delivered: list[int] = []
    per_rank = []
    for rank in range(layout.world_size):
        batches = rank_batches(order, rest, layout, rank, even)
        per_rank.append(len(batches))
        taken = batches if steps is None else batches[:steps]
        delivered += [row for batch in taken for row in batch]
    # What len(loader) and the uneven-steps warning rely on.
    assert rank_steps(order.size, rest, *vars(layout).values(), even=even) == per_rank
    for _ in range(max(per_rank) if steps is None else steps):
        position = position.step()
    return delivered, position


@settings(max_examples=400, deadline=None)
@given(
    rows=st.integers(0, 300),
    shuffle=st.booleans(),
    even=st.booleans(),
    segments=st.lists(st.tuples(layouts, st.integers(0, 40)), min_size=1, max_size=3),
    last=layouts,
)
def test_resuming_on_any_layouts_reads_the_epoch_exactly_once(
    rows: int, shuffle: bool, even: bool, segments: list[tuple[Layout, int]], last: Layout
) -> None:
    order = epoch_order(rows, seed=11, epoch=2, shuffle=shuffle)
    position = Position(epoch=2)
    seen: Counter[int] = Counter()
    world_sizes = []
    for layout, steps in [*segments, (last, None)]:
        got, position = run(order, position, layout, even, steps)
        seen.update(got)
        world_sizes.append(layout.world_size)
    assert set(seen.values()) <= {1}  # never twice
    assert all(0 <= row < rows for row in seen)
    if not even:
        assert len(seen) == rows  # every row
    else:
        # Only even's tails are skipped: fewer than world_size rows per resume.
        assert rows - len(seen) < sum(world_sizes)


def unordered_run(order, position: Position, layout: Layout, even: bool, steps, rng):
    """As :func:`run`, but each worker delivers its rows out of plan order (a fetch window).

    A worker hands out rows as a loader with a bounded row budget would: each
    next row is drawn at random from its next few undelivered positions. The
    checkpoint is the cut plus every rank's holes and extras, from what each
    worker delivered (``Progress`` per worker, as the loader keeps it).
    """
    rest, _ = position.rest_for(layout, ordered=False)
    position = position.begin(layout, ordered=False)
    delivered: list[int] = []
    holes: list[int] = []
    extras: list[int] = []
    for rank in range(layout.world_size):
        plans = [
            shard_plan(
                order, Shard(rank, layout.world_size, k, layout.num_workers), rest, even=even
            )
            for k in range(layout.num_workers)
        ]
        queues = []
        for plan in plans:
            left, out = list(range(plan.length)), []
            while left:
                out.append(left.pop(rng.randrange(min(len(left), 6))))
            queues.append(
                [out[i : i + layout.batch_size] for i in range(0, len(out), layout.batch_size)]
            )
        progress = [Progress(2, plan.length) for plan in plans]
        taken, worker = 0, 0
        while any(queues) and (steps is None or taken < steps):
            if queues[worker]:
                batch = queues[worker].pop(0)
                progress[worker] = progress[worker].deliver(batch)
                delivered += plans[worker].rows(np.array(batch, dtype=np.int64)).tolist()
                taken += 1
            worker = (worker + 1) % layout.num_workers
        stopped = Position(2, position.cuts, layout, taken, delivered=tuple(progress))
        h, e = stopped.local_corrections(rank)
        holes, extras = holes + h, extras + e
    steps_taken = max(
        rank_steps(order.size, rest, *vars(layout).values(), even=even)
        if steps is None
        else [steps]
    )
    return delivered, Position(2, position.cuts, layout, steps_taken, tuple(holes), tuple(extras))


@settings(max_examples=300, deadline=None)
@given(
    rows=st.integers(0, 300),
    shuffle=st.booleans(),
    even=st.booleans(),
    segments=st.lists(st.tuples(layouts, st.integers(0, 40)), min_size=1, max_size=3),
    last=layouts,
    seed=st.integers(0, 2**32),
)
def test_rows_delivered_out_of_order_resume_on_any_layouts_exactly_once(
    rows: int,
    shuffle: bool,
    even: bool,
    segments: list[tuple[Layout, int]],
    last: Layout,
    seed: int,
) -> None:
    order = epoch_order(rows, seed=11, epoch=2, shuffle=shuffle)
    rng = random.Random(seed)
    position = Position(epoch=2)
    seen: Counter[int] = Counter()
    world_sizes = []
    for layout, steps in [*segments, (last, None)]:
        # Every rank takes the same steps (DDP): the fewest any rank has.
        if steps is not None:
            rest, _ = position.rest_for(layout, ordered=False)
            steps = min([steps, *rank_steps(order.size, rest, *vars(layout).values(), even=even)])
        got, position = unordered_run(order, position, layout, even, steps, rng)
        seen.update(got)
        world_sizes.append(layout.world_size)
        assert len(position.holes) == len(position.extras)
    assert set(seen.values()) <= {1}  # never twice
    assert all(0 <= row < rows for row in seen)
    if not even:
        assert len(seen) == rows  # every row
    else:
        assert rows - len(seen) < sum(world_sizes)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(0, 300),
    layout=layouts,
    steps=st.integers(0, 40),
    even=st.booleans(),
)
def test_the_same_layout_resumes_in_the_same_order(
    rows: int, layout: Layout, steps: int, even: bool
) -> None:
    order = epoch_order(rows, seed=3, epoch=0, shuffle=True)
    for rank in range(layout.world_size):
        whole = rank_batches(order, Rest(), layout, rank, even)
        stopped = Position(0, (), layout, steps)
        rest, start = stopped.rest_for(layout)
        assert start == steps
        assert whole[steps:] == rank_batches(order, rest, layout, rank, even)


# --- the real DataLoader ---------------------------------------------------


def dataset(rows: int, rank: int, world_size: int, batch: int | None, **options: object):
    return anyloader.AsyncDataset(
        anyloader.MemorySource({"x": np.arange(rows)}),
        rank=rank,
        world_size=world_size,
        return_index=True,
        batch_size=batch,
        **{"shuffle": True, "seed": 4, **options},  # type: ignore[arg-type]
    )


def loader(
    rows: int,
    rank: int,
    world_size: int,
    workers: int,
    batch: int,
    batch_mode: bool,
    **options: object,
) -> anyloader.DataLoader:
    """A loader of ``batch``-row steps: the dataset's batches, or torch's."""
    ds = dataset(rows, rank, world_size, batch if batch_mode else None, **options)
    kwargs = {} if batch_mode else {"batch_size": batch}
    return anyloader.DataLoader(ds, num_workers=workers, **kwargs)


def indices(batch: dict) -> list[int]:
    return np.asarray(batch["index"]).reshape(-1).tolist()


cluster = st.tuples(st.integers(1, 3), st.integers(0, 2), st.integers(1, 5))


@settings(max_examples=12, deadline=None)
@given(
    rows=st.integers(0, 60),
    old=cluster,
    new=cluster,
    batch_mode=st.booleans(),
    steps=st.integers(0, 8),
)
def test_a_real_dataloader_resumes_on_another_layout_exactly_once(
    rows: int,
    old: tuple[int, int, int],
    new: tuple[int, int, int],
    batch_mode: bool,
    steps: int,
) -> None:
    # (world size, num_workers, rows per step); 0 workers runs in this process,
    # 1 and 2 in fork-started workers. Ranks run one after another here: with
    # explicit ranks each computes its own shard, as under DDP.
    seen: Counter[int] = Counter()
    states = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", anyloader.UnevenStepsWarning)
        firsts = [loader(rows, r, old[0], old[1], old[2], batch_mode) for r in range(old[0])]
        steps = min([steps, *(len(first) for first in firsts)])  # ranks in lockstep
        for first in firsts:
            it = iter(first)
            for _ in range(steps):
                seen.update(indices(next(it)))
            states.append(first.state_dict())
            del it
        # One rank's state describes every rank.
        assert all(state == states[0] for state in states)
        for rank in range(new[0]):
            second = loader(rows, rank, new[0], new[1], new[2], batch_mode)
            second.load_state_dict(states[0])
            expected = len(second)
            got = [indices(b) for b in second]
            assert len(got) == expected  # len(loader) counts what it yields
            seen.update(i for b in got for i in b)
    assert sorted(seen) == list(range(rows))
    assert set(seen.values()) <= {1}


def test_persistent_workers_take_a_loaded_state() -> None:
    first = loader(40, 0, 1, 2, 3, False)
    it = iter(first)
    head = [i for _ in range(4) for i in indices(next(it))]
    state = first.state_dict()
    del it
    second = anyloader.DataLoader(
        dataset(40, 0, 1, None), num_workers=2, batch_size=5, persistent_workers=True
    )
    whole_epoch = [i for b in second for i in indices(b)]  # epoch 0; the workers stay
    assert sorted(whole_epoch) == list(range(40))
    second.load_state_dict(state)  # back to epoch 0 after 4 steps of another layout
    tail = [i for b in second for i in indices(b)]
    assert sorted(head + tail) == list(range(40))
    # The epoch after is whole again, and shuffled anew.
    after = [i for b in second for i in indices(b)]
    assert sorted(after) == list(range(40))
    assert after != whole_epoch


def test_state_names_epoch_layout_and_steps_and_moves_to_the_next_epoch() -> None:
    dl = loader(10, 0, 1, 0, 3, False)
    before = dl.state_dict()
    assert (before["epoch"], before["steps"], before["layout"]) == (0, 0, None)
    it = iter(dl)
    next(it)
    mid = dl.state_dict()
    assert (mid["epoch"], mid["steps"]) == (0, 1)
    assert mid["layout"] == {"world_size": 1, "num_workers": 1, "batch_size": 3}
    list(it)
    after = dl.state_dict()
    assert (after["epoch"], after["steps"], after["cuts"]) == (1, 0, [])
    import json

    assert json.loads(json.dumps(mid)) == mid


def test_a_state_that_cannot_be_honoured_is_refused_by_name() -> None:
    dl = loader(10, 0, 1, 0, 3, False)
    state = dl.state_dict()
    for other, field in [
        (loader(11, 0, 1, 0, 3, False), "num_rows"),
        (anyloader.DataLoader(dataset(10, 0, 1, None, seed=5)), "seed"),
    ]:
        with pytest.raises(StateError, match=field):
            other.load_state_dict(state)
    with pytest.raises(StateError, match="shuffle"):
        anyloader.DataLoader(dataset(10, 0, 1, None, shuffle=False)).load_state_dict(state)
    blocks = anyloader.DataLoader(dataset(10, 0, 1, None, shuffle_block_size=2))
    with pytest.raises(StateError, match="shuffle_block_size"):
        blocks.load_state_dict(state)
    with pytest.raises(StateError, match=r"AsyncDataset\.state_dict"):
        dl.load_state_dict(dl.dataset.state_dict())
    with pytest.raises(ValueError, match="steps"):
        dl.load_state_dict({**state, "steps": -1})


def test_bad_dataloader_arguments_are_refused_by_name() -> None:
    batched = dataset(10, 0, 1, 4)
    with pytest.raises(ValueError, match="batch_size"):
        anyloader.DataLoader(batched, batch_size=4)
    assert anyloader.DataLoader(batched).batch_size is None  # passed for the user
    with pytest.raises(ValueError, match=r"AsyncDataset\(\.\.\., shuffle=True"):
        anyloader.DataLoader(dataset(10, 0, 1, None), shuffle=True)
    sampler = torch.utils.data.distributed.DistributedSampler(range(10), num_replicas=2, rank=0)
    with pytest.raises(ValueError, match=r"DistributedSampler.*shards itself"):
        anyloader.DataLoader(dataset(10, 0, 1, None), sampler=sampler)
    with pytest.raises(ValueError, match="in_order"):
        anyloader.DataLoader(dataset(10, 0, 1, None), in_order=False)
    with pytest.raises(TypeError, match="AsyncDataset"):
        anyloader.DataLoader(list(range(3)))  # type: ignore[arg-type]


def test_uneven_steps_warn_at_iteration_start_naming_even_and_join() -> None:
    # The case: 129 rows on 2 ranks in batches of 32 are 3 steps on
    # rank 0 (65 rows) and 2 on rank 1; under DDP rank 0 would wait forever.
    dl = loader(129, 0, 2, 0, 32, False)
    with pytest.warns(anyloader.UnevenStepsWarning, match=r"\[3, 2\] steps.*even=True.*Join"):
        it = iter(dl)
    del it
    even = loader(129, 0, 2, 0, 32, False, even=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", anyloader.UnevenStepsWarning)
        assert len(list(even)) == len(even) == 2


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("batch_mode", [False, True])
def test_len_counts_the_batches_it_yields(workers: int, batch_mode: bool) -> None:
    # 10 rows in batches of 4: 3 batches in one process, but 2 workers of 5
    # rows each yield 2 + 2, where torch's own count, ceil(10 / 4), says 3.
    dl = loader(10, 0, 1, workers, 4, batch_mode)
    got = list(dl)
    assert len(dl) == len(got) == {0: 3, 1: 3, 2: 4}[workers]
    assert sorted(i for b in got for i in indices(b)) == list(range(10))


def test_stats_sum_the_workers_and_time_the_training_loop() -> None:
    dl = loader(24, 0, 1, 2, 4, True)
    assert dl.stats().rows == 0  # before the first iteration
    steps = 0
    for _ in dl:
        time.sleep(0.02)  # sync-ok: a training step's work, outside next(loader), not a wait
        steps += 1
    stats = dl.stats()
    assert stats.rows == 24  # both workers' rows, summed in this process
    assert stats.workers == 2
    # The consumer is the training loop here (a worker's own loop never sleeps):
    # at least the steps' time, of which most was not spent waiting for data.
    assert stats.consumer_seconds >= 0.02 * steps
    assert stats.consumer_wait_seconds < stats.consumer_seconds
    assert 0 <= stats.input_bound < 1
