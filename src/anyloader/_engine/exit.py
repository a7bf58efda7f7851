"""Close the epochs still open when the interpreter exits, while their loop threads run.

Left to final garbage collection, closing an open iterator waits on a loop
thread the interpreter has already frozen (trio) or aborts the process
(asyncio): see tests/engine/test_exit.py. ``atexit`` hooks run after non-daemon
threads are joined and before that, so the loop threads are daemons and this
hook closes what is still open. A forked child has copies of the iterators but
not their threads; closing them there does nothing (``LoopThread.close``).
"""

from __future__ import annotations

import atexit
import contextlib
import weakref
from typing import Protocol

__all__ = ["close_at_exit"]


class _Closable(Protocol):
    def close(self) -> None: ...


_open: weakref.WeakSet[_Closable] = weakref.WeakSet()


def close_at_exit(iterator: _Closable) -> None:
    """Close ``iterator`` at interpreter exit if it is still alive then."""
    _open.add(iterator)


@atexit.register
def _close_open_iterators() -> None:
    for iterator in list(_open):
        with contextlib.suppress(Exception):
            iterator.close()
