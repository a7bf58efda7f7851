"""Validated loader settings, shared by ``open_stream`` and ``AsyncDataset``.

Every check happens here, at construction, so a typo fails on the first line
of a training script and not inside a DataLoader worker an hour later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from ._retry import RetryPolicy, default_is_transient
from ._source import Source

__all__ = [
    "BACKENDS",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_FETCH_SIZE",
    "DEFAULT_PREFETCH",
    "LoaderConfig",
    "LoaderOptions",
    "as_source",
    "check_backend",
    "non_negative_int",
    "positive_int",
]

BACKENDS = ("asyncio", "trio")
DEFAULT_CONCURRENCY = 64
DEFAULT_FETCH_SIZE = 1
DEFAULT_PREFETCH = 64


def check_backend(backend: object) -> str:
    """Return ``backend`` if it names a supported AnyIO backend.

    Raises:
        TypeError: if ``backend`` is not a string.
        ValueError: naming the bad value and the valid choices.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return str(backend)


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a non-negative int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value}")
    return value


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def as_source(source: object) -> Source:
    """Return ``source`` as a ``Source``: deeplake datasets and URLs are wrapped.

    Raises:
        TypeError: if ``source`` is none of the accepted kinds.
        ValueError: if a URL cannot be opened.
    """
    if isinstance(source, Source):
        return source
    from ._deeplake_source import _DATASET_TYPES, DeeplakeSource

    if isinstance(source, (str, *_DATASET_TYPES)):
        return DeeplakeSource(source)
    raise TypeError(
        "source must be a deeplake Dataset/ReadOnlyDataset/DatasetView, a dataset URL "
        f"string, or an anyloader.Source; got {type(source).__name__}"
    )


def _columns(
    requested: Sequence[str] | None, available: Sequence[str], return_index: bool
) -> tuple[str, ...]:
    if requested is None:
        chosen = tuple(available)
    else:
        if isinstance(requested, str) or not isinstance(requested, Sequence):
            raise TypeError(f"columns must be a sequence of column names, got {requested!r}")
        chosen = tuple(requested)
        unknown = [c for c in chosen if c not in available]
        if unknown:
            raise ValueError(f"unknown column(s) {unknown}; the source has {list(available)}")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"columns lists a name twice: {list(chosen)}")
    if not chosen:
        raise ValueError(f"no columns selected; the source has {list(available)}")
    if return_index and "index" in chosen:
        raise ValueError('return_index=True would overwrite the column named "index"')
    return chosen


class LoaderOptions(TypedDict, total=False):
    """The keyword arguments every entry point accepts; defaults in :meth:`LoaderConfig.build`."""

    columns: Sequence[str] | None
    concurrency: int
    prefetch: int
    fetch_size: int
    shuffle: bool
    seed: int
    ordered: bool
    transform: Callable[[dict[str, Any]], Any] | None
    return_index: bool
    even: bool
    retries: int
    timeout: float | None
    backoff: float
    max_backoff: float
    retry_if: Callable[[BaseException], bool] | None


@dataclass(frozen=True)
class LoaderConfig:
    """Everything that decides what an epoch yields and how it is fetched.

    Raises:
        TypeError: a setting has the wrong type (the message names it).
        ValueError: a setting has a bad value (the message names it and the valid range).
    """

    source: Source
    columns: tuple[str, ...]
    concurrency: int = DEFAULT_CONCURRENCY
    prefetch: int = DEFAULT_PREFETCH
    fetch_size: int = DEFAULT_FETCH_SIZE
    shuffle: bool = False
    seed: int = 0
    ordered: bool = True
    transform: Callable[[dict[str, Any]], Any] | None = None
    return_index: bool = False
    even: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_if: Callable[[BaseException], bool] | None = None
    batch_size: int | None = None

    @classmethod
    def build(
        cls,
        source: object,
        *,
        columns: Sequence[str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        prefetch: int = DEFAULT_PREFETCH,
        fetch_size: int = DEFAULT_FETCH_SIZE,
        shuffle: bool = False,
        seed: int = 0,
        ordered: bool = True,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        return_index: bool = False,
        even: bool = False,
        retries: int = 3,
        timeout: float | None = None,
        backoff: float = 0.05,
        max_backoff: float = 2.0,
        retry_if: Callable[[BaseException], bool] | None = None,
        batch_size: int | None = None,
    ) -> LoaderConfig:
        """Validate user arguments and wrap the source."""
        src = as_source(source)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {transform!r}")
        if retry_if is not None and not callable(retry_if):
            raise TypeError(f"retry_if must be callable or None, got {retry_if!r}")
        return_index = _bool("return_index", return_index)
        return cls(
            source=src,
            columns=_columns(columns, src.columns, return_index),
            concurrency=positive_int("concurrency", concurrency),
            prefetch=positive_int("prefetch", prefetch),
            fetch_size=positive_int("fetch_size", fetch_size),
            shuffle=_bool("shuffle", shuffle),
            seed=non_negative_int("seed", seed),
            ordered=_bool("ordered", ordered),
            transform=transform,
            return_index=return_index,
            even=_bool("even", even),
            retry=RetryPolicy(
                retries=retries, timeout=timeout, backoff=backoff, max_backoff=max_backoff
            ),
            retry_if=retry_if,
            batch_size=None if batch_size is None else positive_int("batch_size", batch_size),
        )

    @property
    def budget(self) -> int:
        """Most rows fetched but not yet consumed at any moment.

        With ``batch_size`` the rows of the batch being assembled count too
        (they are not consumed until their batch is), so the budget has room
        for them on top: a batch larger than ``prefetch`` cannot stall.
        """
        return self.prefetch + self.concurrency * self.fetch_size + (self.batch_size or 0)

    def is_transient(self, exc: BaseException) -> bool:
        """Whether a failed fetch should be retried: ``retry_if``, else the source's view."""
        if self.retry_if is not None:
            return bool(self.retry_if(exc))
        source_says = getattr(self.source, "is_transient", None)
        if callable(source_says):
            return bool(source_says(exc))
        return default_is_transient(exc)
