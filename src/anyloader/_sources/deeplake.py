"""``DeeplakeSource``: a ``Source`` over a deeplake 4.x dataset."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from .._decode.placing import Encoded, parts
from .._decode.threads import current_decoding
from .futures import wait_future
from .source import default_is_transient

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from .._batch.columns import ColumnInfo
    from .._decode.threads import EpochDecoding
    from .source import Columns

__all__ = ["DeeplakeSource", "is_deeplake_dataset"]


def is_deeplake_dataset(obj: object) -> bool:
    """Whether ``obj`` reads like a deeplake dataset or view: a length and a way to read cells.

    Two shapes qualify, told apart by what they have rather than by class name:
    a schema and column handles by name (datasets and query views), or rows that
    read their own cells (row-range and index-list views, ``ds[10:60]`` and
    ``ds[[3, 1]]``, which deeplake 4.7 gives no schema).
    """
    if not hasattr(obj, "__len__"):
        return False
    if _has_schema(obj):
        return hasattr(obj, "__getitem__")
    return _reads_by_row(obj)


def _has_schema(obj: object) -> bool:
    return hasattr(getattr(obj, "schema", None), "columns")


def _reads_by_row(obj: object) -> bool:
    """A schema-less view: its rows (by iteration) read their own cells with ``get_async``."""
    return hasattr(obj, "__iter__") and callable(getattr(obj, "get_async", None))


# deeplake's schema marks a side that varies with the largest uint64.
_ANY_SIDE = 2**64 - 1
_KINDS = {"Image": "image", "BinaryMask": "mask", "SegmentMask": "mask", "BoundingBox": "boxes"}


def _column_info(dtype: Any, *, jpeg: bool) -> ColumnInfo:
    """A schema type as a :class:`~anyloader._batch.columns.ColumnInfo`."""
    from .._batch.columns import ColumnInfo

    kind_name = getattr(getattr(dtype, "kind", None), "name", "")
    kind = _KINDS.get(kind_name, "text" if kind_name == "Text" else "array")
    if kind == "text" or getattr(dtype, "is_link", False) or getattr(dtype, "is_sequence", False):
        return ColumnInfo("text" if kind == "text" else "unknown")
    try:
        element = np.dtype(str(dtype.id))
    except (TypeError, AttributeError):
        element = None
    sides = getattr(dtype, "shape", None)
    shape = None if sides is None else tuple(None if s == _ANY_SIDE else int(s) for s in sides)
    if getattr(dtype, "is_nullable", False):
        shape = None  # a row may be missing: no fixed shape
    return ColumnInfo(kind, element, shape, jpeg)  # type: ignore[arg-type]


def _uncommitted(dataset: Any) -> bool:
    """Whether a writable deeplake dataset holds changes not yet committed."""
    history = getattr(dataset, "history", None)
    if history is None or not hasattr(dataset, "commit"):
        return False  # read-only datasets and views: nothing uncommitted
    # deeplake 4.7 lists uncommitted changes as the history's last entry.
    return "UNCOMMITTED CHANGES" in str(history)


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
    """Rows of a deeplake dataset or view, by the view's own row numbers ``0..len-1``.

    Accepts an open dataset, any view of one, or a URL, which is opened
    read-only now, so a bad URL fails here and not in a worker. How rows are
    read is decided here, once per view:

    - Datasets and query views (they have a schema): one
      ``Column.get_async(indices)`` per column per fetch, JPEG columns as bytes.
      They pickle as deeplake's small handle (the query is run again on
      unpickling), so DataLoader workers reopen them cheaply (use ``file://`` or
      remote URLs: ``mem://`` arrives empty).
    - Row-range and index-list views (``ds[10:60]``, ``ds[[3, 1, 3]]``: no
      schema, no column handles): one ``Row.get_async(column)`` per cell, decoded
      by deeplake, through a handle per row taken now. The column names come from
      the first row. deeplake cannot pickle these views, so they reach fork
      DataLoader workers only; pickling this source raises ``TypeError``.

    Raises:
        TypeError: if ``dataset`` is neither a deeplake dataset or view nor a string.
        ValueError: if the URL cannot be opened, or a view without a schema is
            empty (it has no row to read the column names from).
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
        self._handles: dict[str, Any] = {}
        self._jpeg: tuple[str, ...] | None = None
        # Rows of a schema-less view: its only random access (it takes no index
        # but a column name); None for views read by column.
        self._rows: list[Any] | None = None
        if _has_schema(dataset):
            self._columns = tuple(c.name for c in dataset.schema.columns)
        else:
            self._rows = list(dataset)
            if not self._rows:
                raise ValueError(
                    f"this deeplake {type(dataset).__name__} is empty and has no schema, so its "
                    "columns are unknown; pass the dataset, or a query view, instead"
                )
            self._columns = tuple(self._rows[0].to_dict())
            # Without a schema the column types are unknown: deeplake decodes everything.
            self._jpeg = ()

    @property
    def dataset(self) -> Any:
        """The underlying deeplake dataset or view."""
        return self._ds

    @property
    def columns(self) -> tuple[str, ...]:
        return self._columns

    def __len__(self) -> int:
        return len(self._ds)

    def _handle(self) -> dict[str, Any] | None:
        """deeplake's own pickled handle, parsed: the store's URL and the view's query."""
        getstate = getattr(self._ds, "__getstate__", None)
        try:
            parts = json.loads(getstate()[0]) if callable(getstate) else None
        except Exception:  # not the handle deeplake 4.7 gives: nothing to learn from it
            return None
        if isinstance(parts, dict):
            return parts
        if isinstance(parts, list) and parts and isinstance(parts[0], dict):
            return {
                **parts[0],
                **{k: v for p in parts[1:] if isinstance(p, dict) for k, v in p.items()},
            }
        return None

    @property
    def query_order(self) -> str | None:
        """The ``ORDER BY`` clause of a query view, if it has one (its rows' order matters)."""
        handle = self._handle() or {}
        query = str(handle.get("query_string", ""))
        at = query.upper().find("ORDER BY")
        return None if at < 0 else query[at:].strip()

    def unpicklable_reason(self) -> str | None:
        """Why a copy of this source made by pickling (a spawned worker) would not read it.

        A schema-less view does not pickle; a ``mem://`` dataset arrives empty in
        another process; a dataset with uncommitted changes arrives as its last commit.
        """
        if self._rows is not None:
            # deeplake's own error ("cannot pickle 'RowRangeView'") would surface
            # from deep inside DataLoader without saying what to do instead.
            return (
                f"a deeplake {type(self._ds).__name__} (a row-range or index-list view such as "
                "ds[10:60] or ds[[3, 1]]) cannot be pickled, so it cannot reach spawn or "
                "forkserver DataLoader workers; use fork workers or num_workers=0, or pass a "
                "query view, which pickles: ds.query('SELECT * LIMIT 50 OFFSET 10')"
            )
        handle = self._handle() or {}
        url = str((handle.get("reader") or {}).get("url", ""))
        if url.startswith("mem://"):
            return (
                f"{url} is an in-memory dataset: another process gets an empty one. Write it "
                "to a file:// path, or use fork workers or num_workers=0"
            )
        if _uncommitted(self._ds):
            return (
                "the dataset has uncommitted changes, and another process opens its last "
                "commit (rows appended since are missing there). Call ds.commit() first, or "
                "use fork workers or num_workers=0"
            )
        return None

    def __getstate__(self) -> dict[str, Any]:
        """Raises ``TypeError`` when the copy could not read it (:meth:`unpicklable_reason`)."""
        problem = self.unpicklable_reason()
        if problem is not None:
            raise TypeError(problem)
        # Column handles are process-local; workers rebuild them on first use.
        return {
            "_ds": self._ds,
            "_columns": self._columns,
            "_handles": {},
            "_jpeg": self._jpeg,
            "_rows": None,
        }

    def is_transient(self, exc: BaseException) -> bool:
        """Whether a retry may cure ``exc``: deeplake network/storage errors, timeouts, OSError."""
        return isinstance(exc, _transient_errors()) or default_is_transient(exc)

    def _column(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            # A schema-less view's view[name] is not a handle but every value of
            # the column, read at once: never use it.
            column = self._ds[name] if self._rows is None else _RowColumn(self._rows, name)
            handle = self._handles[name] = column
        return handle

    def column_info(self) -> dict[str, ColumnInfo]:
        """Each column's kind, dtype and row shape, from the schema (nothing without one)."""
        if self._rows is not None:
            return {}
        jpeg = set(self._jpeg_columns())
        info = {}
        for column in self._ds.schema.columns:
            info[column.name] = _column_info(column.dtype, jpeg=column.name in jpeg)
        return info

    def row_bytes(self, columns: Sequence[str]) -> float | None:
        """Stored bytes of a row of ``columns``, from deeplake's column statistics (None: unknown).

        Statistics describe the stored (compressed) values and are read without
        fetching any row; a view without a schema, or a column without
        statistics, has none.
        """
        if self._rows is not None:
            return None
        total = 0.0
        for name in columns:
            try:
                stats = self._ds[name].statistics
            except Exception:  # a view or a version that keeps none: unknown
                return None
            if not getattr(stats, "has_statistics", False):
                return None
            total += float(getattr(stats, "avg_width", 0.0) or 0.0)
        return total or None

    def _jpeg_columns(self) -> tuple[str, ...]:
        if self._jpeg is None:
            from .._decode.jpeg import jpeg_columns

            self._jpeg = jpeg_columns(self._ds)
        return self._jpeg

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        """One request per column, issued together; JPEG columns as bytes, decoded by us.

        Inside an epoch whose ``decode`` is "auto", plain JPEG Image columns are
        read as their stored bytes and decoded by libjpeg-turbo in the epoch's
        decode threads, with deeplake's pixels (see anyloader._decode.jpeg); rows it
        cannot reproduce (CMYK, 12-bit, corrupt) are asked of deeplake, one by one.
        With a geometry, the JPEG images it places come back as their bytes
        (:class:`~anyloader._decode.placing.Encoded`), for the engine to decode at the
        scale their crop needs. Everything else, and everything outside an
        engine, deeplake decodes.
        """
        rows = [int(i) for i in indices]
        decoding = current_decoding()
        ours: tuple[str, ...] = ()
        placed: tuple[str, ...] = ()
        if decoding is not None and decoding.settings.mode == "auto":
            ours = tuple(c for c in columns if c in self._jpeg_columns())
            if decoding.settings.geometry is not None:
                roles = decoding.settings.roles
                placed = tuple(c for c in ours if roles.get(c) == "image")
                ours = tuple(c for c in ours if c not in placed)
        # Issue every column's request before waiting, so they overlap.
        futures = [
            self._column(name).get_bytes_async(rows)
            if name in ours or name in placed
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
        for name in placed:
            values[name] = Encoded(list(values[name]), self._redo(name, rows))
        for name in ours:
            assert decoding is not None
            column, fallback = await _decode_in_parts(decoding, list(values[name]))
            image_size = decoding.settings.image_size
            for row in fallback:  # what we cannot reproduce, deeplake decodes: per row
                value = (await wait_future(self._column(name).get_async([rows[row]])))[0]
                if image_size is not None and isinstance(value, np.ndarray) and value.ndim == 3:
                    # Every row of an epoch has the reduced size, this one too.
                    value = await decoding.run(_reduce_like_dct, value, image_size, rows=0)
                column[row] = value
            if fallback:
                column = _stacked_if_uniform(column)
            values[name] = column
        return values

    def _redo(self, name: str, rows: list[int]) -> Callable[[int], Awaitable[Any]]:
        """Row ``i`` of ``rows`` in ``name``, decoded by deeplake (libjpeg-turbo could not)."""

        async def redo(i: int) -> Any:
            return (await wait_future(self._column(name).get_async([rows[i]])))[0]

        return redo


class _RowColumn:
    """One column of a schema-less view, read a cell per row, as a column handle reads it."""

    def __init__(self, rows: list[Any], name: str) -> None:
        self._rows = rows
        self._name = name

    def get_async(self, indices: Sequence[int]) -> _Joined:
        # Issue every row's request before anyone waits, so they overlap.
        return _Joined([self._rows[i].get_async(self._name) for i in indices])


class _Joined:
    """Futures of one column's rows as one future, with the value ``Column.get_async`` gives.

    Completed when every row's future is; its result is the rows stacked when they
    share shape and dtype, else a list; it raises the first failed row's exception.
    """

    def __init__(self, futures: list[Any]) -> None:
        self._futures = futures
        self._done = 0  # futures before this one are known to be complete

    def is_completed(self) -> bool:
        while self._done < len(self._futures) and self._futures[self._done].is_completed():
            self._done += 1
        return self._done == len(self._futures)

    def result(self) -> np.ndarray | list[Any]:
        return _stacked_if_uniform([f.result() for f in self._futures])

    def cancel(self) -> None:
        for f in self._futures:
            if not f.is_completed():
                f.cancel()


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


async def _decode_in_parts(
    decoding: EpochDecoding, blobs: list[bytes]
) -> tuple[np.ndarray | list[Any], list[int]]:
    """Decode one column of a fetch with every decode thread at once: its rows, those left over.

    One part is decoded as :func:`_decode_column` returns it (stacked when the rows
    share a shape); several give a list of rows (views of each part's array: no copy).
    """
    cuts = parts(len(blobs), decoding.threads)
    image_size = decoding.settings.image_size
    decoded = await decoding.run_parts(
        lambda part: _decode_column(blobs[part.start : part.stop], image_size), cuts
    )
    if len(decoded) == 1:
        whole, left = decoded[0]
        return whole, list(left)
    rows: list[Any] = []
    fallback: list[int] = []
    for part, (values, left) in zip(cuts, decoded, strict=True):
        fallback += [part.start + row for row in left]
        rows += list(values)
    return rows, fallback


def _reduce_like_dct(image: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``image`` (decoded by deeplake) resized to what the reduced decode of its JPEG gives."""
    from .._decode.jpeg import reduced_shape
    from .._decode.resize import resize_image

    height, width = image.shape[:2]
    size = reduced_shape(height, width, image_size)
    if size == (height, width) or image.dtype != np.uint8:
        return image
    out = np.empty((*size, image.shape[2]), np.uint8)
    resize_image(image, (0, 0, height, width), out)
    return out


def _decode_column(
    blobs: list[bytes], image_size: tuple[int, int] | None
) -> tuple[np.ndarray | list[Any], tuple[int, ...]]:
    """Decode one column's bytes (in a decode thread): its value, and the rows left over.

    The value is one stacked ``(N, H, W, C)`` array when every row decodes to one
    shape, as deeplake returns such rows (decoded straight into it, sparing a
    copy per row), else a list with ``None`` at the rows left for deeplake.
    """
    from .._decode.jpeg import (
        UnsupportedImage,
        decode_column_bytes,
        decode_reduced_leniently,
        jpeg_decoder,
    )

    if image_size is not None:
        decoded = decode_column_bytes(blobs, mode="reduced", target_size=image_size)
        arrays, left = list(decoded.arrays), []
        for row in decoded.fallback_rows:
            arrays[row] = decode_reduced_leniently(blobs[row], image_size)
            if arrays[row] is None:
                left.append(row)
        if not left and arrays and len({a.shape for a in arrays if a is not None}) == 1:
            return np.stack([a for a in arrays if a is not None]), ()
        return arrays, tuple(left)
    try:
        shapes = {jpeg_decoder().info(b) for b in blobs}
    except (UnsupportedImage, TypeError):
        shapes = set()  # decode_column_bytes reports (or raises for) these rows one by one
    if len(shapes) == 1 and blobs:
        ((height, width, channels),) = shapes
        out = np.empty((len(blobs), height, width, channels), np.uint8)
        decoded = decode_column_bytes(blobs, out=out)
        if not decoded.fallback:
            return out, ()
    else:
        decoded = decode_column_bytes(blobs)
    arrays = decoded.arrays
    if not decoded.fallback and arrays and len({a.shape for a in arrays if a is not None}) == 1:
        return np.stack([a for a in arrays if a is not None]), ()
    return list(arrays), decoded.fallback_rows
