"""The ``Source`` protocol: where rows come from. Nothing above it knows deeplake."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio
import numpy as np

if TYPE_CHECKING:
    from .._batch.columns import ColumnInfo

__all__ = ["Columns", "MemorySource", "Source", "default_is_transient"]

#: A fetched group: for each column, one value per requested row, in request
#: order. Either a stacked array whose first axis is the row, or a sequence.
Columns = Mapping[str, "np.ndarray | Sequence[Any]"]


def default_is_transient(exc: BaseException) -> bool:
    """The errors worth retrying when the source says nothing: timeouts and OS/network errors."""
    return isinstance(exc, (TimeoutError, OSError))


@runtime_checkable
class Source(Protocol):
    """Random-access rows with named columns, fetched asynchronously in groups.

    Implementations must be picklable (DataLoader workers receive a copy) and
    must return, for every requested column, exactly one value per index, in
    the order requested. ``fetch`` may be called concurrently from many tasks
    of one event loop, on asyncio or trio.

    Optional: ``column_info() -> {column: ColumnInfo}`` says what a column is
    (kind, dtype, row shape) before anything is read. Batch mode stacks only
    the columns it describes as numeric and fixed in shape (a geometry's images
    and masks too); every other column is a list. ``row_bytes(columns)`` says
    about how many stored bytes a row of those columns holds, which sizes the
    default requests (``fetch_size`` and ``concurrency`` left at None).
    """

    @property
    def columns(self) -> Sequence[str]:
        """Names of the columns ``fetch`` can return."""
        ...

    def __len__(self) -> int: ...

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        """Return ``{column: values}`` for the rows ``indices``.

        Raises:
            Exception: any storage error; the pipeline retries the transient ones.
        """
        ...


class MemorySource:
    """A ``Source`` over arrays held in memory, for tests, benchmarks and small data.

    Raises:
        ValueError: if there are no columns or the columns differ in length.
        TypeError: if a column is not array-like.
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        if not isinstance(data, Mapping) or not data:
            raise ValueError("MemorySource needs a non-empty mapping of column name -> values")
        arrays: dict[str, np.ndarray] = {}
        for name, values in data.items():
            if not isinstance(name, str):
                raise TypeError(f"column names must be str, got {name!r}")
            try:
                arrays[name] = np.asarray(values)
            except Exception as exc:  # ragged input
                raise TypeError(f"column {name!r} is not array-like: {exc}") from exc
            if arrays[name].ndim == 0:
                raise TypeError(f"column {name!r} must have a row axis, got a scalar")
        lengths = {name: len(a) for name, a in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"columns differ in length: {lengths}")
        self._arrays = arrays
        self._len = next(iter(lengths.values()))

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self._arrays)

    def column_info(self) -> dict[str, ColumnInfo]:
        """Each column's dtype and row shape, from its array: numeric arrays stack."""
        from .._batch.columns import ColumnInfo

        info = {}
        for name, array in self._arrays.items():
            text = array.dtype.kind in "OUS"
            info[name] = ColumnInfo("text" if text else "array", array.dtype, array.shape[1:])
        return info

    def __len__(self) -> int:
        return self._len

    def row_bytes(self, columns: Sequence[str]) -> float:
        """Bytes of one row of ``columns`` (the arrays' item sizes times their row shapes)."""
        return float(sum(self._arrays[c].itemsize * self._arrays[c][:1].size for c in columns))

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        # A checkpoint keeps fetch a cancellation point, like any real I/O.
        await anyio.lowlevel.checkpoint()
        first = _run_start(indices)
        if first is not None:
            # A run of rows (every fetch at fetch_size=1): copy a slice. Fancy
            # indexing releases the GIL even for one row, and on the loop thread
            # that hands the GIL to the consumer, then waits up to a switch
            # interval (5 ms) to get it back: 10x the cost of the fetch itself.
            end = first + len(indices)
            return {name: self._arrays[name][first:end].copy() for name in columns}
        idx = np.asarray(indices, dtype=np.int64)
        return {name: self._arrays[name][idx] for name in columns}


def _run_start(indices: Sequence[int]) -> int | None:
    """The first row if ``indices`` are consecutive rows counting up from 0 or more, else None."""
    if len(indices) == 0 or (first := indices[0]) < 0 or indices[-1] != first + len(indices) - 1:
        return None
    if all(b - a == 1 for a, b in itertools.pairwise(indices)):
        return first
    return None
