"""Every loader option, defined once: name, type, default, validation and a one-line doc.

``Options`` is the single definition. ``AsyncDataset``, ``open_stream`` and the
guide's option table are built from it (``tests/test_options.py`` fails when an
entry point or the guide drifts from it). Validation happens at construction,
so a typo fails on the first line of a training script, not inside a
DataLoader worker an hour later.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypedDict

from ._core.checks import choice, non_negative_int, positive_int
from ._plan.geometry import Boxes, Geometry, check_boxes, check_geometry

__all__ = [
    "BACKENDS",
    "DECODERS",
    "LoaderOptions",
    "Options",
    "check_backend",
    "options_table",
]

BACKENDS = ("asyncio", "trio")
DECODERS = ("auto", "deeplake")


def check_backend(backend: object) -> str:
    """Return ``backend`` if it names a supported AnyIO backend (see :func:`choice`)."""
    return choice("backend", backend, BACKENDS)


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def _callable_or_none(name: str, value: object) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {value!r}")
    return value


def _positive_int_or_none(name: str, value: object) -> int | None:
    return None if value is None else positive_int(name, value)


def _seconds(name: str, value: object, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return float(value)


def _timeout(name: str, value: object) -> float | None:
    return None if value is None else _seconds(name, value, allow_zero=False)


def _columns(name: str, value: object) -> tuple[str, ...] | None:
    # Which names exist is checked against the source in LoaderConfig; here the shape.
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of column names or None, got {value!r}")
    if not all(isinstance(c, str) for c in value):
        raise TypeError(f"{name} must hold column names (str), got {list(value)!r}")
    return tuple(value)


def _decoder(name: str, value: object) -> str:
    return choice(name, value, DECODERS)


def _size_or_none(name: str, value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a (height, width) pair of ints or None, got {value!r}")
    for side in value:
        positive_int(name, side)
    return int(value[0]), int(value[1])


def _option(default: Any, check: Callable[[str, object], Any], kind: str, doc: str) -> Any:
    return field(default=default, metadata={"check": check, "kind": kind, "doc": doc})


@dataclass(frozen=True, kw_only=True)
class Options:
    """The loader's options, validated. Build with :meth:`validate`, never by hand.

    Raises:
        TypeError: an option has the wrong type, or there is no option of that name.
        ValueError: an option has a bad value (the message names it and what is valid).
    """

    columns: tuple[str, ...] | None = _option(
        None, _columns, "list[str] or None", "names to read; None = every column"
    )
    concurrency: int | None = _option(
        None,
        _positive_int_or_none,
        "int >= 1 or None",
        "fetch requests in flight (None: enough for 128 rows, at least 4)",
    )
    prefetch: int = _option(
        64, positive_int, "int >= 1", "rows buffered ahead of the consumer, beyond those in flight"
    )
    fetch_size: int | None = _option(
        None,
        _positive_int_or_none,
        "int >= 1 or None",
        "rows per fetch request (None: about 8 MiB of stored bytes, at most 32 rows)",
    )
    shuffle: bool = _option(False, _bool, "bool", "seeded shuffle, a new order every epoch")
    seed: int = _option(0, non_negative_int, "int >= 0", "the shuffle's seed")
    shuffle_block_size: int | None = _option(
        None,
        _positive_int_or_none,
        "int >= 1 or None",
        "locality-aware shuffle: move blocks of this many consecutive rows (None: single rows)",
    )
    shuffle_window: int = _option(
        4, positive_int, "int >= 1", "with shuffle_block_size: blocks whose rows mix together"
    )
    ordered: bool = _option(
        True, _bool, "bool", "True: plan order, reproducible; False: as fetches complete"
    )
    transform: Callable[[Any], Any] | None = _option(
        None,
        _callable_or_none,
        "callable or None",
        "applied to each sample (each batch in batch mode)",
    )
    return_index: bool = _option(False, _bool, "bool", 'add the global row number under "index"')
    return_epoch: bool = _option(
        False, _bool, "bool", 'add the epoch under "epoch" (e.g. to seed augmentation per epoch)'
    )
    even: bool = _option(
        False, _bool, "bool", "equal row counts on every rank: skip the epoch's last rows"
    )
    retries: int = _option(3, non_negative_int, "int >= 0", "retries of a transient fetch error")
    timeout: float | None = _option(
        None, _timeout, "seconds > 0 or None", "bound on each fetch attempt"
    )
    backoff: float = _option(0.05, _seconds, "seconds >= 0", "first retry's maximum delay")
    max_backoff: float = _option(2.0, _seconds, "seconds >= 0", "cap on any retry's delay")
    retry_if: Callable[[BaseException], bool] | None = _option(
        None,
        _callable_or_none,
        "callable or None",
        "which errors to retry (default: the source's choice)",
    )
    batch_size: int | None = _option(
        None, _positive_int_or_none, "int >= 1 or None", "yield whole batches built with one copy"
    )
    decode: str = _option(
        "auto", _decoder, '"auto" or "deeplake"', "auto: JPEG columns by libjpeg-turbo, same pixels"
    )
    decode_threads: int | None = _option(
        None, _positive_int_or_none, "int >= 1 or None", "decode threads (None: CPUs / workers)"
    )
    image_size: tuple[int, int] | None = _option(
        None, _size_or_none, "(h, w) or None", "decode JPEGs at the smallest DCT scale >= this"
    )
    geometry: Geometry | None = _option(
        None,
        check_geometry,
        "RandomResizedCrop, Resize or None",
        "crop, resize and flip each row's images and masks together, in the decode threads",
    )
    return_geometry: bool = _option(
        False, _bool, "bool", 'add each row\'s placement under "geometry" (8 ints, see the guide)'
    )
    boxes: Sequence[Boxes] = _option(
        (), check_boxes, "[Boxes]", "box columns moved, clipped and filtered with the geometry"
    )

    def __post_init__(self) -> None:
        if self.shuffle_block_size is not None and not self.shuffle:
            raise ValueError(
                f"shuffle_block_size={self.shuffle_block_size!r} shapes a shuffle: it needs "
                "shuffle=True"
            )
        if self.geometry is not None and self.image_size is not None:
            raise ValueError(
                f"image_size={self.image_size!r} and geometry={self.geometry!r}: the geometry "
                "already decodes each image at the smallest scale its crop needs; leave "
                "image_size out"
            )
        if self.geometry is None and (self.boxes or self.return_geometry):
            given = "boxes" if self.boxes else "return_geometry=True"
            raise ValueError(f"{given} needs a geometry= to follow")
        if self.image_size is not None and self.decode != "auto":
            raise ValueError(
                f"image_size={self.image_size!r} needs decode='auto' (deeplake decodes at full "
                f"size), got decode={self.decode!r}"
            )

    @classmethod
    def validate(cls, **given: object) -> Options:
        """Return the options with ``given`` over the defaults, each one checked.

        Raises:
            TypeError: an unknown option name (the message lists the valid ones),
                or a value of the wrong type.
            ValueError: a value out of range.
        """
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; the options are {sorted(known)}")
        checked = {
            name: known[name].metadata["check"](name, value) for name, value in given.items()
        }
        return cls(**checked)


class LoaderOptions(TypedDict, total=False):
    """Keyword options of ``AsyncDataset`` and ``open_stream``: :class:`Options` but ``columns``.

    ``columns`` is positional in ``AsyncDataset``, so it is spelled out in each
    signature; ``tests/test_options.py`` checks that this mirrors ``Options``.
    """

    concurrency: int | None
    prefetch: int
    fetch_size: int | None
    shuffle: bool
    seed: int
    shuffle_block_size: int | None
    shuffle_window: int
    ordered: bool
    transform: Callable[[Any], Any] | None
    return_index: bool
    return_epoch: bool
    even: bool
    retries: int
    timeout: float | None
    backoff: float
    max_backoff: float
    retry_if: Callable[[BaseException], bool] | None
    batch_size: int | None
    decode: str
    decode_threads: int | None
    image_size: tuple[int, int] | None
    geometry: Geometry | None
    return_geometry: bool
    boxes: Sequence[Boxes]


def options_table() -> str:
    """The guide's option table (Markdown), generated from :class:`Options`."""
    lines = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for f in fields(Options):
        assert f.default is not MISSING
        lines.append(
            f"| `{f.name}` | {f.metadata['kind']} | `{f.default!r}` | {f.metadata['doc']} |"
        )
    return "\n".join(lines)
