"""``AsyncDataset`` in real torch DataLoaders over real deeplake datasets, both backends."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from _doubles import BrokenSource, rows_source
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from anyloader import AsyncDataset, Resize, Shard, shard_rows
from anyloader._sources.synthetic import read_row_id


def pair_check(sample: dict[str, Any]) -> dict[str, Any]:
    """Module level, so worker processes can unpickle it."""
    sample["image_id"] = read_row_id(sample["images"])
    sample["mask_id"] = read_row_id(sample["masks"])
    return sample


def epoch_rows(loader: DataLoader[Any]) -> list[int]:
    rows: list[int] = []
    for batch in loader:
        index = batch["index"].tolist()
        assert batch["image_id"].tolist() == index, "an image arrived under another row"
        assert batch["mask_id"].tolist() == index, "a mask arrived under another row"
        rows += index
    return rows


@settings(max_examples=30, deadline=None)
@given(
    rows=st.sampled_from([0, 1, 2, 13, 97]),
    num_workers=st.integers(0, 3),
    world_size=st.integers(1, 3),
    fetch_size=st.integers(1, 9),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 50),
    backend=st.sampled_from(["asyncio", "trio"]),
)
def test_every_row_exactly_once_through_worker_processes(
    make_pairs: Callable[[int], str],
    rows: int,
    num_workers: int,
    world_size: int,
    fetch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    backend: str,
) -> None:
    url = make_pairs(rows)
    seen: Counter[int] = Counter()
    for rank in range(world_size):
        ds = AsyncDataset(
            url,
            backend=backend,
            fetch_size=fetch_size,
            shuffle=shuffle,
            seed=seed,
            return_index=True,
            transform=pair_check,
            rank=rank,
            world_size=world_size,
        )
        ds.set_epoch(epoch)
        got = epoch_rows(DataLoader(ds, batch_size=8, num_workers=num_workers))
        assert len(got) == len(ds)
        seen.update(got)
    assert sorted(seen) == list(range(rows))
    assert set(seen.values()) <= {1}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_epoch_with_pairs_intact(pairs_url: str, backend: str, num_workers: int) -> None:
    ds = AsyncDataset(
        pairs_url, backend=backend, shuffle=True, return_index=True, transform=pair_check
    )
    loader = DataLoader(ds, batch_size=16, num_workers=num_workers)
    got = epoch_rows(loader)
    assert sorted(got) == list(range(97))
    # filterwarnings=error: a read-only array in collate would have failed above.


def test_samples_are_writable_dicts_of_the_chosen_columns(pairs_url: str, backend: str) -> None:
    ds = AsyncDataset(pairs_url, columns=["masks"], backend=backend)
    sample = next(iter(ds))
    assert set(sample) == {"masks"}
    assert sample["masks"].flags.writeable
    assert sample["masks"].shape == (64, 64, 1)


def test_same_seed_and_epoch_give_the_same_order_on_both_backends(pairs_url: str) -> None:
    shard = Shard(rank=1, world_size=2)
    orders = []
    for backend in ("asyncio", "trio", "asyncio", "trio"):
        ds = AsyncDataset(
            pairs_url, columns=["masks"], backend=backend, shuffle=True, seed=5,
            return_index=True, rank=1, world_size=2,
        )  # fmt: skip
        ds.set_epoch(3)
        orders.append([s["index"] for s in ds])
    assert all(order == orders[0] for order in orders)
    assert orders[0] == shard_rows(97, shard, seed=5, epoch=3, shuffle=True).tolist()
    ds.set_epoch(4)
    assert [s["index"] for s in ds] != orders[0]


def test_set_epoch_reaches_worker_processes(pairs_url: str, backend: str) -> None:
    ds = AsyncDataset(
        pairs_url, columns=["masks"], backend=backend, shuffle=True, return_index=True
    )
    orders = []
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=None, num_workers=2)
        orders.append([s["index"] for s in loader])
    assert orders[0] == orders[2]
    assert orders[0] != orders[1]
    assert sorted(orders[1]) == list(range(97))


def test_len_is_this_ranks_share(pairs_url: str) -> None:
    lengths = [len(AsyncDataset(pairs_url, rank=r, world_size=4)) for r in range(4)]
    assert lengths == [25, 24, 24, 24]
    even = [len(AsyncDataset(pairs_url, rank=r, world_size=4, even=True)) for r in range(4)]
    assert even == [24, 24, 24, 24]
    assert len(AsyncDataset(pairs_url)) == 97


def test_even_ranks_yield_equal_counts_and_no_row_twice(pairs_url: str) -> None:
    seen: Counter[int] = Counter()
    counts = []
    for rank in range(3):
        ds = AsyncDataset(
            pairs_url, columns=["masks"], rank=rank, world_size=3, even=True, return_index=True
        )
        rows = [s["index"] for s in DataLoader(ds, batch_size=None, num_workers=2)]
        counts.append(len(rows))
        seen.update(rows)
    assert counts == [32, 32, 32]
    assert set(seen.values()) == {1}
    assert len(seen) == 96


def test_empty_deeplake_dataset_gives_an_empty_epoch(
    make_pairs: Callable[[int], str], backend: str
) -> None:
    ds = AsyncDataset(make_pairs(0), backend=backend)
    assert len(ds) == 0
    assert list(DataLoader(ds, batch_size=4, num_workers=0)) == []


@pytest.mark.parametrize("num_workers", [0, 2])
def test_source_error_reaches_the_training_loop(backend: str, num_workers: int) -> None:
    source = BrokenSource(64, bad_row=40, error=KeyError("row 40 vanished"))
    ds = AsyncDataset(source, backend=backend, fetch_size=4)
    with pytest.raises(KeyError, match="row 40 vanished"):
        for _ in DataLoader(ds, batch_size=4, num_workers=num_workers):
            pass


def test_transform_output_is_what_torch_collates(backend: str) -> None:
    def as_tensor(sample: dict[str, Any]) -> torch.Tensor:
        return torch.as_tensor(sample["image"]).float()

    ds = AsyncDataset(rows_source(10), backend=backend, transform=as_tensor)
    batch = next(iter(DataLoader(ds, batch_size=10)))
    assert batch.shape == (10, 4)
    assert batch[:, 0].tolist() == list(map(float, range(10)))


def test_samples_own_their_arrays(pairs_url: str, backend: str) -> None:
    """deeplake hands out read-only views of its buffers: each sample gets a writable copy."""
    first = next(iter(AsyncDataset(pairs_url, columns=["images"], backend=backend)))
    image = first["images"]
    assert image.flags.writeable
    assert image.base is None or image.base.flags.writeable  # not a view of a read-only buffer
    original = image.copy()
    image += 1  # must not reach deeplake's cached buffer
    again = next(iter(AsyncDataset(pairs_url, columns=["images"], backend=backend)))
    assert np.array_equal(again["images"], original)


def writable_in_shared_memory(batch: dict[str, Any]) -> dict[str, Any]:
    """Batch transform (module level for worker processes): where was the batch allocated?"""
    batch["shared"] = torch.tensor([batch["images"].is_shared()])
    return batch


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_are_shared_memory_only_in_workers(pairs_url: str, num_workers: int) -> None:
    ds = AsyncDataset(
        pairs_url,
        columns=["images"],
        batch_size=8,
        transform=writable_in_shared_memory,
        geometry=Resize((64, 64)),
    )
    shared = {bool(b["shared"]) for b in DataLoader(ds, batch_size=None, num_workers=num_workers)}
    # In a worker the batch crosses to the main process through shared memory.
    assert shared == {num_workers > 0}


class UnpicklableSource:
    """Rows carrying a lock: anything that pickles samples between threads would fail."""

    def __init__(self) -> None:
        self._inner = rows_source(12)

    @property
    def columns(self) -> tuple[str, ...]:
        return ("row", "lock")

    def __len__(self) -> int:
        return 12

    async def fetch(self, indices: Any, columns: Any) -> Any:
        values = dict(await self._inner.fetch(indices, ["row"]))
        values["lock"] = [threading.Lock() for _ in indices]
        return {c: values[c] for c in columns}


def test_samples_cross_threads_without_pickling(backend: str) -> None:
    got = list(AsyncDataset(UnpicklableSource(), backend=backend))
    assert [s["row"] for s in got] == list(range(12))
    assert all(isinstance(s["lock"], type(threading.Lock())) for s in got)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_backend_is_imported_with_the_dataset_not_in_the_first_epoch(backend: str) -> None:
    # A fresh interpreter: this one has imported both backends long ago. The
    # import costs up to 0.1 s (trio), which the first epoch should not pay.
    code = (
        "import sys, numpy as np, anyloader\n"
        f"mod = 'anyio._backends._{backend}'\n"
        "assert mod not in sys.modules\n"
        "source = anyloader.MemorySource({'x': np.arange(3)})\n"
        f"anyloader.AsyncDataset(source, backend={backend!r})\n"
        "assert mod in sys.modules, mod\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
