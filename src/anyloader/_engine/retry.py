"""Retries with exponential back-off and full jitter, and a per-attempt timeout."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import anyio

if TYPE_CHECKING:
    import random
    from collections.abc import Awaitable, Callable, Iterable

__all__ = ["RetryPolicy", "retrying"]

T = TypeVar("T")
_PREFIX = "anyloader: "


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed fetch is retried.

    An attempt that raises an error ``is_transient`` accepts is tried again,
    up to ``retries`` more times, after a random delay in
    ``[0, min(max_backoff, backoff * 2**attempt)]`` (full jitter spreads a
    thundering herd). ``timeout`` bounds each attempt; a timed-out attempt
    raises ``TimeoutError``, which is transient by default.

    Raises:
        TypeError, ValueError: at construction, for a negative, NaN or non-numeric setting.
    """

    retries: int = 3
    timeout: float | None = None
    backoff: float = 0.05
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int):
            raise TypeError(f"retries must be an int, got {self.retries!r}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        for name in ("timeout", "backoff", "max_backoff"):
            value = getattr(self, name)
            if value is None and name == "timeout":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if math.isnan(value) or value < 0 or (name == "timeout" and value == 0):
                raise ValueError(f"{name} must be positive, got {value}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Back-off before retry number ``attempt`` (0-based): full jitter, capped.

        Guarantee: in ``[0, min(max_backoff, backoff * 2**attempt)]`` for any
        ``attempt`` (no overflow for huge retry counts).
        """
        # 2.0**1024 overflows; 2**64 times any sane backoff is past any cap.
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** min(attempt, 64))
        return rng.uniform(0.0, ceiling)


def _describe(rows: Iterable[int], tries: int, why: str) -> str:
    named: list[object] = [int(r) for r in rows]
    shown = named if len(named) <= 16 else [*named[:16], "...", f"({len(named)} rows)"]
    return (
        f"{_PREFIX}fetching rows {shown} failed after {tries} "
        f"attempt{'s' if tries > 1 else ''} ({why})"
    )


def _note(exc: BaseException, note: str) -> None:
    """Attach ``note``, replacing ours from an earlier failure of the same exception object.

    A source may raise one stored exception object again and again (every
    epoch, say); it must not collect one more note each time.
    """
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        notes[:] = [n for n in notes if not (isinstance(n, str) and n.startswith(_PREFIX))]
    if hasattr(exc, "add_note"):  # Python >= 3.11
        exc.add_note(note)


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    rng: random.Random,
    *,
    rows: Iterable[int] = (),
    on_fault: Callable[..., object] | None = None,
) -> T:
    """Run ``attempt`` until it succeeds, a non-transient error occurs, or retries run out.

    Each attempt is bounded by ``policy.timeout`` (``TimeoutError`` when it
    runs out). Between attempts it sleeps ``policy.delay(n, rng)``.

    Guarantee: the final error is raised as itself (same type, same object,
    its traceback), with a note naming the ``rows`` being fetched, how many
    attempts were made and why it gave up (retries exhausted, or an error
    that is not transient). Cancellation is never retried or delayed.
    ``on_fault(exc, retried=..., timed_out=...)`` hears of every failed
    attempt: whether it will be tried again, and whether ``policy.timeout``
    cut it.

    Raises:
        Exception: the last error of ``attempt``.
    """
    tries = 0
    while True:
        tries += 1
        scope: anyio.CancelScope | None = None
        try:
            if policy.timeout is None:
                return await attempt()
            with anyio.fail_after(policy.timeout) as scope:
                return await attempt()
        except Exception as exc:
            transient = is_transient(exc)
            retried = transient and tries <= policy.retries
            if on_fault is not None:
                timed_out = scope is not None and scope.cancelled_caught
                on_fault(exc, retried=retried, timed_out=timed_out)
            if not retried:
                if transient:
                    why = f"retries exhausted: retries={policy.retries}"
                else:
                    why = f"{type(exc).__name__} is not transient, not retried"
                if isinstance(exc, TimeoutError) and policy.timeout is not None:
                    why += f"; each attempt timed out after {policy.timeout} s"
                _note(exc, _describe(rows, tries, why))
                raise
        await anyio.sleep(policy.delay(tries - 1, rng))
