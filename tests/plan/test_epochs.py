"""Epochs in every DataLoader setup: each iteration advances, ``set_epoch`` reaches every worker."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _budget import examples
from _doubles import rows_source
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

import anyloader
from anyloader import AsyncDataset
from anyloader._plan.epochs import Schedule

ROWS = 30

# (num_workers, persistent_workers, multiprocessing context, backend): each setup
# once, the backends alternated (spawned workers cost seconds each).
SETUPS = [
    (0, False, None, "asyncio"),
    (2, False, "fork", "trio"),
    (2, True, "fork", "asyncio"),
    (2, False, "spawn", "asyncio"),
    (2, True, "spawn", "trio"),
]
IDS = ["main-process", "fork", "fork-persistent", "spawn", "spawn-persistent"]


def make(backend: str) -> AsyncDataset:
    return AsyncDataset(rows_source(ROWS), columns=["row"], backend=backend, shuffle=True)


def loader(
    ds: AsyncDataset, workers: int, persistent: bool, context: str | None
) -> DataLoader[Any]:
    return DataLoader(
        ds,
        batch_size=None,
        num_workers=workers,
        persistent_workers=persistent,
        multiprocessing_context=context,
    )


def epoch(dl: DataLoader[Any]) -> list[int]:
    return [int(s["row"]) for s in dl]


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "persistent", "context", "backend"), SETUPS, ids=IDS)
def test_each_iteration_reads_the_next_epoch_unless_set_epoch_chose_one(
    workers: int, persistent: bool, context: str | None, backend: str
) -> None:
    ds = make(backend)
    dl = loader(ds, workers, persistent, context)
    first, second = epoch(dl), epoch(dl)  # no set_epoch: 0, then 1
    ds.set_epoch(7)
    seventh, eighth = epoch(dl), epoch(dl)  # set_epoch reaches (persistent) workers; then 8
    ds.set_epoch(0)
    again = epoch(dl)

    for order in (first, second, seventh, eighth):
        assert sorted(order) == list(range(ROWS))
    assert first == again
    # Each is the epoch a fresh dataset gives when told it explicitly.
    for n, order in [(1, second), (7, seventh), (8, eighth)]:
        reference = make(backend)
        reference.set_epoch(n)
        assert epoch(loader(reference, workers, False, context)) == order, f"epoch {n}"
    assert len({tuple(o) for o in (first, second, seventh, eighth)}) == 4


def test_the_epoch_property_and_the_state_follow_the_iterations() -> None:
    ds = make("asyncio")
    assert ds.epoch == 0
    list(ds)
    list(ds)
    assert ds.epoch == 2
    assert ds.state_dict()["epoch"] == 1  # the latest iteration, complete
    ds.set_epoch(5)
    assert (ds.epoch, ds.state_dict()["epoch"], ds.state_dict()["position"]) == (5, 5, 0)


def test_state_dict_refuses_to_guess_what_workers_did() -> None:
    ds = make("asyncio")
    list(DataLoader(ds, batch_size=None, num_workers=2))
    with pytest.raises(RuntimeError, match="StatefulDataLoader"):
        ds.state_dict()
    ds.set_epoch(3)  # a chosen epoch from its start is something this process knows
    assert ds.state_dict()["epoch"] == 3


# --- the schedule's transitions, as a pure value --------------------------------


@settings(max_examples=examples(300), deadline=None)
@given(
    num_workers=st.integers(1, 4),
    iterations=st.integers(1, 5),
    seeds=st.lists(st.integers(0, 2**62), min_size=5, max_size=5),
    data=st.data(),
)
def test_workers_of_one_iteration_agree_and_iterations_advance(
    num_workers: int, iterations: int, seeds: list[int], data: st.DataObject
) -> None:
    """Workers join in any order within an iteration; each iteration reads the next epoch.

    Persistent workers keep one base seed and count their iterations; fresh
    workers get a new base seed each time. Both kinds, in any arrival order.
    """
    persistent = data.draw(st.booleans())
    schedule = Schedule()
    numbers: list[int] = []
    for n in range(iterations):
        token = (seeds[0], n) if persistent else (seeds[n], 0)
        order = data.draw(st.permutations(range(num_workers)))
        epochs, got_numbers = [], set()
        for _ in order:
            schedule, got, number = schedule.join(token, num_workers, resume_epoch=None)
            epochs.append(got)
            got_numbers.add(number)
        assert epochs == [n] * num_workers
        # One number per iteration, shared by its workers, larger than any before.
        assert len(got_numbers) == 1
        numbers.extend(got_numbers)
    assert schedule.next_epoch == iterations
    assert numbers == sorted(set(numbers))


def test_a_repeated_base_seed_still_advances_once_every_worker_joined() -> None:
    schedule = Schedule()
    epochs, numbers = [], []
    for _ in range(3):  # a user re-seeding torch identically before every epoch
        for _ in range(2):
            schedule, got, number = schedule.join((42, 0), 2, resume_epoch=None)
            epochs.append(got)
            numbers.append(number)
    assert epochs == [0, 0, 1, 1, 2, 2]
    assert numbers == [1, 1, 2, 2, 3, 3]


def test_a_chosen_epoch_wins_over_a_checkpoint_and_is_used_once() -> None:
    schedule = Schedule().choose(5)
    schedule, got, first = schedule.start_here(resume_epoch=1)
    assert got == 5
    schedule, got, second = schedule.start_here(resume_epoch=None)
    assert got == 6
    schedule, got, third = schedule.start_here(resume_epoch=2)  # nothing chosen: the checkpoint's
    assert got == 2
    assert first < second < third
    assert schedule.choices == 1  # the choice is counted, and the count survives iterations


@pytest.mark.parametrize("batch_mode", [False, True])
def test_return_epoch_tells_the_transform_its_epoch_in_persistent_workers(
    batch_mode: bool,
) -> None:
    # A transform that seeds augmentation per epoch needs the epoch in the worker;
    # persistent workers keep their dataset copy, so only the sample can carry it.
    seen: list[int] = []
    ds = anyloader.AsyncDataset(
        anyloader.MemorySource({"x": np.arange(12)}),
        shuffle=True,
        return_epoch=True,
        batch_size=4 if batch_mode else None,
        transform=lambda sample: {**sample, "epoch_seen": sample["epoch"]},
    )
    loader = anyloader.DataLoader(
        ds, num_workers=2, persistent_workers=True, **({} if batch_mode else {"batch_size": 4})
    )
    for _ in range(3):
        epochs = {int(e) for batch in loader for e in np.asarray(batch["epoch_seen"]).reshape(-1)}
        seen.append(epochs.pop() if len(epochs) == 1 else -1)
    assert seen == [0, 1, 2]


def test_return_epoch_refuses_to_overwrite_a_column() -> None:
    source = anyloader.MemorySource({"epoch": np.arange(3)})
    with pytest.raises(ValueError, match='return_epoch=True would overwrite the column "epoch"'):
        anyloader.AsyncDataset(source, return_epoch=True)
