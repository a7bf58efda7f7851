"""The ceilings: raw concurrent fetches, no loader at all, results dropped.

Two families, each run over a few settings (``fetch_size`` rows per request,
``inflight`` requests outstanding, completion order ignored); the report keeps
the best setting of each:

``ceiling-deeplake`` (:func:`deeplake_ceiling_rows`)
    ``Column.get_async(rows)`` of every column: deeplake reads and decodes each
    cell. The fastest a loader that lets deeplake decode its JPEGs can hope for.
``ceiling-bytes`` (:func:`bytes_ceiling_rows`)
    ``Column.get_bytes_async(rows)`` of the image column, decoded by
    :func:`anyloader._decode.jpeg.decode_column_bytes` (exact mode, libjpeg-turbo) in
    a pool of one thread per usable CPU (simplejpeg releases the GIL), masks
    through ``get_async``. The physical ceiling of reading and decoding on this
    machine: what any loader built on the same bytes and decoder can approach.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["bytes_ceiling_rows", "ceiling_rows", "deeplake_ceiling_rows"]

# deeplake has no completion callback: poll, as briefly as the OS allows.
_POLL_S = 0.0002


def _row_groups(total: int, fetch_size: int) -> Iterator[list[int]]:
    """Rows ``0..total`` in consecutive groups of ``fetch_size`` (the last may be short)."""
    return (list(range(s, min(total, s + fetch_size))) for s in range(0, total, fetch_size))


def deeplake_ceiling_rows(
    ds: Any, columns: list[str], fetch_size: int, inflight: int
) -> Iterator[int]:
    """Fetch every row of ``columns``; yield the row count of each completed group.

    Raises:
        Exception: the first error a fetch raised (``Future.result()``).
    """
    handles = [ds[name] for name in columns]
    groups = _row_groups(len(ds), fetch_size)
    pending: list[tuple[int, list[Any]]] = []
    while True:
        for rows in itertools.islice(groups, inflight - len(pending)):
            pending.append((len(rows), [h.get_async(rows) for h in handles]))
        if not pending:
            return
        done = [p for p in pending if all(f.is_completed() for f in p[1])]
        if not done:
            time.sleep(_POLL_S)
            continue
        for group in done:
            pending.remove(group)
            for future in group[1]:
                future.result()  # surfaces fetch errors; the value is dropped
            yield group[0]


#: The name the single-family harness used; same function.
ceiling_rows = deeplake_ceiling_rows


class _Group:
    """One request group of the bytes ceiling: bytes, then decode, alongside the masks."""

    __slots__ = ("bytes_future", "decoded", "others", "rows")

    def __init__(self, rows: int, bytes_future: Any, others: list[Any]) -> None:
        self.rows = rows
        self.bytes_future = bytes_future
        self.others = others
        self.decoded: Future[Any] | None = None


def bytes_ceiling_rows(
    ds: Any, image: str, others: list[str], fetch_size: int, inflight: int
) -> Iterator[int]:
    """Read ``image``'s bytes and decode them on every core, ``others`` via ``get_async``.

    ``inflight`` groups are outstanding at any stage (reading or decoding); a
    group completes when its images are decoded and its other columns fetched.
    Yields the row count of each completed group. The decode pool has
    :func:`anyloader._decode.jpeg.usable_cpus` threads and is joined before the generator ends.

    Raises:
        RuntimeError: a row needs deeplake's decoder (the benchmark's images never do).
        Exception: the first error a fetch or decode raised.
    """
    from anyloader._decode.jpeg import decode_column_bytes, usable_cpus

    column = ds[image]
    handles = [ds[name] for name in others]
    groups = _row_groups(len(ds), fetch_size)
    pending: list[_Group] = []
    with ThreadPoolExecutor(usable_cpus(), thread_name_prefix="ceiling-decode") as pool:
        while True:
            for rows in itertools.islice(groups, inflight - len(pending)):
                bytes_future = column.get_bytes_async(rows)
                pending.append(
                    _Group(len(rows), bytes_future, [h.get_async(rows) for h in handles])
                )
            if not pending:
                return
            progressed = False
            for group in pending:
                if group.decoded is None and group.bytes_future.is_completed():
                    blobs = group.bytes_future.result()
                    group.decoded = pool.submit(decode_column_bytes, blobs, mode="exact")
                    progressed = True
            done = [
                g
                for g in pending
                if g.decoded is not None
                and g.decoded.done()
                and all(f.is_completed() for f in g.others)
            ]
            if not done:
                if not progressed:
                    time.sleep(_POLL_S)
                continue
            for group in done:
                pending.remove(group)
                assert group.decoded is not None
                if group.decoded.result().fallback:
                    raise RuntimeError("the bytes ceiling cannot fall back to deeplake's decoder")
                for future in group.others:
                    future.result()  # surfaces fetch errors; the value is dropped
                yield group.rows
