"""Rank resolution and worker-iteration tokens, with a DataLoader worker faked in-process.

torch sets ``torch.utils.data._utils.worker._worker_info`` in each worker before it
iterates; setting it here reaches paths real workers only take when something else
has gone wrong (a worker that never started its iteration, a rank with no process
group), which end-to-end tests cannot stage.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from torch.utils.data._utils import worker as torch_worker

from anyloader import AsyncDataset, MemorySource
from anyloader._plan.rank import Ranks


@contextmanager
def as_worker(worker_id: int, num_workers: int, base_seed: int) -> Iterator[None]:
    info = torch_worker.WorkerInfo(
        id=worker_id, num_workers=num_workers, seed=base_seed + worker_id, dataset=None
    )
    torch_worker._worker_info = info
    try:
        yield
    finally:
        torch_worker._worker_info = None


def test_a_parent_rank_is_used_only_by_workers_of_that_parent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    mine = Ranks(parent=(os.getppid(), (3, 4)))  # pickled by this process's parent
    launcher = Ranks(parent=(os.getppid() + 1, (0, 1)))  # pickled by some other process
    with as_worker(0, 2, base_seed=7):
        assert mine.resolve() == (3, 4)
        assert launcher.resolve() == (1, 2)  # not the launcher's: the environment's
    assert mine.resolve() == (1, 2)  # outside a worker the hint means nothing


def test_a_persistent_workers_next_iteration_opens_a_new_epoch_even_if_a_worker_missed_one() -> (
    None
):
    ds = AsyncDataset(MemorySource({"x": np.arange(8)}), shuffle=True)

    def start(dataset: AsyncDataset) -> int:
        iter(dataset).close()
        return int(dataset.state_dict()["epoch"])

    with as_worker(0, 2, base_seed=100):
        first = start(ds)  # worker 1 never starts this iteration
        second = start(ds)  # the same persistent worker, its next iteration
    with as_worker(1, 2, base_seed=100):
        twin = AsyncDataset.__new__(AsyncDataset)
        twin.__dict__.update(ds.__dict__, _iterations=1)  # worker 1's copy, its 2nd iteration
        third = start(twin)
    assert (first, second, third) == (0, 1, 1)
