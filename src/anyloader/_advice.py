"""Reading ``EpochStats``: the stage breakdown, and what to change when training waits for data.

Pure functions of an :class:`~anyloader.EpochStats` and the settings it was
measured with, so ``anyloader profile``, ``anyloader demo`` and a test on
constructed stats all get the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._stats.epoch_stats import EpochStats

__all__ = ["Setup", "Verdict", "advise", "breakdown"]

#: Below this share of its time waiting for data, training is not input-bound.
INPUT_BOUND = 0.10
#: Share of the consumer's wait before its first item at which start-up is the problem.
STARTUP = 0.50
#: Failed attempts per fetch above which the store itself is the problem.
FAULTY = 0.05
#: Share of the consumer's wait spent stalled (budget full) at which stragglers are the cause.
STALLED = 0.25
#: Share of the CPUs busy decoding at which decoding is the limit.
DECODE_FULL = 0.60
#: Share of the CPUs busy at all at which the CPUs are the limit.
CPU_FULL = 0.85
#: Mean requests in flight, as a share of ``concurrency``, at which more would help.
SATURATED = 0.70
#: Share of the fetch latency spent waiting for a free decode thread at which decoding is the limit.
QUEUED = 0.50
#: Share of the fetch latency spent on the store (neither decoding nor queued for it) at
#: which raising ``concurrency`` can help.
STORE = 0.50


@dataclass(frozen=True)
class Setup:
    """The settings an epoch ran with, as far as the advice depends on them."""

    concurrency: int = 64
    fetch_size: int = 1
    batch_mode: bool = True
    workers: int = 0
    ordered: bool = True
    cpus: int = 1
    #: torch's intra-op threads (``torch.get_num_threads()``) in the process that collates.
    torch_threads: int = 1


@dataclass(frozen=True)
class Verdict:
    """How input-bound training was, and what to try, most likely first (none if not bound)."""

    input_bound: float
    advice: tuple[str, ...]

    def __str__(self) -> str:
        share = f"input-bound {self.input_bound:.0%}"
        if not self.advice:
            return f"{share}: the loader keeps up, training sets the pace"
        return f"{share}: {' / '.join(self.advice)}"


def advise(stats: EpochStats, setup: Setup, *, startup: float = 0.0) -> Verdict:
    """What to change so that training waits less for data, from one epoch's stats.

    ``startup`` is how long the consumer waited for its first item (workers
    starting, the first fetches). Not input-bound (under :data:`INPUT_BOUND`
    of the time waiting): no advice. Otherwise, each that applies, in this
    order: start-up being most of the wait; a failing store; stragglers
    holding up ordered delivery (the consumer waiting while the row budget
    is full); batch mode when samples go one by one (or one torch thread, when
    torch's collate threads share the process with the decode threads);
    then, if decoding fills the CPUs or fetches mostly wait for a free decode
    thread, decoding less; else if the CPUs are full, less work per row; else
    raising ``concurrency`` when the requests in flight stay near it and
    their latency is the store's own (not decoding, not waiting to decode),
    or more DataLoader workers (the worker's own thread is the limit). The
    thresholds are this module's constants.
    """
    share = stats.input_bound
    if share < INPUT_BOUND:
        return Verdict(share, ())
    advice: list[str] = []
    if startup >= STARTUP * stats.consumer_wait_seconds > 0:
        advice.append(f"longer epochs or persistent_workers=True ({startup:.2f} s to start)")
    attempts = stats.fetches + stats.faults
    if attempts and stats.faults >= FAULTY * attempts:
        advice.append(f"fix the store ({stats.faults} of {attempts} attempts failed)")
    if setup.ordered and stats.stall_seconds >= STALLED * stats.consumer_wait_seconds > 0:
        advice.append("cut stragglers (timeout= or ordered=False)")
    if not setup.batch_mode:
        if setup.workers == 0 and setup.torch_threads > 1:
            # torch's collate stacks on its intra-op threads, which then fight the
            # decode threads for the cores (docs/benchmarks.md: 1.36x with one thread).
            advice.append(
                "use batch mode, or torch.set_num_threads(1) if the model is not on the CPU"
            )
        else:
            advice.append("use batch mode")
    # Durations of merged worker stats are summed: per worker, divide by their number.
    wall = stats.seconds / max(1, stats.workers)
    decoding = stats.decode_seconds / wall if wall > 0 else 0.0
    busy = stats.cpu_seconds / wall if wall > 0 else 0.0
    latency = stats.fetch_latency.total_seconds
    in_flight = latency / stats.seconds if stats.seconds > 0 else 0.0
    # A fetch in flight may be waiting for the store, or for a free decode thread: only
    # the first is helped by more requests in flight.
    queued = stats.decode_wait_seconds >= QUEUED * latency > 0
    store = latency - stats.decode_seconds - stats.decode_wait_seconds >= STORE * latency > 0
    if decoding >= DECODE_FULL * setup.cpus or queued:
        advice.append(
            "decode less: fetches wait for the decode threads (a geometry with a smaller output "
            "decodes JPEGs at a reduced scale; or decode on a GPU)"
        )
    elif busy >= CPU_FULL * setup.cpus:
        advice.append(f"less work per row: the CPUs are full ({busy:.1f} of {setup.cpus} busy)")
    elif in_flight >= SATURATED * setup.concurrency and store:
        advice.append(
            f"raise concurrency ({setup.concurrency} -> {2 * setup.concurrency}): every request "
            "in flight is waiting on the store"
        )
    elif setup.workers < setup.cpus:
        advice.append("more workers")
    if not advice:
        advice.append("no single cause stands out: see the timeline")
    return Verdict(share, tuple(advice))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.0f} s"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def breakdown(stats: EpochStats) -> list[str]:
    """The stats as aligned lines, one per stage: rows, fetch, decode, cpu, faults, waits."""
    h = stats.fetch_latency
    parts = f" (sum over {stats.workers} workers)" if stats.workers > 1 else ""
    per_fetch = stats.rows / stats.fetches if stats.fetches else 0.0
    in_flight = h.total_seconds / stats.seconds if stats.seconds > 0 else 0.0
    each = f"{per_fetch:.3g} row{'' if per_fetch == 1 else 's'} each"
    lines = [
        f"rows     {stats.rows:,} in {stats.fetches:,} fetches ({each}), "
        f"{_mib(stats.bytes)} fetched (decoded){parts}",
        f"fetch    latency p50 {_ms(stats.fetch_p50)}, p95 {_ms(stats.fetch_p95)}, "
        f"p99 {_ms(stats.fetch_p99)}, max {_ms(h.max_seconds)}; "
        f"{in_flight:.1f} in flight on average",
    ]
    if stats.decoded_rows:
        each = _ms(stats.decode_seconds / stats.decoded_rows)
        lines.append(
            f"decode   {stats.decoded_rows:,} rows, {each} each "
            f"({stats.decode_seconds:.2f} s in decode threads)"
        )
    else:
        lines.append("decode   none by anyloader (no JPEG columns, or decode='deeplake')")
    wall = stats.seconds / max(1, stats.workers)
    busy = stats.cpu_seconds / wall if wall > 0 else 0.0
    lines += [
        f"cpu      {stats.cpu_seconds:.2f} s, {busy:.1f} cores busy on average",
        f"faults   {stats.faults} failed attempts, {stats.retries} retries, "
        f"{stats.timeouts} timeouts",
        f"consumer waited {stats.consumer_wait_seconds:.2f} s of {stats.consumer_seconds:.2f} s "
        f"for data (input-bound {stats.input_bound:.0%}); stalled {stats.stall_seconds:.2f} s "
        "of it (budget full)",
        f"loader   waited {stats.loader_wait_seconds:.2f} s of {stats.seconds:.2f} s for the "
        f"consumer ({stats.loader_bound:.0%}): its row budget was full",
    ]
    return lines
