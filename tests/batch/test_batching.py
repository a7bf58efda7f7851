"""Batch mode: ``AsyncDataset(batch_size=B)`` builds batches itself, one copy per value."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from _doubles import CountingSource, rows_source
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, default_collate

from anyloader import AsyncDataset, Resize
from anyloader._batch.builder import BatchBuilder
from anyloader._batch.chunk import Chunk
from anyloader._batch.memory import BatchMemory
from anyloader._sources.synthetic import read_row_id


def chunk(rows: list[int]) -> Chunk:
    idx = np.asarray(rows, dtype=np.int64)
    image = np.repeat(idx[:, None], 3, axis=1).astype(np.uint8)
    image.setflags(write=False)  # as deeplake hands them out
    ragged = [np.arange(r % 3 + 1) for r in rows]
    return Chunk(idx, idx, {"image": image, "ragged": ragged, "text": [f"row {r}" for r in rows]})


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), max_size=12),
    batch_size=st.integers(1, 20),
)
def test_batches_cut_the_stream_in_order(sizes: list[int], batch_size: int) -> None:
    builder = BatchBuilder(
        batch_size, return_index=True, memory=BatchMemory(shared=False), stacks=frozenset({"image"})
    )
    batches: list[dict[str, Any]] = []
    start = 0
    for size in sizes:
        batches += [b for b, _ in builder.add(chunk(list(range(start, start + size))))]
        start += size
    batches += [b for b, _ in builder.finish()]
    total = sum(sizes)
    assert [len(b["index"]) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    assert sum(len(b["index"]) for b in batches) == total
    flat = [int(i) for b in batches for i in b["index"]]
    assert flat == list(range(total))
    for b in batches:
        assert isinstance(b["image"], torch.Tensor)
        assert b["image"][:, 0].tolist() == [i % 256 for i in b["index"].tolist()]
        assert [len(r) for r in b["ragged"]] == [i % 3 + 1 for i in b["index"].tolist()]
        assert b["text"] == [f"row {i}" for i in b["index"].tolist()]


def test_batches_in_a_worker_are_allocated_in_shared_memory() -> None:
    builder = BatchBuilder(
        4, return_index=False, memory=BatchMemory(shared=True), stacks=frozenset({"image"})
    )
    ((batch, positions),) = builder.add(chunk([0, 1, 2, 3]))
    assert positions.tolist() == [0, 1, 2, 3]
    assert batch["image"].is_shared()
    batch["image"] += 1  # writable: never a view of the fetched, read-only arrays


def pairs_ok(batch: dict[str, Any]) -> dict[str, Any]:
    images, masks = batch["images"].numpy(), batch["masks"].numpy()
    batch["ok"] = [
        read_row_id(i) == index == read_row_id(m)
        for i, m, index in zip(images, masks, batch["index"].tolist(), strict=True)
    ]
    return batch


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batched_epoch_is_exactly_once_with_pairs_intact(
    pairs_url: str, backend: str, num_workers: int
) -> None:
    ds = AsyncDataset(
        pairs_url, backend=backend, shuffle=True, return_index=True, batch_size=10,
        transform=pairs_ok, geometry=Resize((64, 64)),
    )  # fmt: skip
    rows: list[int] = []
    for batch in DataLoader(ds, batch_size=None, num_workers=num_workers):
        assert all(batch["ok"])
        assert batch["images"].shape[1:] == (64, 64, 3)
        rows += batch["index"].tolist()
    assert sorted(rows) == list(range(97))


def test_batch_mode_gives_what_default_collate_gives(pairs_url: str, backend: str) -> None:
    same = Resize((64, 64))  # every image is 64 x 64: declared, so the column stacks
    per_sample = DataLoader(
        AsyncDataset(pairs_url, backend=backend, fetch_size=3, geometry=same), batch_size=8
    )
    batched = AsyncDataset(pairs_url, backend=backend, fetch_size=3, batch_size=8, geometry=same)
    for a, b in zip(per_sample, batched, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key])
            assert a[key].dtype == b[key].dtype


def test_batch_larger_than_prefetch_never_stalls_and_stays_bounded(backend: str) -> None:
    source = CountingSource(500)
    ds = AsyncDataset(source, backend=backend, batch_size=64, prefetch=4, concurrency=2,
                      fetch_size=3)  # fmt: skip
    seen = 0
    for batch in ds:
        seen += len(batch["row"])
        assert source.fetched_rows - seen <= ds.config.budget
    assert seen == 500


def test_transform_receives_whole_batches(backend: str) -> None:
    def mean_row(batch: dict[str, Any]) -> float:
        return float(batch["row"].float().mean())

    got = list(AsyncDataset(rows_source(10), backend=backend, batch_size=4, transform=mean_row))
    assert got == [1.5, 5.5, 8.5]


def test_batched_resume_continues_after_the_last_batch(backend: str) -> None:
    def make() -> AsyncDataset:
        return AsyncDataset(rows_source(50), backend=backend, batch_size=7, shuffle=True)

    full = [b["row"].tolist() for b in make()]
    ds = make()
    it = iter(ds)
    before = [next(it)["row"].tolist() for _ in range(3)]
    state = ds.state_dict()
    it.close()
    assert state["position"] == 21
    resumed = make()
    resumed.load_state_dict(state)
    assert before + [b["row"].tolist() for b in resumed] == full


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), ("32", TypeError), (True, TypeError)]
)
def test_bad_batch_size_is_rejected(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="batch_size"):
        AsyncDataset(rows_source(3), batch_size=value)  # type: ignore[arg-type]


def test_collated_batches_match(make_pairs: Callable[[int], str]) -> None:
    url = make_pairs(13)
    same = Resize((64, 64))
    samples = list(AsyncDataset(url, columns=["masks"], return_index=True, geometry=same))
    (batch,) = list(
        AsyncDataset(url, columns=["masks"], return_index=True, batch_size=13, geometry=same)
    )
    expected = default_collate(samples)
    assert torch.equal(batch["masks"], expected["masks"])
    assert batch["index"].tolist() == expected["index"].tolist()


# Forms are decided before the first fetch: never by a batch's rows.


@pytest.fixture(scope="module")
def mostly_square_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """40 JPEGs of 64 x 64 but rows 25 and 33 (48 x 80), with masks of the same sizes."""
    import deeplake
    from deeplake import types

    url = f"file://{tmp_path_factory.mktemp('mostly') / 'ds'}"
    ds = deeplake.create(url)
    ds.add_column("images", types.Image(types.UInt8(), sample_compression="jpeg"))
    ds.add_column("masks", types.BinaryMask(sample_compression="lz4"))
    ds.add_column("label", types.Int64())
    rng = np.random.default_rng(2)
    for row in range(40):
        h, w = (48, 80) if row in (25, 33) else (64, 64)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ds.append({"images": [image], "masks": [image[..., :1] > 127], "label": [row]})
    ds.commit()
    return url


def test_a_mostly_uniform_column_is_a_list_in_every_batch_of_every_epoch(
    mostly_square_url: str, backend: str
) -> None:
    ds = AsyncDataset(mostly_square_url, backend=backend, shuffle=True, batch_size=8)
    for _ in range(3):  # the first batch of an epoch decided "tensor", and a later one died
        batches = list(ds)
        assert all(isinstance(b["images"], list) for b in batches)
        assert all(isinstance(b["masks"], list) for b in batches)
        assert all(isinstance(b["label"], torch.Tensor) for b in batches)  # fixed by the schema
        assert sorted(r for b in batches for r in b["label"].tolist()) == list(range(40))


def test_a_geometry_stacks_a_variable_size_column_in_every_batch(
    mostly_square_url: str, backend: str
) -> None:
    from anyloader import RandomResizedCrop

    ds = AsyncDataset(
        mostly_square_url,
        backend=backend,
        shuffle=True,
        batch_size=8,
        geometry=RandomResizedCrop((32, 40), scale=(0.5, 1.0), hflip=0.5),
    )
    for _ in range(2):
        batches = list(ds)
        assert {tuple(b["images"].shape[1:]) for b in batches} == {(32, 40, 3)}
        assert {tuple(b["masks"].shape[1:]) for b in batches} == {(32, 40, 1)}
        assert sorted(r for b in batches for r in b["label"].tolist()) == list(range(40))


def test_per_sample_mode_collates_ragged_columns_as_lists(
    mostly_square_url: str, backend: str
) -> None:
    ds = AsyncDataset(mostly_square_url, backend=backend, shuffle=True)
    loader = DataLoader(ds, batch_size=8, collate_fn=ds.collate)
    batches = list(loader)
    assert all(
        isinstance(b["images"], list) and len(b["images"]) == len(b["label"]) for b in batches
    )
    assert {b["images"][0].shape for b in batches} <= {(64, 64, 3), (48, 80, 3)}
    assert sorted(r for b in batches for r in b["label"].tolist()) == list(range(40))
    # torch's own collate fails on them: what the public collate is for.
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        list(DataLoader(ds, batch_size=40))


def test_after_a_transform_the_batch_decides_what_stacks(
    mostly_square_url: str, backend: str
) -> None:
    def to_squares(sample: dict[str, Any]) -> dict[str, Any]:
        sample["images"] = np.ascontiguousarray(sample["images"][:40, :40])  # one shape now
        sample["boxes"] = np.zeros((sample["label"] % 3, 4))  # ragged
        return sample

    ds = AsyncDataset(mostly_square_url, backend=backend, transform=to_squares)
    batches = list(DataLoader(ds, batch_size=8, collate_fn=ds.collate))
    assert all(tuple(b["images"].shape[1:]) == (40, 40, 3) for b in batches)
    assert all(isinstance(b["boxes"], list) for b in batches)
    assert sorted(r for b in batches for r in b["label"].tolist()) == list(range(40))
