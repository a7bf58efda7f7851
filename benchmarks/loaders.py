"""The loaders under comparison, each as a generator of per-batch sample counts.

A :class:`LoaderSpec` names one configuration; :func:`batches` runs it over an
open deeplake dataset. Every loader yields batches of ``batch_size`` samples
through ``torch.utils.data.DataLoader`` (default collate, ``shuffle=False``)
except the ceilings, which have no loader and yield rows as fetched, and
anyloader's batch mode, which builds its batches itself.
Closing the generator closes the DataLoader iterator, which joins its workers,
so their CPU time is counted by the run that spawned them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CEILINGS", "FAMILIES", "PEERS", "LoaderSpec", "batches", "default_specs"]

FAMILIES = (
    "sequential",
    "documented-async",
    "deeplake-pytorch",
    "anyloader",
    "ceiling-deeplake",
    "ceiling-bytes",
)
#: The no-loader references; the report keeps each family's best setting.
CEILINGS = ("ceiling-deeplake", "ceiling-bytes")
#: The documented alternatives anyloader has to beat ("best peer").
PEERS = ("documented-async", "deeplake-pytorch")
COLUMNS = ["images", "masks"]


#: LoaderSpec fields passed to ``AsyncDataset`` under the same name when set.
_OPTIONS = (
    "fetch_size",
    "concurrency",
    "decode",
    "shuffle",
    "shuffle_block_size",
    "shuffle_window",
)


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
    #: anyloader's ``decode`` option ("" = its default, "auto").
    decode: str = ""
    #: anyloader's ``concurrency`` (0 = its default).
    concurrency: int = 0
    #: anyloader's ``shuffle``; with ``shuffle_block_size`` > 0 the block shuffle.
    shuffle: bool = False
    #: anyloader's ``shuffle_block_size`` and ``shuffle_window`` (0 = unset / its default).
    shuffle_block_size: int = 0
    shuffle_window: int = 0
    #: ``torch.set_num_threads`` before the run (0 = torch's default: a thread per core).
    torch_threads: int = 0

    def anyloader_options(self, batch_size: int) -> dict[str, Any]:
        """The ``AsyncDataset`` keyword arguments this spec sets (defaults left out)."""
        options: dict[str, Any] = {"backend": self.backend}
        if self.batched:
            options["batch_size"] = batch_size
        for name in _OPTIONS:
            if value := getattr(self, name):  # 0, "" and False leave anyloader's default
                options[name] = value
        return options

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoaderSpec:
        return cls(**data)


#: Batch-mode settings: (name suffix, fetch_size, concurrency, decode); 0/"" = default.
BATCHED = (
    ("", 0, 0, ""),
    ("-f8x16", 8, 16, ""),
    ("-f32x8", 32, 8, ""),
    ("-deeplake", 0, 0, "deeplake"),
)


def default_specs(
    pytorch_workers: Iterable[int] = (0, 2, 4),
    anyloader_workers: Iterable[int] = (0,),
    backends: Iterable[str] = ("asyncio", "trio"),
    ceiling_deeplake: Iterable[tuple[int, int]] = ((1, 64), (8, 8)),
    ceiling_bytes: Iterable[tuple[int, int]] = ((8, 16), (16, 8), (32, 4)),
    batched: Iterable[tuple[str, int, int, str]] = BATCHED,
    deeplake_decode_backends: Iterable[str] = ("asyncio",),
    per_sample_threads: Iterable[tuple[str, int]] = (("", 0), ("-t1", 1)),
) -> list[LoaderSpec]:
    """The line-up; the ceilings list ``(fetch_size, inflight)`` settings.

    anyloader runs per sample (``DataLoader(AsyncDataset(...), batch_size=32)``)
    and in batch mode (``AsyncDataset(batch_size=32)`` under
    ``DataLoader(batch_size=None)``) with each ``batched`` setting: default
    options, more rows per fetch, and ``decode="deeplake"`` (the latter only on
    ``deeplake_decode_backends``, it is there for comparison). Per sample it
    runs at torch's default intra-op threads and, suffixed ``-t1``, with
    ``torch.set_num_threads(1)``: the default collate's ``torch.stack`` then
    stops competing with the decode threads for the cores (``per_sample_threads``
    lists ``(name suffix, threads)``; 0 is torch's default).
    """
    per_sample_threads = tuple(per_sample_threads)
    backends = tuple(backends)
    anyloader_workers = tuple(anyloader_workers)
    specs = [
        LoaderSpec("sequential", "sequential"),
        LoaderSpec("documented-async", "documented-async"),
    ]
    specs += [
        LoaderSpec(f"deeplake-pytorch-w{w}", "deeplake-pytorch", workers=w) for w in pytorch_workers
    ]
    specs += [
        LoaderSpec(
            f"anyloader-{b}-w{w}{suffix}", "anyloader", workers=w, backend=b, torch_threads=t
        )
        for b in backends
        for w in anyloader_workers
        for suffix, t in per_sample_threads
    ]
    for suffix, fetch_size, concurrency, decode in batched:
        on = tuple(deeplake_decode_backends) if decode == "deeplake" else backends
        specs += [
            LoaderSpec(
                f"anyloader-batched{suffix}-{b}-w{w}",
                "anyloader",
                workers=w,
                backend=b,
                batched=True,
                fetch_size=fetch_size,
                concurrency=concurrency,
                decode=decode,
            )
            for b in on
            for w in anyloader_workers
        ]
    specs += [
        LoaderSpec(f"ceiling-deeplake-f{f}x{n}", "ceiling-deeplake", fetch_size=f, inflight=n)
        for f, n in ceiling_deeplake
    ]
    specs += [
        LoaderSpec(f"ceiling-bytes-f{f}x{n}", "ceiling-bytes", fetch_size=f, inflight=n)
        for f, n in ceiling_bytes
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


def _image_size(ds: Any) -> tuple[int, int]:
    """The (height, width) of the dataset's first image, from its JPEG header."""
    import simplejpeg

    height, width, _, _ = simplejpeg.decode_jpeg_header(ds[COLUMNS[0]].get_bytes([0])[0])
    return int(height), int(width)


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
        options = spec.anyloader_options(batch_size)
        if spec.batched:
            # Every image of the benchmark's datasets has one size: said so, the
            # column stacks, and each image is decoded straight into its batch slot.
            options["geometry"] = anyloader.Resize(_image_size(ds))
        dataset = anyloader.AsyncDataset(source, **options)
        # batch_size=None: batch mode yields whole batches itself.
        return _collated(dataset, None if spec.batched else batch_size, spec.workers)
    if spec.family == "ceiling-deeplake":
        from .ceiling import deeplake_ceiling_rows

        return deeplake_ceiling_rows(ds, COLUMNS, spec.fetch_size, spec.inflight)
    if spec.family == "ceiling-bytes":
        from .ceiling import bytes_ceiling_rows

        image, *others = COLUMNS
        return bytes_ceiling_rows(ds, image, others, spec.fetch_size, spec.inflight)
    raise ValueError(f"unknown loader family {spec.family!r}; known: {FAMILIES}")
