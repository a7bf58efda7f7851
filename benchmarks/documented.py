"""Our reimplementation of the two loaders on Deep Lake's "Async Data Loader" page.

Both are rewritten here from the page's description, keeping each behaviour
that matters for a fair comparison, defects included, because they are the
peers we measure against:

``SequentialImages``
    Map-style dataset; every ``__getitem__`` reads the image cell, then the
    mask cell, synchronously, one row at a time.
``DocumentedAsyncImages``
    * one row cursor and its lock at module level, shared by every instance
      and every task; the cursor wraps at ``len - 1``, so the last row is
      never read;
    * 128 asyncio tasks on a loop that runs forever in a daemon thread, each
      awaiting the image and mask futures of a row natively (``await`` on
      deeplake's futures) and putting the pair on a
      ``multiprocessing.Queue`` (pickling every sample between two threads
      of one process), blocking the loop while the queue is full;
    * a consumer that spins on ``Queue.empty()`` until something arrives.

  The one change: iteration stops after ``len(ds)`` samples, so that an
  epoch can be timed. Nothing stops the loop thread afterwards; whatever the
  interpreter does about that at exit is part of what the benchmark records.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import torch.utils.data

__all__ = ["DocumentedAsyncImages", "SequentialImages"]

FETCH_TASKS = 128
QUEUE_SIZE = 1024


class SequentialImages(torch.utils.data.Dataset[Any]):
    """One synchronous image read and one mask read per row."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, row: int) -> tuple[Any, Any]:
        return self.ds[row]["images"], self.ds[row]["masks"]


# Process-wide on purpose: the documented pattern keeps them as module globals.
_cursor_lock = threading.Lock()
_cursor = -1


def _endless_rows(ds: Any) -> Iterator[Any]:
    global _cursor
    count = len(ds)
    while True:
        with _cursor_lock:
            _cursor = (_cursor + 1) % (count - 1)  # documented wrap: row count-1 is skipped
            row = _cursor
        yield ds[row]


class DocumentedAsyncImages(torch.utils.data.IterableDataset[Any]):
    """The documented async design; yields ``len(ds)`` (image, mask) pairs per iteration."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds
        self.started = False
        self.rows = _endless_rows(ds)
        self.queue: multiprocessing.Queue[Any] = multiprocessing.Queue(maxsize=QUEUE_SIZE)

    async def _fill(self) -> None:
        for row in self.rows:
            pair = await asyncio.gather(row.get_async("images"), row.get_async("masks"))
            self.queue.put(pair)

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        for _ in range(FETCH_TASKS):
            # No reference kept, as documented: nothing ever awaits or cancels them.
            loop.create_task(self._fill())  # noqa: RUF006

        def run_forever() -> None:
            asyncio.set_event_loop(loop)
            loop.run_forever()

        self.thread = threading.Thread(target=run_forever, daemon=True)
        self.thread.start()
        self.started = True

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for _ in range(len(self.ds)):
            if not self.started:
                self._start()
            while self.queue.empty():
                pass  # the documented busy-wait, kept: its CPU cost is measured
            image, mask = self.queue.get()
            yield image, mask
