"""``DeeplakeSource``: a ``Source`` over a deeplake 4.x dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._bridge import wait_future
from ._retry import default_is_transient

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._source import Columns

__all__ = ["DeeplakeSource", "is_deeplake_dataset"]


def is_deeplake_dataset(obj: object) -> bool:
    """Whether ``obj`` reads like a deeplake dataset or view: a schema, a length, columns by name.

    deeplake has many view classes (query results, row ranges, index lists,
    filters); what the loader needs is what they share, not their names.
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

    Accepts an open dataset or any view of one (query, slice, index list) or a URL,
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
        return {"_ds": self._ds, "_columns": self._columns, "_handles": {}}

    def is_transient(self, exc: BaseException) -> bool:
        """Whether a retry may cure ``exc``: deeplake network/storage errors, timeouts, OSError."""
        return isinstance(exc, _transient_errors()) or default_is_transient(exc)

    def _column(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = self._ds[name]
        return handle

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        rows = [int(i) for i in indices]
        # Issue every column's request before waiting, so they overlap.
        futures = [self._column(name).get_async(rows) for name in columns]
        try:
            return {name: await wait_future(f) for name, f in zip(columns, futures, strict=True)}
        finally:
            # Reached with futures pending only on error or cancellation: no
            # thread waits on them, so cancelling is safe.
            for f in futures:
                if not f.is_completed():
                    f.cancel()
