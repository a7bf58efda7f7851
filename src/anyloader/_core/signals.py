"""Threads of ours leave signals to the main thread; waits of ours wake up for them.

CPython runs a Python signal handler (``KeyboardInterrupt`` for Ctrl-C) only
in the main thread, at its next bytecode boundary. The kernel delivers a
process-directed signal to any thread that does not block it, and a main
thread asleep in an untimed lock wait is not woken when the C-level handler ran
on another thread, or just before the wait began: measured as one hang in
20-60 interrupts beside two busy loops. So:

* every thread anyloader starts (the epoch's loop thread, its decode threads)
  is created with the asynchronous signals blocked (:func:`signals_blocked`
  around the start: a new thread inherits its creator's mask, so there is no
  moment at which it could take one), which leaves them to the main thread;
* every blocking wait of ours in the training thread waits in slices of
  :data:`SLICE` seconds (:func:`join`), so a signal whose handler ran
  elsewhere is acted on within a slice.

Threads we do not start (deeplake's, torch's) may still take a signal: the
slices are what makes that safe.
"""

from __future__ import annotations

import contextlib
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading
    from collections.abc import Iterator

__all__ = ["ASYNC_SIGNALS", "SLICE", "join", "signals_blocked"]

#: Longest time a wait of ours in the training thread sleeps without checking for signals.
SLICE = 0.1

# Signals raised by the faulting thread itself (blocking them is undefined) and
# those no thread can block stay as they are; the rest arrive "from outside".
_SYNCHRONOUS = {
    "SIGKILL",
    "SIGSTOP",
    "SIGSEGV",
    "SIGBUS",
    "SIGFPE",
    "SIGILL",
    "SIGTRAP",
    "SIGSYS",
    "SIGABRT",
}
#: The signals threads of ours block: every valid one but the synchronous ones.
ASYNC_SIGNALS: frozenset[signal.Signals] = frozenset(
    s
    for s in (signal.valid_signals() if hasattr(signal, "pthread_sigmask") else ())
    if isinstance(s, signal.Signals) and s.name not in _SYNCHRONOUS
)


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Block :data:`ASYNC_SIGNALS` in the calling thread for the body; restore the mask after.

    Threads started in the body inherit the blocked mask. A signal arriving
    meanwhile stays pending and is delivered when the body ends: none is lost.
    A no-op where there are no POSIX signal masks.
    """
    if not ASYNC_SIGNALS:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, ASYNC_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def join(thread: threading.Thread) -> None:
    """``thread.join()`` in slices, so the calling thread acts on a signal within one."""
    while thread.is_alive():
        thread.join(SLICE)
