"""One test per defect the outside review found (issue 8): each failed before its fix."""

from __future__ import annotations

import asyncio
import gc
import json
import pickle
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import torch
from _doubles import FakeFuture, JitterSource, rows_source
from torchdata.stateful_dataloader import StatefulDataLoader

from anyloader import AsyncDataset, MemorySource, open_stream, wait_future
from anyloader._sources.source import Columns

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup


def xs(n: int = 40) -> MemorySource:
    return MemorySource({"x": np.arange(n)})


def rows(items: Any) -> list[int]:
    return [int(s["x"]) for s in items]


class XSource:
    """Column ``x`` holding the row number; subclasses decide how ``fetch`` misbehaves."""

    def __init__(self, n: int) -> None:
        self._inner = xs(n)

    @property
    def columns(self) -> tuple[str, ...]:
        return ("x",)

    def __len__(self) -> int:
        return len(self._inner)


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "anyloader"]


# 1. A checkpoint taken after set_epoch, or right after iter(), lost a whole epoch.


def test_1_checkpoint_after_set_epoch_resumes_the_whole_new_epoch(backend: str) -> None:
    ds = AsyncDataset(xs(), backend=backend, shuffle=True, seed=1)
    assert sorted(rows(ds)) == list(range(40))
    ds.set_epoch(1)
    state = ds.state_dict()
    assert (state["epoch"], state["position"]) == (1, 0)
    fresh = AsyncDataset(xs(), backend=backend, shuffle=True, seed=1)
    fresh.load_state_dict(state)
    expected = AsyncDataset(xs(), backend=backend, shuffle=True, seed=1)
    expected.set_epoch(1)
    assert rows(fresh) == rows(expected)


def test_1_checkpoint_before_the_first_sample_resumes_the_whole_epoch(backend: str) -> None:
    ds = AsyncDataset(xs(), backend=backend, shuffle=True, seed=1)
    list(ds)
    it = iter(ds)  # epoch 1 has started, nothing delivered
    state = ds.state_dict()
    it.close()
    assert (state["epoch"], state["position"]) == (1, 0)
    fresh = AsyncDataset(xs(), backend=backend, shuffle=True, seed=1)
    fresh.load_state_dict(state)
    assert sorted(rows(fresh)) == list(range(40))


def test_1_stateful_dataloader_preempted_right_after_iter(backend: str) -> None:
    ds = AsyncDataset(xs(), backend=backend, shuffle=True, seed=1)
    loader = StatefulDataLoader(ds, batch_size=4, num_workers=0)
    list(loader)
    iter(loader)
    state = loader.state_dict()
    resumed = StatefulDataLoader(
        AsyncDataset(xs(), backend=backend, shuffle=True, seed=1), batch_size=4
    )
    resumed.load_state_dict(state)
    got = [int(x) for b in resumed for x in b["x"]]
    assert sorted(got) == list(range(40))


# 3. Unordered resume duplicated and lost rows.


def test_3_unordered_resume_is_exact(backend: str) -> None:
    def make() -> AsyncDataset:
        return AsyncDataset(
            JitterSource(200), columns=["row"], backend=backend, ordered=False, concurrency=16
        )

    ds = make()
    it = iter(ds)
    before = [int(next(it)["row"]) for _ in range(100)]
    state = ds.state_dict()
    it.close()
    assert before != sorted(before), "the source must complete out of order for this test"
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(state)))
    after = [int(s["row"]) for s in resumed]
    assert sorted(before + after) == list(range(200))


# 4. Silent truncation: an epoch ends normally only when every planned row arrived.


class ForeignCancelSource(XSource):
    """Fetching row 25 awaits a future that someone else cancelled (asyncio)."""

    def __init__(self) -> None:
        super().__init__(100)

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        if 25 in indices:
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future
        return await self._inner.fetch(indices, columns)


# trio's Cancelled cannot be raised by user code; the defect is asyncio's.
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_4_a_foreign_cancellation_fails_the_stream(anyio_backend: str) -> None:
    got: list[int] = []

    async def consume() -> None:
        async with open_stream(ForeignCancelSource(), concurrency=1, fetch_size=1) as samples:
            async for s in samples:
                got.append(int(s["x"]))

    with pytest.raises(RuntimeError, match="was not cancelled") as info:
        await consume()
    assert isinstance(info.value.__cause__, asyncio.CancelledError)
    assert got == list(range(25))


def test_4_a_foreign_cancellation_fails_the_dataset() -> None:
    ds = AsyncDataset(ForeignCancelSource(), backend="asyncio", concurrency=1, fetch_size=1)
    with pytest.raises(RuntimeError, match="was not cancelled") as info:
        list(ds)
    assert isinstance(info.value.__cause__, asyncio.CancelledError)


@pytest.mark.anyio
async def test_4_a_transform_raising_stop_async_iteration_fails_the_stream() -> None:
    def transform(sample: dict[str, Any]) -> Any:
        if sample["x"] == 30:
            raise StopAsyncIteration
        return sample

    got: list[int] = []

    async def consume() -> None:
        async with open_stream(xs(100), transform=transform) as samples:
            async for s in samples:
                got.append(int(s["x"]))

    with pytest.raises(RuntimeError, match="StopAsyncIteration"):
        await consume()
    assert got == list(range(30))


def test_4_a_transform_raising_stop_iteration_fails_the_dataset(backend: str) -> None:
    def transform(sample: dict[str, Any]) -> Any:
        if sample["x"] == 30:
            raise StopIteration
        return sample

    with pytest.raises(RuntimeError, match="StopIteration"):
        list(AsyncDataset(xs(100), backend=backend, transform=transform))


def test_4_fewer_rows_than_planned_is_an_error(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anyloader._engine import loop_thread as _loop_thread
    from anyloader._engine import pipeline as _pipeline

    real = _pipeline.run_engine

    async def lossy(config: Any, groups: Any, planned: int, *args: Any, **kwargs: Any) -> None:
        groups = iter(list(groups)[:-1])  # an engine bug that loses the last group
        await real(config, groups, planned, *args, **kwargs)

    monkeypatch.setattr(_loop_thread, "run_engine", lossy)
    with pytest.raises(RuntimeError, match="36 of its 40 rows"):  # groups of 4: one lost
        list(AsyncDataset(xs(), backend=backend, fetch_size=4))


# 5. A trio loop thread driven from code running inside trio.run hung.


@pytest.mark.timeout(60)  # the defect was a hang: fail, don't wait forever
@pytest.mark.parametrize("outer", ["asyncio", "trio"])
def test_5_iterating_inside_a_running_event_loop(backend: str, outer: str) -> None:
    ds = AsyncDataset(xs(), backend=backend)

    async def main() -> list[int]:
        return rows(ds)  # blocking on purpose: a sync training loop called from async code

    assert anyio.run(main, backend=outer) == list(range(40))


# 7. An os.fork() child of a process with an open epoch hung at exit.


FORK_SCRIPT = textwrap.dedent(
    """
    import os, sys, numpy as np
    from anyloader import AsyncDataset, MemorySource
    ds = AsyncDataset(MemorySource({"x": np.arange(100)}), backend=sys.argv[1], fetch_size=4)
    it = iter(ds)
    first = [int(next(it)["x"]) for _ in range(10)]
    pid = os.fork()
    if pid == 0:
        try:
            next(it)
        except RuntimeError as exc:
            print("child refused:", "forked child" in str(exc), flush=True)
        sys.exit(0)  # normal interpreter exit, with the parent's iterator copied in
    _, status = os.waitpid(pid, 0)
    rest = [int(s["x"]) for s in it]
    whole = first + rest == list(range(100))
    print("child exit", os.waitstatus_to_exitcode(status), "parent", whole)
    """
)


def test_7_a_forked_child_exits_cleanly_and_the_parent_goes_on(
    backend: str, tmp_path: Path
) -> None:
    script = tmp_path / "fork.py"
    script.write_text(FORK_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), backend], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["child refused: True", "child exit 0 parent True"]


# 8. An unfinished iterator collected as cyclic garbage on its own loop thread leaked.


class GcOnLoopSource(XSource):
    """The fetch of row 8 waits for the test, then runs the garbage collector on the loop thread."""

    def __init__(self) -> None:
        super().__init__(100)
        self.gate = FakeFuture()
        self.collected_on: list[str] = []

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        if 8 in indices:
            await wait_future(self.gate)
            gc.collect()
            self.collected_on.append(threading.current_thread().name)
        return await self._inner.fetch(indices, columns)


def test_8_garbage_collected_on_its_own_loop_thread(backend: str) -> None:
    source = GcOnLoopSource()
    unraisable: list[Any] = []
    old_hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    gc.disable()  # only the collection on the loop thread may find the cycle
    try:
        it = iter(AsyncDataset(source, backend=backend, concurrency=1, fetch_size=1))
        assert [int(next(it)["x"]) for _ in range(8)] == list(range(8))
        (thread,) = loop_threads()
        cycle: list[Any] = [it]
        cycle.append(cycle)
        del it, cycle
        source.gate.set_result(None)
        thread.join(timeout=10)
    finally:
        gc.enable()
        sys.unraisablehook = old_hook
    assert source.collected_on == ["anyloader"]
    assert not thread.is_alive(), "the loop thread outlived its collected iterator"
    assert unraisable == []


# 9. set_epoch after a load was ignored by DataLoader workers.


def test_9_set_epoch_after_a_load_wins_in_workers(backend: str) -> None:
    def make() -> AsyncDataset:
        return AsyncDataset(rows_source(56), columns=["row"], backend=backend, shuffle=True)

    ds = make()
    ds.set_epoch(1)
    loader = StatefulDataLoader(ds, batch_size=4, num_workers=2)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    del it

    resumed = make()
    resumed_loader = StatefulDataLoader(resumed, batch_size=4, num_workers=2)
    resumed_loader.load_state_dict(state)
    resumed.set_epoch(5)
    got = [tuple(b["row"].tolist()) for b in resumed_loader]
    reference = make()
    reference.set_epoch(5)
    expected = [
        tuple(b["row"].tolist()) for b in StatefulDataLoader(reference, batch_size=4, num_workers=2)
    ]
    # StatefulDataLoader restores which worker yields next, so the batches may
    # interleave from another worker: the same batches, each in its own order.
    assert sorted(got) == sorted(expected)
    assert sorted(r for b in got for r in b) == list(range(56))


# 10. SystemExit and KeyboardInterrupt raised in a fetch were replaced.


class RaisingSource(XSource):
    def __init__(self, error: BaseException) -> None:
        super().__init__(40)
        self.error = error

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        if 20 in indices:
            raise self.error
        return await self._inner.fetch(indices, columns)


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_10_base_exceptions_from_a_fetch_reach_the_loop_as_themselves(
    backend: str, error: type[BaseException]
) -> None:
    raised = error("from the store")
    ds = AsyncDataset(RaisingSource(raised), backend=backend)
    with pytest.raises(error) as info:
        list(ds)
    assert info.value is raised
    assert loop_threads() == []


@pytest.mark.anyio
@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
async def test_10_base_exceptions_from_a_fetch_leave_open_stream_as_themselves(
    error: type[BaseException],
) -> None:
    raised = error("from the store")

    async def consume() -> None:
        async with open_stream(RaisingSource(raised)) as samples:
            async for _ in samples:
                pass

    with pytest.raises(error) as info:
        await consume()
    assert info.value is raised


# 11. The block's own exception groups were flattened.


@pytest.mark.anyio
async def test_11_the_blocks_exception_group_leaves_unchanged() -> None:
    group = ExceptionGroup("mine", [ValueError("a"), KeyError("b")])

    async def body() -> None:
        async with open_stream(xs()) as samples:
            await samples.receive()
            raise group

    with pytest.raises(ExceptionGroup) as info:
        await body()
    assert info.value is group


@pytest.mark.anyio
async def test_11_the_blocks_plain_exception_leaves_unwrapped() -> None:
    error = LookupError("mine")

    async def body() -> None:
        async with open_stream(xs()):
            raise error

    with pytest.raises(LookupError) as info:
        await body()
    assert info.value is error


# 12. open_stream ignored batch_size; the public stream API could stall.


@pytest.mark.anyio
async def test_12_open_stream_yields_batches() -> None:
    async with open_stream(xs(), batch_size=16) as batches:
        got = [b async for b in batches]
    assert [len(b["x"]) for b in got] == [16, 16, 8]
    assert torch.cat([b["x"] for b in got]).tolist() == list(range(40))


@pytest.mark.anyio
async def test_12_receive_alone_never_stalls() -> None:
    with anyio.fail_after(20):
        async with open_stream(xs(500), prefetch=2, concurrency=2) as samples:
            got = [int((await samples.receive())["x"]) for _ in range(500)]
            with pytest.raises(anyio.EndOfStream):
                await samples.receive()
    assert got == list(range(500))


def test_12_the_stream_has_no_private_chunk_api() -> None:
    from anyloader import SampleStream

    public = {n for n in vars(SampleStream) if not n.startswith("_")}
    assert public == {"receive", "stats"}


# 13. Minor defects.


class ReturnsSource(XSource):
    def __init__(self, value: Any) -> None:
        super().__init__(4)
        self.value = value

    def column_info(self) -> dict[str, Any]:
        return self._inner.column_info()  # x: int64, one per row

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Any:
        return self.value(indices) if callable(self.value) else self.value


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (None, "must return a mapping"),
        (lambda idx: {"x": set(idx)}, "set for column 'x'"),
        (lambda idx: {"x": "abcd"[: len(idx)]}, "str for column 'x'"),
    ],
)
def test_13_a_source_breaking_its_contract_gets_a_clear_error(
    backend: str, value: Any, match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        list(AsyncDataset(ReturnsSource(value), backend=backend))


def test_13_a_column_whose_dtype_changes_never_flips_between_tensor_and_list(
    backend: str,
) -> None:
    def fetch(idx: Sequence[int]) -> dict[str, Any]:
        dtype = np.int32 if min(idx) >= 2 else np.int64  # int64 as described, then not
        return {"x": np.asarray(idx, dtype=dtype)}

    # One row per request: the second batch's rows arrive with the other dtype.
    ds = AsyncDataset(ReturnsSource(fetch), backend=backend, batch_size=2, fetch_size=1)
    batches = iter(ds)
    assert isinstance(next(batches)["x"], torch.Tensor)
    with pytest.raises(TypeError, match=r"describes column 'x' as int64 \(\)"):
        next(batches)


def test_13_two_live_iterators_do_not_share_a_position(backend: str) -> None:
    ds = AsyncDataset(xs(), backend=backend)
    old, new = iter(ds), iter(ds)
    for _ in range(5):
        next(new)
    for _ in range(30):
        next(old)  # the older iterator moves last: it must not move the state
    state = ds.state_dict()
    old.close()
    new.close()
    assert (state["epoch"], state["position"]) == (1, 5)


def test_13_an_exception_raised_every_epoch_keeps_one_note(backend: str) -> None:
    error = LookupError("row gone")
    ds = AsyncDataset(RaisingSource(error), backend=backend, retries=0)
    for _ in range(3):
        with pytest.raises(LookupError):
            list(ds)
    assert len([n for n in error.__notes__ if n.startswith("anyloader:")]) == 1


# 2. A dataset pickled before init_process_group was pinned to rank 0 of 1: see
#    tests/test_distributed.py::test_a_dataset_pickled_before_the_process_group_shards_by_rank.
# 6. wait_future hangs: see tests/sources/test_bridge.py (two waiters; waits that outlive
#    the poller).


def test_pickle_round_trip_keeps_the_epoch_and_does_not_share_it(backend: str) -> None:
    ds = AsyncDataset(xs(), backend=backend, shuffle=True)
    list(ds)
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.epoch == ds.epoch == 1
    list(copy)
    assert (copy.epoch, ds.epoch) == (2, 1)
