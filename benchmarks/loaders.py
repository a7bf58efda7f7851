"""The loaders under comparison, each as a generator of per-batch sample counts.

A :class:`LoaderSpec` names one configuration; :func:`batches` runs it over an
open deeplake dataset. Every loader yields batches of ``batch_size`` samples
through ``torch.utils.data.DataLoader`` (default collate, ``shuffle=False``)
except the ceiling, which has no loader and yields rows as fetched, and
anyloader's batch mode, which builds its batches itself.
Closing the generator closes the DataLoader iterator, which joins its workers,
so their CPU time is counted by the run that spawned them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["FAMILIES", "PEERS", "LoaderSpec", "batches", "default_specs"]

FAMILIES = (
    "sequential",
    "documented-async",
    "deeplake-pytorch",
    "anyloader",
    "ceiling",
)
#: The documented alternatives anyloader has to beat ("best peer").
PEERS = ("documented-async", "deeplake-pytorch")
COLUMNS = ["images", "masks"]


@dataclass(frozen=True)
class LoaderSpec:
    """One loader configuration. ``name`` is unique and is what reports show."""

    name: str
    family: str
    workers: int = 0
    backend: str = ""
    fetch_size: int = 0
    inflight: int = 0
    batched: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoaderSpec:
        return cls(**data)


def default_specs(
    pytorch_workers: Iterable[int] = (0, 2, 4),
    anyloader_workers: Iterable[int] = (0, 2),
    backends: Iterable[str] = ("asyncio", "trio"),
    ceiling: Iterable[tuple[int, int]] = ((1, 64), (8, 8)),
    batched: bool = True,
) -> list[LoaderSpec]:
    """The issue-3 line-up; ``ceiling`` lists ``(fetch_size, inflight)`` settings.

    With ``batched``, anyloader also runs in its batch mode
    (``AsyncDataset(batch_size=32)`` under ``DataLoader(batch_size=None)``).
    """
    specs = [
        LoaderSpec("sequential", "sequential"),
        LoaderSpec("documented-async", "documented-async"),
    ]
    specs += [
        LoaderSpec(f"deeplake-pytorch-w{w}", "deeplake-pytorch", workers=w) for w in pytorch_workers
    ]
    specs += [
        LoaderSpec(f"anyloader-{b}-w{w}", "anyloader", workers=w, backend=b)
        for b in backends
        for w in anyloader_workers
    ]
    if batched:
        specs += [
            LoaderSpec(
                f"anyloader-batched-{b}-w{w}", "anyloader", workers=w, backend=b, batched=True
            )
            for b in backends
            for w in anyloader_workers
        ]
    specs += [
        LoaderSpec(f"ceiling-f{f}x{n}", "ceiling", fetch_size=f, inflight=n) for f, n in ceiling
    ]
    return specs


def _collated(dataset: Any, batch_size: int | None, workers: int) -> Iterator[int]:
    from torch.utils.data import DataLoader

    # batch_size=None: the dataset yields whole batches itself (anyloader's batch mode).
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    iterator = iter(loader)
    try:
        for batch in iterator:
            first = batch[0] if isinstance(batch, (list, tuple)) else batch["images"]
            yield len(first)
    finally:
        # Dropping the last reference shuts the workers down and reaps them now,
        # inside the measured window, not at interpreter exit.
        del iterator


def batches(spec: LoaderSpec, ds: Any, batch_size: int) -> Iterator[int]:
    """Run ``spec`` over the open dataset ``ds``; yield the sample count of each batch.

    Raises:
        ValueError: ``spec.family`` is unknown.
        Exception: whatever the loader raises while reading.
    """
    if spec.family == "sequential":
        from .documented import SequentialImages

        return _collated(SequentialImages(ds), batch_size, 0)
    if spec.family == "documented-async":
        from .documented import DocumentedAsyncImages

        return _collated(DocumentedAsyncImages(ds), batch_size, 0)
    if spec.family == "deeplake-pytorch":
        return _collated(ds.pytorch(), batch_size, spec.workers)
    if spec.family == "anyloader":
        import anyloader

        source = anyloader.DeeplakeSource(ds)
        if spec.batched:
            batched = anyloader.AsyncDataset(source, backend=spec.backend, batch_size=batch_size)
            return _collated(batched, None, spec.workers)
        dataset = anyloader.AsyncDataset(source, backend=spec.backend)
        return _collated(dataset, batch_size, spec.workers)
    if spec.family == "ceiling":
        from .ceiling import ceiling_rows

        return ceiling_rows(ds, COLUMNS, spec.fetch_size, spec.inflight)
    raise ValueError(f"unknown loader family {spec.family!r}; known: {FAMILIES}")
