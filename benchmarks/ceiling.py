"""The ceiling: raw concurrent ``Column.get_async(list)`` fetches, no loader at all.

Every row of every column is requested in groups of ``fetch_size`` rows with
``inflight`` groups outstanding, completion order ignored, results dropped.
deeplake still reads and decodes each cell, so this is the fastest a loader
built on deeplake's async API can hope to deliver rows on this machine; the
harness takes the best over a few settings.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

__all__ = ["ceiling_rows"]

# deeplake has no completion callback: poll, as briefly as the OS allows.
_POLL_S = 0.0002


def ceiling_rows(ds: Any, columns: list[str], fetch_size: int, inflight: int) -> Iterator[int]:
    """Fetch every row of ``columns``; yield the row count of each completed group.

    Raises:
        Exception: the first error a fetch raised (``Future.result()``).
    """
    handles = [ds[name] for name in columns]
    total = len(ds)
    starts = iter(range(0, total, fetch_size))
    pending: list[tuple[int, list[Any]]] = []
    exhausted = False
    while pending or not exhausted:
        while not exhausted and len(pending) < inflight:
            start = next(starts, None)
            if start is None:
                exhausted = True
                break
            rows = list(range(start, min(total, start + fetch_size)))
            pending.append((len(rows), [h.get_async(rows) for h in handles]))
        done = [p for p in pending if all(f.is_completed() for f in p[1])]
        if not done:
            time.sleep(_POLL_S)
            continue
        for group in done:
            pending.remove(group)
            for future in group[1]:
                future.result()  # surfaces fetch errors; the value is dropped
            yield group[0]
