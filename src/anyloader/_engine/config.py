"""``LoaderConfig``: a source, the columns read from it, and the validated options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._batch.columns import ColumnRoles, column_roles
from .._decode.threads import DecodeSettings
from .._sources.source import Source, default_is_transient
from .retry import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._options import Options

__all__ = ["LoaderConfig", "as_source"]


def as_source(source: object) -> Source:
    """Return ``source`` as a ``Source``: deeplake datasets, views and URLs are wrapped.

    Raises:
        TypeError: if ``source`` is none of the accepted kinds.
        ValueError: if a URL cannot be opened.
    """
    if isinstance(source, Source):
        return source
    from .._sources.deeplake import DeeplakeSource, is_deeplake_dataset

    if isinstance(source, str) or is_deeplake_dataset(source):
        return DeeplakeSource(source)
    raise TypeError(
        "source must be a deeplake dataset or view, a dataset URL string, or an "
        f"anyloader.Source; got {type(source).__name__}"
    )


def _resolve_columns(
    requested: Sequence[str] | None, available: Sequence[str], options: Options
) -> tuple[str, ...]:
    chosen = tuple(available) if requested is None else tuple(requested)
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}; the source has {list(available)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"columns lists a name twice: {list(chosen)}")
    if not chosen:
        raise ValueError(f"no columns selected; the source has {list(available)}")
    added_columns = (
        ("index", options.return_index),
        ("epoch", options.return_epoch),
        ("geometry", options.return_geometry),
    )
    for added, flag in added_columns:
        if flag and added in chosen:
            raise ValueError(f'return_{added}=True would overwrite the column "{added}"')
    return chosen


#: What a default request carries: enough stored bytes that the per-request cost (a
#: deeplake request and a future per column, 0.3 ms of CPU on small rows and more on
#: large ones) is small beside the rows'. Decoding a request is split over the decode
#: threads, so many rows keep none of them idle. Measured on the segmentation benchmark
#: (3 runs each): 4 rows of 270 KB a request cost 0.5 ms more CPU per row than 16, and
#: 16 rows of 68 KB 0.2 ms more than 32; at 2 MiB the defaults chose those and reached
#: 0.91 of the best setting, at 8 MiB they choose the best one on every dataset.
REQUEST_BYTES = 8 << 20
MAX_FETCH_SIZE = 32
#: Rows in flight by default: enough to hide a store's latency (20 ms per request on the
#: benchmark's S3 store), with at least this many requests.
IN_FLIGHT_ROWS = 128
MIN_CONCURRENCY = 4
#: Rows per request when the source says nothing of their size.
UNKNOWN_FETCH_SIZE = 16


def request_sizes(source: Source, columns: Sequence[str], options: Options) -> tuple[int, int]:
    """``(fetch_size, concurrency)``: the options', or chosen from what a row of ``source`` costs.

    A row's stored bytes come from the source (``row_bytes(columns)``; deeplake
    reads them from its column statistics, nothing is fetched): a request carries
    about :data:`REQUEST_BYTES` of them, a power of two of rows up to
    :data:`MAX_FETCH_SIZE`, and about :data:`IN_FLIGHT_ROWS` rows are in flight.
    The same in every process that builds the loader from the same source.
    """
    fetch_size = options.fetch_size
    if fetch_size is None:
        row_bytes = getattr(source, "row_bytes", None)
        size = row_bytes(columns) if callable(row_bytes) else None
        if not size or size <= 0:
            fetch_size = UNKNOWN_FETCH_SIZE
        else:
            fits = max(1, int(REQUEST_BYTES // size))
            fetch_size = min(MAX_FETCH_SIZE, 1 << (fits.bit_length() - 1))
    concurrency = options.concurrency
    if concurrency is None:
        concurrency = max(MIN_CONCURRENCY, -(-IN_FLIGHT_ROWS // fetch_size))
    return fetch_size, concurrency


@dataclass(frozen=True)
class LoaderConfig:
    """Everything that decides what an epoch yields and how it is fetched.

    Raises:
        TypeError, ValueError: from :meth:`build`, naming the bad argument.
    """

    source: Source
    columns: tuple[str, ...]
    options: Options
    roles: ColumnRoles
    #: Rows per fetch request and requests in flight: the options, or chosen for the source.
    fetch_size: int
    concurrency: int

    @classmethod
    def build(cls, source: object, options: Options) -> LoaderConfig:
        """Wrap ``source``, check ``options.columns`` against its columns, decide their roles.

        Raises:
            TypeError: if ``source`` is not a dataset, URL or ``Source``.
            ValueError: an unknown or repeated column, or none selected; a
                geometry with nothing to place; boxes of a column not read.
        """
        src = as_source(source)
        columns = _resolve_columns(options.columns, src.columns, options)
        for boxes in options.boxes:
            named = [boxes.column, *boxes.aligned]
            missing = [name for name in named if name not in columns]
            if missing:
                raise ValueError(
                    f"boxes of {boxes.column!r} name {missing}, which are not read; the columns "
                    f"are {list(columns)}"
                )
        roles = column_roles(src, columns, options.geometry)
        fetch_size, concurrency = request_sizes(src, columns, options)
        return cls(src, columns, options, roles, fetch_size, concurrency)

    def decode_settings(self, epoch: int = 0) -> DecodeSettings:
        """What the epoch's decode threads need to know: the options and the columns' roles."""
        o = self.options
        return DecodeSettings(
            o.decode,
            o.decode_threads,
            o.image_size,
            o.geometry,
            dict(self.roles.roles),
            self.roles.reference,
            o.boxes,
            o.return_geometry,
            o.seed,
            epoch,
        )

    @property
    def budget(self) -> int:
        """Most rows fetched but not yet consumed at any moment.

        With ``batch_size`` the rows of the batch being assembled count too
        (they are not consumed until their batch is), so the budget has room
        for them on top: a batch larger than ``prefetch`` cannot stall.
        """
        o = self.options
        return o.prefetch + self.concurrency * self.fetch_size + (o.batch_size or 0)

    @property
    def retry(self) -> RetryPolicy:
        o = self.options
        return RetryPolicy(
            retries=o.retries, timeout=o.timeout, backoff=o.backoff, max_backoff=o.max_backoff
        )

    def is_transient(self, exc: BaseException) -> bool:
        """Whether a failed fetch should be retried: ``retry_if``, else the source's view."""
        if self.options.retry_if is not None:
            return bool(self.options.retry_if(exc))
        source_says = getattr(self.source, "is_transient", None)
        if callable(source_says):
            return bool(source_says(exc))
        return default_is_transient(exc)
