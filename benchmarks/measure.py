"""Resource accounting for one benchmark run: CPU time and peak memory.

CPU time counts this process and every child it waited for (DataLoader
workers are joined when their iterator is closed), plus children still alive
when the run ends. Peak RSS is sampled: the largest sum of the RSS of this
process and all its live descendants seen by a sampler thread. RSS counts
pages shared between forked workers once per process, so it overstates the
true footprint of multi-worker loaders; it is what the OS would report and
the same rule is applied to every loader.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import psutil

__all__ = ["Monitor", "Usage"]

_SAMPLE_INTERVAL_S = 0.02


@dataclass(frozen=True)
class Usage:
    """What a run cost: CPU seconds (all processes) and peak resident memory."""

    cpu_s: float
    peak_rss_bytes: int


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in proc.children(recursive=True):
        try:
            live = child.cpu_times()
        except psutil.Error:  # exited between listing and asking: counted once reaped
            continue
        total += live.user + live.system
    return float(total)


def _tree_rss(proc: psutil.Process) -> int:
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue
    return int(total)


class Monitor:
    """Context manager measuring CPU time and sampling peak RSS of the process tree.

    Guarantee: after ``__exit__`` the sampler thread has stopped and
    :attr:`usage` holds the totals for the time between enter and exit.
    """

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._peak = 0
        self._cpu0 = 0.0
        self.usage: Usage | None = None
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        # Event.wait doubles as the sampling clock and the stop signal.
        while True:
            with contextlib.suppress(psutil.Error):
                self._peak = max(self._peak, _tree_rss(self._proc))
            if self._stop.wait(_SAMPLE_INTERVAL_S):
                return

    def __enter__(self) -> Monitor:
        self._cpu0 = _cpu_seconds(self._proc)
        self._peak = _tree_rss(self._proc)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _tree_rss(self._proc))
        self.usage = Usage(_cpu_seconds(self._proc) - self._cpu0, self._peak)
