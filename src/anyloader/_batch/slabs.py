"""Batch tensors that fetches decode into directly, so batch mode copies images no more.

In ordered batch mode the plan fixes where every row lands: the row at index
``i`` of the epoch's remaining plan is row ``i % B`` of batch ``i // B``. A fetch
that decodes a JPEG column asks :class:`BatchSlabs` for the rows of that batch
tensor it covers and decodes straight into them (in shared memory inside
DataLoader workers); once every row of a batch's column arrived that way, the
batch builder takes the tensor as it is instead of copying into a new one.

Anything that does not fit (a group across two batches, a row of another shape,
rows deeplake decoded elsewhere) simply does not use the slab, and the batch
builder copies as before: the slab is an optimisation, never a second truth.
"""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .memory import BatchMemory

__all__ = ["BatchSlabs", "first_index"]

# Where the group the current task fetches starts in the epoch's plan (None: unknown).
# The engine sets it per group; a fetcher is a task of its own, so the value is its own.
first_index: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "anyloader_first_index", default=None
)


@dataclass
class _Slab:
    tensor: torch.Tensor
    filled: set[int] = field(default_factory=set)  # rows written in place, by offset


class BatchSlabs:
    """Per-column batch tensors for the batches of one epoch, filled by fetches in place.

    Guarantee: :meth:`take` returns a tensor only if every one of its rows was
    written through :meth:`rows` and then confirmed with :meth:`filled`.
    Thread-safe: fetches decode in pool threads while the consumer takes batches.
    """

    def __init__(self, batch_size: int, planned: int, memory: BatchMemory) -> None:
        self.batch_size = batch_size
        self.planned = planned
        self.memory = memory
        self._slabs: dict[tuple[str, int], _Slab] = {}
        self._lock = threading.Lock()

    def _rows_in(self, batch: int) -> int:
        return min(self.batch_size, self.planned - batch * self.batch_size)

    def rows(
        self, column: str, first: int, count: int, row_shape: tuple[int, ...], dtype: np.dtype[Any]
    ) -> list[np.ndarray] | None:
        """Views of rows ``[first, first + count)`` of ``column``'s batch tensors, one per row.

        A fetch's rows may span several batches: each batch's tensor is
        allocated for ``row_shape`` and ``dtype`` by the first fetch that
        writes into it. None if a batch's tensor already has another row shape
        or dtype (its rows are then copied, as without slabs).
        """
        element = np.dtype(dtype)
        kind = torch.from_numpy(np.empty(0, element)).dtype
        views: list[np.ndarray] = []
        at, end = first, first + count
        while at < end:
            batch, offset = divmod(at, self.batch_size)
            take = min(end - at, self._rows_in(batch) - offset)
            with self._lock:
                slab = self._slabs.get((column, batch))
                if slab is None:
                    tensor = self.memory.empty((self._rows_in(batch), *row_shape), kind)
                    slab = self._slabs[column, batch] = _Slab(tensor)
            array = slab.tensor.numpy()
            if array.shape[1:] != row_shape or array.dtype != element:
                return None
            views.extend(array[offset : offset + take])
            at += take
        return views

    def filled(self, column: str, first: int, count: int) -> None:
        """Rows ``[first, first + count)`` of ``column`` now hold their values, in place."""
        at, end = first, first + count
        with self._lock:
            while at < end:
                batch, offset = divmod(at, self.batch_size)
                take = min(end - at, self._rows_in(batch) - offset)
                slab = self._slabs.get((column, batch))
                if slab is not None:
                    slab.filled.update(range(offset, offset + take))
                at += take

    def take(self, column: str, batch: int) -> torch.Tensor | None:
        """Batch ``batch``'s tensor of ``column`` if every row was filled in place; forget it."""
        with self._lock:
            slab = self._slabs.pop((column, batch), None)
        if slab is None or len(slab.filled) != self._rows_in(batch):
            return None
        return slab.tensor
