"""``anyloader profile``: one epoch with given settings, where its time went, and a picture.

The run iterates a torch DataLoader over an ``AsyncDataset`` the way a
training loop would, optionally sleeping ``step_ms`` per batch as a stand-in
for the training step, and times that loop itself (``TrainingClock``, in
``anyloader._stats``): time inside ``next(loader)`` is time training waited for data. The dataset
records a bounded timeline (profile runs only) of requests in flight and of
the loader waiting for the consumer, in DataLoader workers too. The result
prints as a stage breakdown and a verdict (:func:`anyloader._advice.advise`)
and draws as a PNG (:func:`plot_profile`).
"""

from __future__ import annotations

import math
import textwrap
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from ._advice import Setup, Verdict, advise
from ._decode.jpeg import usable_cpus
from ._stats.epoch_stats import BUCKETS, bucket_bounds
from ._stats.timeline import CONSUMER_WAIT, IN_FLIGHT, LOADER_WAIT, Timeline, TimelineData
from ._stats.training_clock import TrainingClock

if TYPE_CHECKING:
    from pathlib import Path

    from ._plan.geometry import Geometry
    from ._stats.epoch_stats import EpochStats

__all__ = ["ProfileResult", "ProfileSettings", "plot_profile", "run_profile"]

T = TypeVar("T")
_clock = time.perf_counter
TIMELINE_BINS = 120  # the figure stays readable; bins widen as the epoch grows


@dataclass(frozen=True)
class ProfileSettings:
    """What ``anyloader profile`` runs: the loader's main options and a simulated step."""

    backend: str = "asyncio"
    concurrency: int | None = None  # None: the loader's choice for the dataset
    fetch_size: int | None = None
    batch_size: int = 32
    batch_mode: bool = True
    workers: int = 0
    decode: str = "auto"
    shuffle: bool = True
    ordered: bool = True
    step_ms: float = 0.0
    columns: tuple[str, ...] | None = None  # None: every column
    #: ``"crop N"`` (a RandomResizedCrop to N x N with a flip) or ``"resize N"`` (to N x N).
    geometry: str | None = None

    def loader_geometry(self) -> Geometry | None:
        """The geometry the settings name, as the loader's option."""
        from ._plan.geometry import RandomResizedCrop, Resize

        if self.geometry is None:
            return None
        kind, side = self.geometry.split()
        if kind == "crop":
            return RandomResizedCrop((int(side), int(side)), scale=(0.25, 1.0), hflip=0.5)
        return Resize((int(side), int(side)))

    def describe(self) -> str:
        mode = "batch mode" if self.batch_mode else "per-sample"
        concurrency = "auto" if self.concurrency is None else self.concurrency
        fetch_size = "auto" if self.fetch_size is None else self.fetch_size
        return (
            f"backend={self.backend} concurrency={concurrency} fetch_size={fetch_size} "
            f"batch_size={self.batch_size} ({mode}) workers={self.workers} decode={self.decode} "
            f"shuffle={self.shuffle} ordered={self.ordered} step={self.step_ms:g} ms"
            + (f" geometry={self.geometry}" if self.geometry else "")
            + (f" columns={','.join(self.columns)}" if self.columns else "")
        )


@dataclass(frozen=True)
class ProfileResult:
    """One profiled epoch: the loader's stats as the training loop saw them, timelines, verdict.

    ``stats`` is the loader's (summed over workers) with the consumer fields
    replaced by the training loop's own timing, and, with workers, the
    training process's CPU time added to theirs; ``loader`` is as recorded.
    """

    settings: ProfileSettings
    url: str
    rows: int
    seconds: float
    startup: float
    stats: EpochStats
    loader: EpochStats
    verdict: Verdict
    timeline: TimelineData | None
    training: TimelineData

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def _rows_in(batch: Any) -> int:
    values = batch.values() if isinstance(batch, dict) else [batch]
    return len(next(iter(values)))


def run_profile(url: str, settings: ProfileSettings, *, progress: bool = True) -> ProfileResult:
    """Run one epoch of ``url`` with ``settings`` through a torch DataLoader and time it.

    Raises:
        TypeError, ValueError: bad settings (from ``AsyncDataset``).
        Exception: the epoch's failure, as the loader raised it.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from ._dataset import AsyncDataset
    from ._stats.worker_channel import SharedStats

    s = settings
    dataset = AsyncDataset(
        url,
        columns=s.columns,
        backend=s.backend,
        concurrency=s.concurrency,
        fetch_size=s.fetch_size,
        batch_size=s.batch_size if s.batch_mode else None,
        decode=s.decode,
        shuffle=s.shuffle,
        ordered=s.ordered,
        geometry=s.loader_geometry(),
    )
    # What the loader chose for this dataset, where the settings left it open.
    s = replace(s, concurrency=dataset.config.concurrency, fetch_size=dataset.config.fetch_size)
    origin = _clock()
    # Profile runs only: the dataset and its workers also record a timeline.
    dataset._stats = SharedStats(timeline_bins=TIMELINE_BINS, origin=origin)
    loader: DataLoader[Any] = DataLoader(
        dataset,
        batch_size=None if s.batch_mode else s.batch_size,
        num_workers=s.workers,
        collate_fn=None if s.batch_mode else dataset.collate,
    )
    training = Timeline(origin, bins=TIMELINE_BINS)
    clock = TrainingClock(training)
    rows = 0
    cpu = time.process_time()
    with tqdm(total=len(dataset), unit="row", disable=not progress, leave=False) as bar:
        for batch in clock(loader):
            n = _rows_in(batch)
            rows += n
            bar.set_postfix_str(f"input-bound {clock.input_bound:.0%}", refresh=False)
            bar.update(n)
            if s.step_ms:
                time.sleep(s.step_ms / 1000)  # the training step this run stands in for
    cpu = time.process_time() - cpu
    measured = dataset.stats()
    stats = clock.applied(measured)
    if s.workers:  # in-process, the loader's CPU time is this process's already
        stats = replace(stats, cpu_seconds=stats.cpu_seconds + cpu)
    setup = Setup(
        concurrency=dataset.config.concurrency,
        fetch_size=dataset.config.fetch_size,
        batch_mode=s.batch_mode,
        workers=s.workers,
        ordered=s.ordered,
        cpus=usable_cpus(),
        torch_threads=torch.get_num_threads(),
    )
    return ProfileResult(
        settings=s,
        url=url,
        rows=rows,
        seconds=clock.seconds,
        startup=clock.startup,
        stats=stats,
        loader=measured,
        verdict=advise(stats, setup, startup=clock.startup),
        timeline=dataset._stats.latest_timeline(),
        training=training.snapshot(clock.ended or _clock()),
    )


def _latency_panel(ax: Any, stats: EpochStats) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    h = stats.fetch_latency
    used = [i for i in range(BUCKETS) if h.counts[i]]
    ax.set_title(f"Fetch latency: {h.count:,} fetches (time from request to rows ready)")
    ax.set_xlabel("fetch latency (ms, log scale)")
    ax.set_ylabel("fetches")
    if not used:
        ax.text(0.5, 0.5, "no fetches", transform=ax.transAxes, ha="center")
        return
    first, last = used[0], used[-1]
    edges = []
    for i in range(first, last + 1):
        low = bucket_bounds(i)[0]
        edges.append(low if low > 0 else bucket_bounds(1)[0] / 2 ** (1 / 8))
    final = bucket_bounds(last)[1]
    edges.append(final if math.isfinite(final) else max(h.max_seconds, edges[-1]) * 1.1)
    ms = [e * 1000 for e in edges]
    ax.stairs(h.counts[first : last + 1], ms, fill=True, color="#4c72b0", alpha=0.75)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain if last - first < 3 * 8 else NullFormatter())
    for q, color in ((50, "#2ca02c"), (95, "#ff7f0e"), (99, "#d62728")):
        value = h.percentile(q) * 1000
        ax.axvline(value, color=color, linestyle="--", label=f"p{q} = {value:.2f} ms")
    ax.legend(loc="upper right")


def _trimmed(data: TimelineData, seconds: float) -> int:
    """Bins that cover the run (the rest is empty future)."""
    return max(1, min(data.bins, math.ceil(seconds / data.width)))


def _filled_steps(
    ax: Any, times: list[float], values: list[float], color: str, alpha: float, label: str
) -> None:
    """A series as a step line over a light fill of the same colour."""
    ax.fill_between(times, values, step="mid", color=color, alpha=alpha)
    ax.step(times, values, where="mid", color=color, label=label)


def plot_profile(result: ProfileResult, path: str | Path) -> None:
    """Draw ``result`` as a PNG: fetch latency histogram, requests in flight, who waited when.

    Raises:
        ImportError: matplotlib is not installed (``pip install matplotlib``).
        OSError: ``path`` cannot be written.
    """
    from matplotlib.figure import Figure

    stats, training = result.stats, result.training
    timeline = result.timeline or TimelineData.empty(training.origin, training.bins, training.width)
    width = max(timeline.width, training.width)
    timeline, training = timeline.coarsened(width), training.coarsened(width)
    n = _trimmed(timeline, result.seconds)
    times = [(i + 0.5) * width for i in range(n)]

    fig = Figure(figsize=(11, 10.5), layout="constrained")
    latency_ax, flight_ax, wait_ax = fig.subplots(3, 1, gridspec_kw={"height_ratios": [1.1, 1, 1]})
    title = textwrap.fill(f"anyloader profile — {result.verdict}", 80)
    fig.suptitle(title, fontsize=14, fontweight="bold")
    url = result.url if len(result.url) <= 60 else "…" + result.url[-59:]
    latency_ax.annotate(
        f"{result.rows:,} rows in {result.seconds:.2f} s = {result.rows_per_second:,.0f} rows/s"
        f"   |   {url}\n{textwrap.fill(result.settings.describe(), 110)}",
        xy=(0.5, 1.0),
        xycoords="axes fraction",
        xytext=(0, 20),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=9,
        color="#333333",
    )
    _latency_panel(latency_ax, stats)

    flight = [timeline.series[IN_FLIGHT][i] / width for i in range(n)]
    _filled_steps(flight_ax, times, flight, "#4c72b0", 0.35, "requests in flight (mean)")
    flight_ax.axhline(
        (result.settings.concurrency or 1) * max(1, result.settings.workers),
        color="gray",
        linestyle=":",
        label="concurrency limit (all workers)",
    )
    flight_ax.set_title("Fetch requests in flight over the epoch")
    flight_ax.set_ylabel("requests in flight")
    flight_ax.set_xlabel("time since start (s)")
    flight_ax.set_ylim(
        0, (result.settings.concurrency or 1) * max(1, result.settings.workers) * 1.3
    )
    flight_ax.legend(loc="upper right")

    parts = max(1, result.settings.workers)
    waiting = [100 * training.series[CONSUMER_WAIT][i] / width for i in range(n)]
    blocked = [100 * timeline.series[LOADER_WAIT][i] / width / parts for i in range(n)]
    label = f"training waiting for data (input-bound {stats.input_bound:.0%} overall)"
    _filled_steps(wait_ax, times, waiting, "#d62728", 0.3, label)
    label = "loader waiting for training (row budget full)"
    _filled_steps(wait_ax, times, blocked, "#7f7f7f", 0.15, label)
    wait_ax.set_title("Who waited for whom")
    wait_ax.set_ylabel("share of time (%)")
    wait_ax.set_xlabel("time since start (s)")
    wait_ax.set_ylim(0, 130)
    wait_ax.set_yticks(range(0, 101, 20))
    wait_ax.legend(loc="upper right")
    for ax in (flight_ax, wait_ax):
        ax.set_xlim(0, n * width)
        ax.grid(alpha=0.3)
    latency_ax.grid(alpha=0.3, which="both", axis="x")
    fig.savefig(path, dpi=100)
