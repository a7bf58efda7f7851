"""The loaders built on stored bytes: SPDL's pipeline, and the no-loader ceiling.

Both read groups of rows with one request per column (the images' JPEG bytes
by ``Column.get_bytes_async(rows)``, every other column by
``Column.get_async(rows)``) and place each group with
:func:`benchmarks.seg_augment.place_group`, anyloader's own decode and
resampling, in threads whose OpenMP is limited to the thread. What differs is
what carries the work:

:func:`spdl_batches`
    Meta's SPDL (``spdl.pipeline``, pure Python; ``spdl.io`` needs system
    FFmpeg and is not used), built as its docs suggest: a source of row
    groups, an async stage that awaits deeplake's futures natively on SPDL's
    asyncio loop (``requests in flight`` at once; measured a little cheaper than
    polling ``is_completed()``), the decode stage in a thread pool
    (``decode threads``), aggregation to whole batches and a collate that
    concatenates the groups into batch tensors.
:func:`ceiling_groups`
    No loader: ``inflight`` groups outstanding, deeplake's futures polled, each
    group placed on a pool of one thread per usable CPU as soon as its columns
    are in, results dropped. The physical reference.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .ceiling import _POLL_S, _row_groups
from .seg_augment import STACKED, place_group

__all__ = ["ceiling_groups", "spdl_batches"]

#: How long SPDL may wait for one batch before the run counts as hung.
_BATCH_TIMEOUT_S = 300.0


def _requests(ds: Any, columns: Sequence[str], rows: list[int]) -> dict[str, Any]:
    """One request per column for ``rows``: the images' bytes, the others' values."""
    image, *others = columns
    futures = {image: ds[image].get_bytes_async(rows)}
    futures.update((c, ds[c].get_async(rows)) for c in others)
    return futures


def _place(columns: Sequence[str], rows: list[int], values: dict[str, Any]) -> dict[str, Any]:
    image = columns[0]
    rest = {c: v for c, v in values.items() if c != image}
    return {**place_group(values[image], rest), "index": rows}


def _concat(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Placed groups as one batch: tensors for stacked columns, lists for the rest."""
    import torch

    batch: dict[str, Any] = {}
    for name in groups[0]:
        if name in STACKED:
            batch[name] = torch.from_numpy(np.concatenate([np.asarray(g[name]) for g in groups]))
        else:
            batch[name] = [v for g in groups for v in g[name]]
    return batch


def spdl_batches(
    ds: Any, columns: Sequence[str], batch_size: int, fetch_size: int, inflight: int, threads: int
) -> Iterator[dict[str, Any]]:
    """SPDL's pipeline over ``ds`` (see the module); yields batches of ``batch_size`` rows.

    ``batch_size`` must be a multiple of ``fetch_size``; the last batch may be short.
    The pipeline and its decode pool are stopped before the generator ends.

    Raises:
        ValueError: ``batch_size`` is not a multiple of ``fetch_size``.
        Exception: what a stage raised (SPDL's ``PipelineFailure``).
    """
    from spdl.pipeline import PipelineBuilder

    from anyloader._decode.resize import single_threaded_torch

    if batch_size % fetch_size:
        raise ValueError(f"batch_size {batch_size} is not a multiple of fetch_size {fetch_size}")

    async def fetch(rows: list[int]) -> tuple[list[int], dict[str, Any]]:
        futures = _requests(ds, columns, rows)
        # deeplake's futures are awaitable under asyncio (SPDL's loop): no thread waits.
        return rows, {c: await f for c, f in futures.items()}

    def place(fetched: tuple[list[int], dict[str, Any]]) -> dict[str, Any]:
        return _place(columns, *fetched)

    executor = ThreadPoolExecutor(
        threads, thread_name_prefix="spdl-decode", initializer=single_threaded_torch
    )
    pipeline = (
        PipelineBuilder()
        .add_source(_row_groups(len(ds), fetch_size))
        .pipe(fetch, concurrency=inflight)
        .pipe(place, concurrency=threads, executor=executor)
        .aggregate(batch_size // fetch_size)
        .pipe(_concat)
        .add_sink(3)
        .build(num_threads=threads)
    )
    with executor, pipeline.auto_stop():
        yield from pipeline.get_iterator(timeout=_BATCH_TIMEOUT_S)


class _Group:
    __slots__ = ("futures", "placed", "rows")

    def __init__(self, rows: list[int], futures: dict[str, Any]) -> None:
        self.rows = rows
        self.futures = futures
        self.placed: Future[dict[str, Any]] | None = None


def ceiling_groups(
    ds: Any, columns: Sequence[str], fetch_size: int, inflight: int
) -> Iterator[dict[str, Any]]:
    """Read and place every row, no loader (see the module); yield ``{"index": rows}`` per group.

    ``inflight`` groups are outstanding at any stage (reading or placing). The
    pool is joined before the generator ends.

    Raises:
        Exception: the first error a fetch or a placing raised.
    """
    from anyloader._decode.jpeg import usable_cpus
    from anyloader._decode.resize import single_threaded_torch

    groups = _row_groups(len(ds), fetch_size)
    pending: list[_Group] = []
    with ThreadPoolExecutor(
        usable_cpus(), thread_name_prefix="ceiling-place", initializer=single_threaded_torch
    ) as pool:
        while True:
            pending += [
                _Group(rows, _requests(ds, columns, rows))
                for rows in itertools.islice(groups, inflight - len(pending))
            ]
            if not pending:
                return
            started = False
            for group in pending:
                if group.placed is None and all(f.is_completed() for f in group.futures.values()):
                    values = {c: f.result() for c, f in group.futures.items()}
                    group.placed = pool.submit(_place, columns, group.rows, values)
                    started = True
            done = [g for g in pending if g.placed is not None and g.placed.done()]
            for group in done:
                pending.remove(group)
                assert group.placed is not None
                group.placed.result()  # surfaces errors; the placed rows are dropped
                yield {"index": group.rows}
            if not done and not started:
                time.sleep(_POLL_S)
