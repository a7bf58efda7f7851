"""``FaultySource``: a ``Source`` wrapper that injects seeded faults, for tests and soaks.

Real stores fail in three ways that matter to a loader: a request fails and a
retry cures it (a reset connection, a 500), a request is slow (a straggler),
or the store goes away for good. ``FaultySource`` reproduces all three over
any other source, deterministically, so a test can prove the loader survives
them and a benchmark can measure what they cost.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import anyio

from .._batch.columns import describe
from .source import Source, default_is_transient

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .._batch.columns import ColumnInfo
    from .source import Columns

__all__ = ["FaultStats", "FaultySource", "PermanentFault"]

# Marks the exceptions FaultySource raised, so is_transient can classify them
# whatever type the user chose for them.
_MARK = "_anyloader_fault"


class PermanentFault(RuntimeError):
    """The default error a :class:`FaultySource` raises once ``fail_after`` calls are used up."""


@dataclass
class FaultStats:
    """What a :class:`FaultySource` has done so far (in this process).

    ``calls - distinct groups fetched`` is the number of retries the loader took.
    """

    calls: int = 0
    transient: int = 0
    hangs: int = 0
    permanent: int = 0

    @property
    def injected(self) -> int:
        """Faults injected: transient errors, hangs and permanent failures together."""
        return self.transient + self.hangs + self.permanent


def _exception_type(name: str, value: object) -> type[Exception]:
    if not (isinstance(value, type) and issubclass(value, Exception)):
        raise TypeError(f"{name} must be an Exception subclass, got {value!r}")
    return value


def _rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


class FaultySource:
    """Wrap ``source`` so that its fetches fail, straggle or die, reproducibly.

    Each call to :meth:`fetch` is one *attempt* at a group of rows. Its fate is
    drawn from a generator seeded by ``(seed, indices, attempt)``, where
    ``attempt`` counts earlier calls with the same ``indices`` on this object:

    * with probability ``transient_rate`` it raises ``error`` (default
      ``ConnectionError``) without touching ``source``; :meth:`is_transient`
      says such errors are transient, so the loader retries them;
    * otherwise, with probability ``hang_rate``, it sleeps ``hang_seconds``
      (``math.inf``: until cancelled) and then fetches normally, a straggler;
      a loader ``timeout`` shorter than that turns it into a retried
      ``TimeoutError``;
    * otherwise it returns ``source.fetch(indices, columns)`` unchanged.

    Once ``fail_after`` calls have been made (counting all calls), every
    further call raises ``permanent_error`` (default :class:`PermanentFault`),
    which :meth:`is_transient` reports as not transient.

    Guarantees:
        * Deterministic: for a given ``seed``, whether attempt ``n`` at a
          group of rows fails or hangs does not depend on task interleaving,
          concurrency, backend or process, as long as each group is fetched
          by one task at a time (the loader's retries are sequential). Only
          *which* call hits ``fail_after`` depends on timing.
        * Values are never altered: a fetch that does not fail returns exactly
          what ``source`` returned.
        * ``columns`` and ``len()`` are those of ``source``; :meth:`is_transient`
          forwards to ``source.is_transient`` (or the loader's default) for
          errors it did not inject.
        * Picklable when ``source`` is (DataLoader workers get a copy, with the
          attempt counters and :attr:`stats` as they were at pickling time).

    Raises:
        TypeError: ``source`` is not a ``Source``, or a setting has the wrong type.
        ValueError: a rate outside ``[0, 1]``, a negative ``hang_seconds`` or
            ``fail_after``.
    """

    #: The default ``permanent_error``, reachable as ``anyloader.FaultySource.PermanentFault``.
    PermanentFault = PermanentFault

    def __init__(
        self,
        source: Source,
        *,
        seed: int = 0,
        transient_rate: float = 0.0,
        hang_rate: float = 0.0,
        hang_seconds: float = 1.0,
        fail_after: int | None = None,
        error: type[Exception] = ConnectionError,
        permanent_error: type[Exception] = PermanentFault,
    ) -> None:
        if not isinstance(source, Source):
            raise TypeError(f"source must be an anyloader.Source, got {type(source).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if isinstance(hang_seconds, bool) or not isinstance(hang_seconds, (int, float)):
            raise TypeError(f"hang_seconds must be a number, got {hang_seconds!r}")
        if math.isnan(hang_seconds) or hang_seconds < 0:
            raise ValueError(f"hang_seconds must be >= 0 (math.inf: forever), got {hang_seconds}")
        if fail_after is not None:
            if isinstance(fail_after, bool) or not isinstance(fail_after, int):
                raise TypeError(f"fail_after must be an int or None, got {fail_after!r}")
            if fail_after < 0:
                raise ValueError(f"fail_after must be >= 0, got {fail_after}")
        self.source = source
        self.seed = seed
        self.transient_rate = _rate("transient_rate", transient_rate)
        self.hang_rate = _rate("hang_rate", hang_rate)
        self.hang_seconds = float(hang_seconds)
        self.fail_after = fail_after
        self.error = _exception_type("error", error)
        self.permanent_error = _exception_type("permanent_error", permanent_error)
        self.stats = FaultStats()
        self._attempts: dict[tuple[int, ...], int] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"FaultySource({self.source!r}, seed={self.seed}, "
            f"transient_rate={self.transient_rate}, hang_rate={self.hang_rate}, "
            f"hang_seconds={self.hang_seconds}, fail_after={self.fail_after})"
        )

    @property
    def columns(self) -> Sequence[str]:
        return self.source.columns

    def column_info(self) -> Mapping[str, ColumnInfo]:
        """The wrapped source's description of its columns."""
        return describe(self.source, self.source.columns)

    def row_bytes(self, columns: Sequence[str]) -> float | None:
        """The wrapped source's size of a row (None if it says nothing)."""
        size = getattr(self.source, "row_bytes", None)
        return size(columns) if callable(size) else None

    def __len__(self) -> int:
        return len(self.source)

    def is_transient(self, exc: BaseException) -> bool:
        """Injected transient errors: yes; injected permanent ones: no; others: ask ``source``."""
        mark = getattr(exc, _MARK, None)
        if mark is not None:
            return bool(mark == "transient")
        inner = getattr(self.source, "is_transient", None)
        if callable(inner):
            return bool(inner(exc))
        return default_is_transient(exc)

    def fate(self, indices: Sequence[int], attempt: int) -> str:
        """The fate of attempt ``attempt`` (0-based) at ``indices``: "ok", "transient" or "hang".

        A pure function of ``(seed, indices, attempt)`` and the rates.
        """
        rows = ",".join(str(int(i)) for i in indices)
        # Seeding with a str hashes it with SHA-512: stable across processes,
        # unlike hash(), which PYTHONHASHSEED randomises.
        rng = random.Random(f"anyloader.faults:{self.seed}:{attempt}:{rows}")
        if rng.random() < self.transient_rate:
            return "transient"
        if rng.random() < self.hang_rate:
            return "hang"
        return "ok"

    def _raise(self, kind: str, make: type[Exception], message: str) -> NoReturn:
        exc = make(message)
        setattr(exc, _MARK, kind)
        raise exc

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        """Fetch ``indices`` from ``source``, unless this attempt's fate is a fault.

        Raises:
            Exception: ``error`` (transient fault), ``permanent_error`` (after
                ``fail_after`` calls), or whatever ``source.fetch`` raises.
        """
        key = tuple(int(i) for i in indices)
        with self._lock:
            calls = self.stats.calls
            self.stats.calls += 1
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
            if self.fail_after is not None and calls >= self.fail_after:
                self.stats.permanent += 1
                kind = "permanent"
            else:
                kind = self.fate(key, attempt)
                if kind == "transient":
                    self.stats.transient += 1
                elif kind == "hang":
                    self.stats.hangs += 1
        await anyio.lowlevel.checkpoint()
        if kind == "permanent":
            self._raise(
                kind,
                self.permanent_error,
                f"injected permanent failure: call {calls + 1} > fail_after={self.fail_after}",
            )
        if kind == "transient":
            self._raise(kind, self.error, f"injected transient fault (attempt {attempt + 1})")
        if kind == "hang":
            if math.isinf(self.hang_seconds):
                await anyio.sleep_forever()
            await anyio.sleep(self.hang_seconds)  # sync-ok: the injected straggler
        return await self.source.fetch(indices, columns)
