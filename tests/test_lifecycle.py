"""Leaving an epoch early, by any door, stops everything and leaks nothing."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from _doubles import CountingSource, FakeFuture, rows_source
from torch.utils.data import DataLoader

from anyloader import AsyncDataset, wait_future
from anyloader._sources.source import Columns


def new_threads(baseline: set[int]) -> list[str]:
    return [t.name for t in threading.enumerate() if t.ident not in baseline]


def warm_up(backend: str) -> None:
    # The first epoch may start long-lived threads of deeplake, torch or the
    # backend itself; the baseline is taken after it, so only ours count.
    list(AsyncDataset(rows_source(4), backend=backend))


@pytest.fixture
def baseline(backend: str) -> set[int]:
    warm_up(backend)
    return {t.ident for t in threading.enumerate() if t.ident is not None}


def test_break_stops_a_slow_epoch_promptly(backend: str, baseline: set[int]) -> None:
    source = CountingSource(10_000, slow_from=16)
    ds = AsyncDataset(source, backend=backend, fetch_size=4, concurrency=8)
    it = iter(ds)
    assert [next(it)["row"] for _ in range(16)] == list(range(16))
    assert new_threads(baseline), "the epoch runs in a thread of its own"
    started = time.perf_counter()
    it.close()  # what `break` does to the loop's iterator
    assert time.perf_counter() - started < 1.0
    assert new_threads(baseline) == []


def test_exception_in_the_training_loop_stops_everything(backend: str, baseline: set[int]) -> None:
    ds = AsyncDataset(CountingSource(10_000, slow_from=8), backend=backend)
    raised_at: list[float] = []

    def train() -> None:
        for sample in ds:
            if sample["row"] == 5:
                raised_at.append(time.perf_counter())
                raise ZeroDivisionError("loss is nan")

    with pytest.raises(ZeroDivisionError, match="loss is nan"):
        train()
    assert time.perf_counter() - raised_at[0] < 1.0
    assert new_threads(baseline) == []


def test_dropping_the_iterator_stops_everything(backend: str, baseline: set[int]) -> None:
    source = CountingSource(10_000, slow_from=8)
    it = iter(AsyncDataset(source, backend=backend))
    next(it)
    del it  # by reference count
    assert new_threads(baseline) == []
    assert source.started == source.finished + source.cancelled


def test_an_iterator_in_a_reference_cycle_is_stopped_by_the_collector(
    backend: str, baseline: set[int]
) -> None:
    source = CountingSource(10_000, slow_from=8)
    gc.disable()
    try:
        it = iter(AsyncDataset(source, backend=backend))
        next(it)
        cycle: list[Any] = [it]
        cycle.append(cycle)
        del it, cycle
        assert new_threads(baseline), "only a cycle keeps the epoch alive now"
        gc.collect()
    finally:
        gc.enable()
    assert new_threads(baseline) == []
    assert source.started == source.finished + source.cancelled


def test_a_finished_epoch_leaves_nothing_running(pairs_url: str, backend: str) -> None:
    ds = AsyncDataset(pairs_url, backend=backend)
    list(ds)  # deeplake's own pool starts on first use; not ours to stop
    baseline = {t.ident for t in threading.enumerate()}
    assert len(list(ds)) == 97
    assert new_threads(baseline) == []


def test_break_out_of_a_dataloader_with_workers(pairs_url: str, backend: str) -> None:
    ds = AsyncDataset(pairs_url, columns=["masks"], backend=backend, return_index=True)
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    for i, _ in enumerate(loader):
        if i == 2:
            break
    # The workers got the shutdown signal; the next epoch is whole, each row once.
    rows = [i for b in loader for i in b["index"].tolist()]
    assert sorted(rows) == list(range(97))


class StalledFutureSource:
    """Every fetch waits on a future that completes only after ``stall`` seconds."""

    def __init__(self, stall: float) -> None:
        self.stall = stall
        self._inner = rows_source(64)

    @property
    def columns(self) -> tuple[str, ...]:
        return self._inner.columns

    def __len__(self) -> int:
        return 64

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        await wait_future(FakeFuture(done_at=time.monotonic() + self.stall))
        return await self._inner.fetch(indices, columns)


def test_waiting_on_a_slow_store_costs_almost_no_cpu(backend: str) -> None:
    it = iter(AsyncDataset(StalledFutureSource(stall=1.0), backend=backend, concurrency=4))
    wall, cpu = time.perf_counter(), time.process_time()
    first = next(it)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    it.close()
    assert first["row"] == 0
    assert wall >= 0.9
    # A busy-waiting consumer or poller would burn a whole core: cpu ~ wall.
    assert cpu < 0.15 * wall, f"{cpu:.3f} s of CPU in {wall:.3f} s of waiting"


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import signal, sys, threading
    # A parent that ignores SIGINT (a background job of a non-interactive shell,
    # a CI runner) passes that on: Ctrl-C means KeyboardInterrupt here again.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {tests!r})
    from _doubles import CountingSource
    from anyloader import AsyncDataset

    ds = AsyncDataset(CountingSource(10_000, slow_from=8), backend={backend!r})
    try:
        for sample in ds:
            if sample["row"] == 7:
                print("ready", flush=True)
    except KeyboardInterrupt:
        alive = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        print("interrupted", alive, flush=True)
    """
)


# exec keeps an ignored disposition: the script starts as a child of an ignoring parent would.
IGNORING_PARENT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


@pytest.mark.slow
@pytest.mark.parametrize("parent_ignores_sigint", [False, True])
def test_ctrl_c_stops_the_epoch_and_the_process_exits_cleanly(
    backend: str, parent_ignores_sigint: bool, tmp_path: Path
) -> None:
    script = tmp_path / "ctrl_c.py"
    tests = str(Path(__file__).parent)
    script.write_text(CTRL_C_SCRIPT.format(tests=tests, backend=backend))
    launcher = (
        [sys.executable, "-c", IGNORING_PARENT] if parent_ignores_sigint else [sys.executable]
    )
    proc = subprocess.Popen(
        [*launcher, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        sent = time.perf_counter()
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:  # a failure must not leave the child running into later tests
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert time.perf_counter() - sent < 5.0
    line = out.strip().splitlines()[-1]
    assert line.startswith("interrupted")
    assert "anyloader" not in line, f"a loop thread survived: {line}"


def test_iterating_twice_at_once_gives_two_independent_epochs(backend: str) -> None:
    ds = AsyncDataset(rows_source(50), backend=backend, fetch_size=3)
    a, b = iter(ds), iter(ds)
    rows: dict[str, list[Any]] = {"a": [], "b": []}
    for x, y in zip(a, b, strict=True):
        rows["a"].append(x["row"])
        rows["b"].append(y["row"])
    assert rows["a"] == rows["b"] == list(range(50))
