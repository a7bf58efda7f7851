"""``DeeplakeSource``: a ``Source`` over a deeplake 4.x dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._bridge import wait_future
from ._decoding import current_decoding
from ._retry import default_is_transient
from ._slabs import first_index

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from ._source import Columns

__all__ = ["DeeplakeSource", "is_deeplake_dataset"]


def is_deeplake_dataset(obj: object) -> bool:
    """Whether ``obj`` reads like a deeplake dataset or view: a schema, a length, columns by name.

    What the loader needs is a schema and columns by name, not a class name.
    (deeplake 4.7's row-range slices, ``ds[10:60]``, have no schema and are refused.)
    """
    schema = getattr(obj, "schema", None)
    return (
        schema is not None
        and hasattr(schema, "columns")
        and hasattr(obj, "__len__")
        and hasattr(obj, "__getitem__")
    )


def _transient_errors() -> tuple[type[BaseException], ...]:
    """deeplake's errors that a retry can plausibly cure: the network or the store hiccupped."""
    # Imported when first needed, not with anyloader: importing deeplake starts
    # native threads, after which a forked child aborts at exit (seen with
    # deeplake 4.7.4). Users of other sources should not inherit that.
    import deeplake

    return (
        deeplake.StorageNetworkConnectionError,
        deeplake.StorageInternalError,
        deeplake.HTTPRequestFailedError,
    )


class DeeplakeSource:
    """Rows of a deeplake dataset, one ``Column.get_async(indices)`` per column per fetch.

    Accepts an open dataset, a query view of one, or a URL,
    which is opened read-only now, so a bad URL fails here and not in a worker.
    Pickles as deeplake's small dataset handle, so DataLoader workers reopen it
    cheaply (use ``file://`` or remote URLs: ``mem://`` arrives empty).

    Raises:
        TypeError: if ``dataset`` is neither a deeplake dataset nor a string.
        ValueError: if the URL cannot be opened.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        creds: Mapping[str, str] | None = None,
        token: str | None = None,
    ) -> None:
        if isinstance(dataset, str):
            import deeplake

            try:
                dataset = deeplake.open_read_only(dataset, creds=dict(creds or {}), token=token)
            except Exception as exc:
                raise ValueError(f"cannot open deeplake dataset {dataset!r}: {exc}") from exc
        elif not is_deeplake_dataset(dataset):
            raise TypeError(
                "DeeplakeSource takes a deeplake dataset, a view of one, or a URL string, "
                f"got {type(dataset).__name__}"
            )
        self._ds = dataset
        self._columns = tuple(c.name for c in dataset.schema.columns)
        self._handles: dict[str, Any] = {}
        self._jpeg: tuple[str, ...] | None = None

    @property
    def dataset(self) -> Any:
        """The underlying deeplake dataset."""
        return self._ds

    @property
    def columns(self) -> tuple[str, ...]:
        return self._columns

    def __len__(self) -> int:
        return len(self._ds)

    def __getstate__(self) -> dict[str, Any]:
        # Column handles are process-local; workers rebuild them on first use.
        return {"_ds": self._ds, "_columns": self._columns, "_handles": {}, "_jpeg": self._jpeg}

    def is_transient(self, exc: BaseException) -> bool:
        """Whether a retry may cure ``exc``: deeplake network/storage errors, timeouts, OSError."""
        return isinstance(exc, _transient_errors()) or default_is_transient(exc)

    def _column(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = self._ds[name]
        return handle

    def _jpeg_columns(self) -> tuple[str, ...]:
        if self._jpeg is None:
            from ._decode import jpeg_columns

            self._jpeg = jpeg_columns(self._ds)
        return self._jpeg

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        """One request per column, issued together; JPEG columns as bytes, decoded by us.

        Inside an epoch whose ``decode`` is "auto", plain JPEG Image columns are
        read as their stored bytes and decoded by libjpeg-turbo in the epoch's
        decode threads, with deeplake's pixels (see anyloader._decode); rows it
        cannot reproduce (CMYK, 12-bit, corrupt) are asked of deeplake, one by one.
        Everything else, and everything outside an engine, deeplake decodes.
        """
        rows = [int(i) for i in indices]
        decoding = current_decoding()
        ours: tuple[str, ...] = ()
        if decoding is not None and decoding.settings.mode == "auto":
            ours = tuple(c for c in columns if c in self._jpeg_columns())
        # Issue every column's request before waiting, so they overlap.
        futures = [
            self._column(name).get_bytes_async(rows)
            if name in ours
            else self._column(name).get_async(rows)
            for name in columns
        ]
        try:
            values = {name: await wait_future(f) for name, f in zip(columns, futures, strict=True)}
        finally:
            # Reached with futures pending only on error or cancellation: no
            # thread waits on them, so cancelling is safe.
            for f in futures:
                if not f.is_completed():
                    f.cancel()
        first, slabs = first_index.get(), None if decoding is None else decoding.slabs
        for name in ours:
            assert decoding is not None
            into = None
            if slabs is not None and first is not None:
                into = slabs.destination(name, first, len(rows))
            column, fallback, in_place = await decoding.run(
                _decode_column,
                list(values[name]),
                decoding.settings.image_size,
                into,
                rows=len(rows),
            )
            for row in fallback:  # what we cannot reproduce, deeplake decodes: per row
                value = await wait_future(self._column(name).get_async([rows[row]]))
                column[row] = value[0]
            if fallback:
                column = _stacked_if_uniform(column)
            if in_place and slabs is not None and first is not None:
                slabs.filled(name, first, len(rows))
            values[name] = column
        return values


def _stacked_if_uniform(column: np.ndarray | list[Any]) -> np.ndarray | list[Any]:
    """Rows of one shape and dtype as one array, as deeplake returns them; else as they are."""
    if not isinstance(column, list) or not column:
        return column
    if (
        all(isinstance(a, np.ndarray) for a in column)
        and len({(a.shape, a.dtype) for a in column}) == 1
    ):
        return np.stack(column)
    return column


def _decode_column(
    blobs: list[bytes],
    image_size: tuple[int, int] | None,
    into: Callable[[tuple[int, int, int]], np.ndarray | None] | None = None,
) -> tuple[np.ndarray | list[Any], tuple[int, ...], bool]:
    """Decode one column's bytes (in a decode thread): its value, rows left over, in place?

    The value is one stacked ``(N, H, W, C)`` array when every row decodes to one
    shape, as deeplake returns such rows (in exact mode decoded straight into it,
    sparing a copy per row: into the batch tensor that ``into`` gives for that
    shape, if any), else a list with ``None`` at the rows left for deeplake. The
    flag is true when every row went into ``into``'s array.
    """
    from ._decode import UnsupportedImage, decode_column_bytes, jpeg_decoder

    if image_size is not None:
        decoded = decode_column_bytes(blobs, mode="reduced", target_size=image_size)
    else:
        try:
            shapes = {jpeg_decoder().info(b) for b in blobs}
        except (UnsupportedImage, TypeError):
            shapes = set()  # decode_column_bytes reports (or raises for) these rows one by one
        if len(shapes) == 1 and blobs:
            ((height, width, channels),) = shapes
            slab = None if into is None else into((height, width, channels))
            out = (
                np.empty((len(blobs), height, width, channels), np.uint8) if slab is None else slab
            )
            decoded = decode_column_bytes(blobs, out=out)
            if not decoded.fallback:
                return out, (), slab is not None
        else:
            decoded = decode_column_bytes(blobs)
    arrays = decoded.arrays
    if not decoded.fallback and arrays and len({a.shape for a in arrays if a is not None}) == 1:
        return np.stack([a for a in arrays if a is not None]), (), False
    return list(arrays), decoded.fallback_rows, False
