"""The segmentation benchmark's loaders, each as a generator of batches.

A :class:`SegSpec` names one configuration; :func:`batches` runs it over an
open deeplake dataset and yields dicts with ``index`` (the rows of the batch,
for the exactly-once check) and, except for the ceiling, ``images`` uint8
``(n, 256, 256, 3)`` and ``masks`` bool ``(n, 256, 256, 1)``, ragged columns
as lists. Every loader batches 32 rows; closing the generator closes the
DataLoader iterator, which joins its workers inside the measured window.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .loaders import LoaderSpec
from .seg_augment import HFLIP, OUT, SCALE, augment_sample, collate

__all__ = ["FAMILIES", "SWEEP", "SegSpec", "batches", "default_specs"]

#: Families in report order; the report keeps the best setting of ``spdl`` and ``ceiling``.
FAMILIES = (
    "deeplake-pytorch",
    "batched-read",
    "spdl",
    "anyloader-python-transform",
    "anyloader-geometry",
    "ceiling",
)
#: Batch-mode ``(fetch_size, concurrency)`` beside the defaults (the loader sizes its own
#: requests from a row's stored bytes), which ``anyloader-geometry-batch`` runs.
SWEEP = ((4, 32), (8, 16), (16, 8), (32, 4))
#: SPDL ``(rows per request, requests in flight, decode threads)``. A tuning pass of
#: 7 settings (4-32 rows a request, 4-32 in flight, 2-3 threads; 2 runs each on the
#: COCO-like, 256 and 1024 px datasets) kept these two: 16 x 8 with 3 threads was at
#: or near the top on each, 32 x 4 first on the COCO-like rows; 8 x 16 (DESIGN.md's
#: best for full-size decodes) never was.
SPDL = ((16, 8, 3), (32, 4, 2))
#: Ceiling ``(rows per request, requests in flight)``; decode on one thread per core.
CEILING = ((8, 16), (16, 8))


@dataclass(frozen=True)
class SegSpec(LoaderSpec):
    """One loader configuration: ``benchmarks.run``'s, plus SPDL's decode threads.

    ``name`` is unique and is what reports show. anyloader takes ``fetch_size``
    and ``concurrency`` (and ``batched``, ``torch_threads``) as ``LoaderSpec``
    says; SPDL and the ceiling take ``fetch_size`` rows a request with
    ``inflight`` requests outstanding.
    """

    #: Decode threads (SPDL).
    threads: int = 0


def default_specs(quick: bool = False) -> list[SegSpec]:
    """The line-up (``quick``: one setting of each sweep)."""
    geometry = "anyloader-geometry"
    workers = (2,) if quick else (2, 4)
    specs = [SegSpec(f"deeplake-pytorch-w{w}", "deeplake-pytorch", workers=w) for w in workers]
    specs += [SegSpec(f"batched-read-w{w}", "batched-read", workers=w) for w in workers]
    specs += [
        SegSpec(f"spdl-f{f}x{n}-t{t}", "spdl", fetch_size=f, inflight=n, threads=t)
        for f, n, t in SPDL[: 1 if quick else None]
    ]
    # Per sample, the training thread's torch ops (the transform, the collate's
    # stack) run OpenMP teams that fight the decode threads: also with one thread.
    python, asyncio = "anyloader-python-transform", "asyncio"
    specs += [
        SegSpec(python, python, backend=asyncio),
        SegSpec(f"{python}-t1", python, backend=asyncio, torch_threads=1),
        SegSpec(f"{geometry}-batch", geometry, backend=asyncio, batched=True),
        SegSpec(f"{geometry}-sample", geometry, backend=asyncio),
        SegSpec(f"{geometry}-sample-t1", geometry, backend=asyncio, torch_threads=1),
    ]
    specs += [
        SegSpec(
            f"{geometry}-batch-f{f}x{c}",
            geometry,
            backend=asyncio,
            batched=True,
            fetch_size=f,
            concurrency=c,
        )
        for f, c in (SWEEP[1:2] if quick else SWEEP)
    ]
    specs += [
        SegSpec(f"ceiling-f{f}x{n}", "ceiling", fetch_size=f, inflight=n)
        for f, n in CEILING[: 1 if quick else None]
    ]
    return specs


class _RowTransform:
    """``ds.pytorch``'s transform: the row's columns as a sample, augmented (picklable)."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = columns

    def __call__(self, row: Any) -> dict[str, Any]:
        sample = {c: row[c] for c in self.columns}
        sample["index"] = row.row_id
        return augment_sample(sample)


class BatchedRead:
    """The 15-line batched read: ``ds[column][rows]`` per column for the DataLoader's batch.

    A map-style dataset (``torch.utils.data.Dataset`` protocol); torch's fetcher
    calls ``__getitems__`` with a batch's indices, deeplake decodes the batch in
    its C++ core, then each row is augmented in Python.
    """

    def __init__(self, ds: Any, columns: list[str]) -> None:
        self.ds = ds
        self.columns = columns

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        rows = list(indices)
        values = {c: self.ds[c][rows] for c in self.columns}
        return [
            augment_sample({**{c: values[c][i] for c in self.columns}, "index": row})
            for i, row in enumerate(rows)
        ]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]


def _iterate(loader: Any) -> Iterator[dict[str, Any]]:
    iterator = iter(loader)
    try:
        yield from iterator
    finally:
        # Dropping the last reference shuts the workers down and reaps them now,
        # inside the measured window, not at interpreter exit.
        del iterator


def _anyloader(spec: SegSpec, ds: Any, columns: list[str], batch_size: int) -> Any:
    import anyloader

    # backend, batch_size (batch mode), fetch_size and concurrency as the spec sets them.
    options = {**spec.anyloader_options(batch_size), "return_index": True}
    if spec.family == "anyloader-python-transform":
        dataset = anyloader.AsyncDataset(ds, columns, transform=augment_sample, **options)
        # anyloader's collate lists the images (the source's are of many sizes, and
        # it decides before the transform): ours stacks them like every other loader's.
        return anyloader.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    options["geometry"] = anyloader.RandomResizedCrop((OUT, OUT), scale=SCALE, hflip=HFLIP)
    if "boxes" in columns:
        options["boxes"] = [anyloader.Boxes("boxes", "xyxy")]
    dataset = anyloader.AsyncDataset(ds, columns, **options)
    # Batch mode: the dataset yields whole batches (anyloader.DataLoader passes them on).
    return anyloader.DataLoader(dataset, batch_size=None if spec.batched else batch_size)


def batches(
    spec: SegSpec, ds: Any, columns: list[str], batch_size: int
) -> Iterator[dict[str, Any]]:
    """Run ``spec`` over the open dataset ``ds``, reading ``columns``; yield its batches.

    Raises:
        ValueError: ``spec.family`` is unknown.
        Exception: whatever the loader raises while reading.
    """
    from torch.utils.data import DataLoader

    if spec.family == "deeplake-pytorch":
        return _iterate(
            DataLoader(
                ds.pytorch(transform=_RowTransform(columns)),
                batch_size=batch_size,
                num_workers=spec.workers,
                collate_fn=collate,
            )
        )
    if spec.family == "batched-read":
        return _iterate(
            DataLoader(
                BatchedRead(ds, columns),  # type: ignore[arg-type]
                batch_size=batch_size,
                num_workers=spec.workers,
                collate_fn=collate,
            )
        )
    if spec.family.startswith("anyloader"):
        return _iterate(_anyloader(spec, ds, columns, batch_size))
    if spec.family == "spdl":
        from .seg_fetch import spdl_batches

        return spdl_batches(ds, columns, batch_size, spec.fetch_size, spec.inflight, spec.threads)
    if spec.family == "ceiling":
        from .seg_fetch import ceiling_groups

        return ceiling_groups(ds, columns, spec.fetch_size, spec.inflight)
    raise ValueError(f"unknown loader family {spec.family!r}; known: {FAMILIES}")
