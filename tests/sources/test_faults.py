"""Reliability under faults: FaultySource, retries, timeouts, stragglers, permanent failure.

Async tests run on asyncio and trio (``anyio_backend``); the synchronous ones
that drive ``AsyncDataset`` take the ``backend`` fixture.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import anyio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from anyloader import (
    AsyncDataset,
    DeeplakeSource,
    FaultySource,
    MemorySource,
    Options,
    RetryPolicy,
    open_stream,
)
from anyloader._engine.config import LoaderConfig
from anyloader._engine.retry import retrying
from anyloader._plan.plan import Shard, plan_epoch
from anyloader._sources.faults import FaultStats, PermanentFault
from anyloader._sources.source import Columns
from anyloader._sources.synthetic import read_row_id

pytestmark = pytest.mark.anyio

# Retries fast enough for property tests: at most 5 ms between attempts.
FAST = RetryPolicy(retries=20, backoff=0.0005, max_backoff=0.005)


def rows_source(n: int) -> MemorySource:
    idx = np.arange(n, dtype=np.int64)
    return MemorySource({"row": idx, "image": np.repeat(idx[:, None], 4, axis=1)})


@dataclasses.dataclass(frozen=True)
class Run:
    """A source and the ``open_stream`` options to read it with."""

    source: object
    options: dict[str, Any]

    @property
    def budget(self) -> int:
        return LoaderConfig.build(self.source, Options.validate(**self.options)).budget


def fast_config(source: object, retry: RetryPolicy = FAST, **options: Any) -> Run:
    """Options with a retry policy of our choosing, one row per fetch unless told otherwise.

    A fault is drawn per attempt at a group of rows: one-row groups give every
    test its faults wherever the loader would otherwise size its requests.
    """
    policy = dataclasses.asdict(retry)
    return Run(source, {"fetch_size": 1, **policy, **options})


async def drain(run: Run, *, epoch: int = 0) -> list[dict[str, Any]]:
    async with open_stream(run.source, epoch=epoch, **run.options) as stream:
        return [sample async for sample in stream]


# --- FaultySource itself ------------------------------------------------------


def test_forwards_columns_len_and_values() -> None:
    inner = rows_source(10)
    faulty = FaultySource(inner)
    assert faulty.columns == inner.columns
    assert len(faulty) == 10
    assert "seed=0" in repr(faulty)


async def test_no_fault_returns_exactly_what_the_source_returns() -> None:
    inner = rows_source(10)
    faulty = FaultySource(inner, seed=1, transient_rate=0.0, hang_rate=0.0)
    got = await faulty.fetch([3, 1, 4], ["row", "image"])
    want = await inner.fetch([3, 1, 4], ["row", "image"])
    for name in ("row", "image"):
        np.testing.assert_array_equal(got[name], want[name])
    assert faulty.stats == FaultStats(calls=1)


@pytest.mark.parametrize(
    ("kwargs", "exc", "names"),
    [
        ({"source": object()}, TypeError, "source"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"seed": True}, TypeError, "seed"),
        ({"transient_rate": "high"}, TypeError, "transient_rate"),
        ({"transient_rate": 1.5}, ValueError, "transient_rate"),
        ({"transient_rate": -0.1}, ValueError, "transient_rate"),
        ({"hang_rate": 2}, ValueError, "hang_rate"),
        ({"hang_seconds": "1"}, TypeError, "hang_seconds"),
        ({"hang_seconds": -1.0}, ValueError, "hang_seconds"),
        ({"hang_seconds": math.nan}, ValueError, "hang_seconds"),
        ({"fail_after": 1.0}, TypeError, "fail_after"),
        ({"fail_after": -1}, ValueError, "fail_after"),
        ({"error": "boom"}, TypeError, "error"),
        ({"error": KeyboardInterrupt}, TypeError, "error"),
        ({"permanent_error": 3}, TypeError, "permanent_error"),
    ],
)
def test_rejects_bad_settings(kwargs: dict[str, Any], exc: type[Exception], names: str) -> None:
    source = kwargs.pop("source", rows_source(4))
    with pytest.raises(exc, match=names):
        FaultySource(source, **kwargs)


def test_fate_is_a_pure_function_of_seed_rows_and_attempt() -> None:
    a = FaultySource(rows_source(100), seed=7, transient_rate=0.3, hang_rate=0.2)
    b = pickle.loads(pickle.dumps(a))
    fates = [a.fate([i, i + 1], attempt) for i in range(50) for attempt in range(3)]
    assert fates == [b.fate([i, i + 1], attempt) for i in range(50) for attempt in range(3)]
    assert {"ok", "transient", "hang"} <= set(fates)
    other = FaultySource(rows_source(100), seed=8, transient_rate=0.3, hang_rate=0.2)
    assert fates != [other.fate([i, i + 1], attempt) for i in range(50) for attempt in range(3)]


def test_fault_rate_matches_the_setting() -> None:
    faulty = FaultySource(rows_source(1), seed=3, transient_rate=0.3)
    fates = [faulty.fate([i], 0) for i in range(4000)]
    assert 0.27 < fates.count("transient") / len(fates) < 0.33


async def test_faults_do_not_depend_on_interleaving() -> None:
    """Same seed, different concurrency and fetch order: the same faults are injected."""
    stats = []
    for concurrency, ordered in ((1, True), (8, False)):
        faulty = FaultySource(rows_source(60), seed=11, transient_rate=0.3)
        config = fast_config(faulty, concurrency=concurrency, fetch_size=3, ordered=ordered)
        samples = await drain(config)
        assert sorted(int(s["row"]) for s in samples) == list(range(60))
        stats.append(faulty.stats)
    assert stats[0] == stats[1]
    assert stats[0].transient > 0


def test_is_transient_classifies_injected_and_forwards_the_rest(pairs_url: str) -> None:
    import deeplake

    faulty = FaultySource(rows_source(4), error=ValueError, permanent_error=ConnectionError)
    injected = ValueError("x")
    injected._anyloader_fault = "transient"  # type: ignore[attr-defined]
    permanent = ConnectionError("x")
    permanent._anyloader_fault = "permanent"  # type: ignore[attr-defined]
    assert faulty.is_transient(injected)
    assert not faulty.is_transient(permanent)  # even though ConnectionError is an OSError
    # Not injected, MemorySource has no opinion: the loader's default.
    assert faulty.is_transient(TimeoutError())
    assert not faulty.is_transient(ValueError("x"))
    # Not injected, the wrapped source decides.
    over_deeplake = FaultySource(DeeplakeSource(pairs_url))
    assert over_deeplake.is_transient(deeplake.StorageNetworkConnectionError("x"))
    assert not over_deeplake.is_transient(KeyError("x"))


async def test_pickled_copy_keeps_settings_and_fetches(pairs_url: str) -> None:
    faulty = FaultySource(DeeplakeSource(pairs_url), seed=5, transient_rate=0.5, fail_after=99)
    copy = pickle.loads(pickle.dumps(faulty))
    assert (copy.seed, copy.transient_rate, copy.fail_after) == (5, 0.5, 99)
    assert len(copy) == 97
    assert copy.columns == faulty.columns
    config = fast_config(copy, fetch_size=4)
    samples = await drain(config)
    assert [read_row_id(s["images"]) for s in samples] == list(range(97))
    assert copy.stats.transient > 0


async def test_injected_errors_carry_the_chosen_types() -> None:
    faulty = FaultySource(rows_source(8), transient_rate=1.0, fail_after=2, error=BrokenPipeError)
    with pytest.raises(BrokenPipeError, match="injected transient"):
        await faulty.fetch([0], ["row"])
    with pytest.raises(BrokenPipeError):
        await faulty.fetch([0], ["row"])
    with pytest.raises(PermanentFault, match="fail_after=2"):
        await faulty.fetch([0], ["row"])
    assert FaultySource.PermanentFault is PermanentFault
    assert faulty.stats == FaultStats(calls=3, transient=2, permanent=1)


# --- exactly-once under random fault schedules ------------------------------------

SCHEDULES = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "transient_rate": st.floats(0.0, 0.3),
        "hang_rate": st.sampled_from([0.0, 0.0, 0.05, 0.1]),
        "fetch_size": st.integers(1, 9),
        "concurrency": st.integers(1, 12),
        "ordered": st.booleans(),
        "shuffle": st.booleans(),
        "epoch": st.integers(0, 3),
    }
)


@settings(max_examples=30, deadline=None)
@given(schedule=SCHEDULES)
async def test_every_row_exactly_once_under_faults(
    pairs_url: str, schedule: dict[str, Any]
) -> None:
    """Up to 30% transient errors and 10% stragglers (cut by a timeout): every row once, intact."""
    faulty = FaultySource(
        DeeplakeSource(pairs_url),
        seed=schedule["seed"],
        transient_rate=schedule["transient_rate"],
        hang_rate=schedule["hang_rate"],
        hang_seconds=math.inf,
    )
    config = fast_config(
        faulty,
        retry=dataclasses.replace(FAST, timeout=0.1),
        fetch_size=schedule["fetch_size"],
        concurrency=schedule["concurrency"],
        ordered=schedule["ordered"],
        shuffle=schedule["shuffle"],
        seed=schedule["seed"],
        return_index=True,
    )
    with anyio.fail_after(60):
        samples = await drain(config, epoch=schedule["epoch"])
    got = [int(s["index"]) for s in samples]
    assert sorted(got) == list(range(97))
    for sample in samples:
        assert read_row_id(sample["images"]) == sample["index"]
        assert read_row_id(sample["masks"]) == sample["index"]
    if schedule["ordered"]:
        plan = plan_epoch(
            97,
            Shard(),
            fetch_size=schedule["fetch_size"],
            seed=schedule["seed"],
            epoch=schedule["epoch"],
            shuffle=schedule["shuffle"],
        )
        assert got == np.concatenate(plan).tolist()
    groups = math.ceil(97 / schedule["fetch_size"])
    # Every injected fault cost exactly one extra attempt (timeouts may add more).
    assert faulty.stats.calls >= groups + faulty.stats.transient + faulty.stats.hangs
    assert faulty.stats.permanent == 0


# --- retries, back-off, timeouts, final errors ------------------------------------


class RecordingRandom(random.Random):
    def __init__(self) -> None:
        super().__init__(0)
        self.ceilings: list[float] = []

    def uniform(self, a: float, b: float) -> float:
        self.ceilings.append(b)
        return 0.0


async def test_backoff_doubles_up_to_the_cap_with_full_jitter() -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls <= 6:
            raise ConnectionError("flaky")
        return "ok"

    rng = RecordingRandom()
    policy = RetryPolicy(retries=6, backoff=0.001, max_backoff=0.01)
    assert await retrying(attempt, policy, lambda e: True, rng, rows=[1]) == "ok"
    assert calls == 7
    assert rng.ceilings == [0.001, 0.002, 0.004, 0.008, 0.01, 0.01]


@settings(max_examples=200, deadline=None)
@given(
    attempt=st.integers(0, 100_000),
    backoff=st.floats(0.0, 10.0),
    cap=st.floats(0.0, 100.0),
    seed=st.integers(0, 2**32),
)
def test_delay_is_within_full_jitter_bounds(
    attempt: int, backoff: float, cap: float, seed: int
) -> None:
    policy = RetryPolicy(backoff=backoff, max_backoff=cap)
    delay = policy.delay(attempt, random.Random(seed))
    assert 0.0 <= delay <= min(cap, backoff * 2.0 ** min(attempt, 64))


async def test_retries_run_out_with_the_original_error_naming_rows() -> None:
    faulty = FaultySource(rows_source(40), transient_rate=1.0)
    config = fast_config(
        faulty, retry=RetryPolicy(retries=2, backoff=0.0), concurrency=1, fetch_size=4
    )
    with pytest.raises(ConnectionError, match="injected transient") as info:
        await drain(config)
    note = "\n".join(info.value.__notes__)
    assert "rows [0, 1, 2, 3]" in note
    assert "3 attempts" in note
    assert "retries exhausted" in note
    assert faulty.stats.calls == 3  # one group, three attempts, nothing after


async def test_a_non_transient_error_is_not_retried() -> None:
    faulty = FaultySource(rows_source(40), transient_rate=1.0, error=KeyError)
    config = fast_config(faulty, concurrency=1)
    faulty.is_transient = lambda exc: False  # type: ignore[method-assign]
    with pytest.raises(KeyError) as info:
        await drain(config)
    assert "1 attempt (KeyError is not transient" in "\n".join(info.value.__notes__)
    assert faulty.stats.calls == 1


async def test_retry_if_overrides_the_source() -> None:
    faulty = FaultySource(rows_source(12), seed=2, transient_rate=0.3)
    config = fast_config(faulty, retry_if=lambda exc: False)
    with pytest.raises(ConnectionError) as info:
        await drain(config)
    assert "not transient" in "\n".join(info.value.__notes__)


async def test_timeout_cuts_a_straggler_and_the_retry_succeeds() -> None:
    # Find a seed whose first attempt at rows [0..3] hangs forever and whose second does not.
    seed = next(
        s
        for s in range(1000)
        if FaultySource(rows_source(1), seed=s, hang_rate=0.5).fate([0, 1, 2, 3], 0) == "hang"
        and FaultySource(rows_source(1), seed=s, hang_rate=0.5).fate([0, 1, 2, 3], 1) == "ok"
    )
    faulty = FaultySource(rows_source(4), seed=seed, hang_rate=0.5, hang_seconds=math.inf)
    # Long enough that the prompt second attempt never times out on a loaded machine
    # (0.05 s did, once, at load 7 on 2 cores: three calls); the hang is endless anyway.
    config = fast_config(faulty, retry=dataclasses.replace(FAST, timeout=0.5), fetch_size=4)
    with anyio.fail_after(10):
        samples = await drain(config)
    assert [int(s["row"]) for s in samples] == [0, 1, 2, 3]
    assert faulty.stats.hangs == 1
    assert faulty.stats.calls == 2


async def test_every_attempt_timing_out_raises_timeout_error_naming_rows() -> None:
    faulty = FaultySource(rows_source(4), hang_rate=1.0, hang_seconds=math.inf)
    config = fast_config(
        faulty, retry=RetryPolicy(retries=1, timeout=0.02, backoff=0.0), fetch_size=4
    )
    with anyio.fail_after(10), pytest.raises(TimeoutError) as info:
        await drain(config)
    note = "\n".join(info.value.__notes__)
    assert "rows [0, 1, 2, 3]" in note
    assert "timed out after 0.02 s" in note
    assert faulty.stats.calls == 2


async def test_cancellation_is_never_retried() -> None:
    faulty = FaultySource(rows_source(4), hang_rate=1.0, hang_seconds=math.inf)
    policy = RetryPolicy(retries=5, backoff=0.0)
    with anyio.move_on_after(0.05) as scope:
        await retrying(lambda: faulty.fetch([0], ["row"]), policy, lambda e: True, random.Random(0))
    assert scope.cancelled_caught
    assert faulty.stats.calls == 1


# --- stragglers: unordered keeps going, ordered stays in order within its window ---


class GateSource:
    """Rows fetch at once, except the group holding ``slow_row``: it waits for ``release``."""

    def __init__(self, n: int, slow_row: int) -> None:
        self._inner = rows_source(n)
        self.slow_row = slow_row
        self.straggling = anyio.Event()
        self.release = anyio.Event()
        self.calls = 0

    @property
    def columns(self) -> Sequence[str]:
        return self._inner.columns

    def __len__(self) -> int:
        return len(self._inner)

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        self.calls += 1
        if self.slow_row in indices:
            self.straggling.set()
            await self.release.wait()
        return await self._inner.fetch(indices, columns)


async def test_unordered_yields_other_rows_while_one_straggles() -> None:
    source = GateSource(40, slow_row=0)
    async with open_stream(
        source, ordered=False, concurrency=4, fetch_size=1, prefetch=8
    ) as stream:
        got = []
        with anyio.fail_after(10):  # a guard, not a synchronisation
            await source.straggling.wait()
            while len(got) < 39:
                got.append(int((await stream.__anext__())["row"]))
        # Every other row arrived while row 0 was still being fetched.
        assert not source.release.is_set()
        assert sorted(got) == list(range(1, 40))
        source.release.set()
        rest = [int(s["row"]) async for s in stream]
    assert rest == [0]


async def test_ordered_waits_for_the_straggler_within_a_bounded_window() -> None:
    source = GateSource(40, slow_row=0)
    run = Run(source, {"ordered": True, "concurrency": 2, "fetch_size": 1, "prefetch": 4})
    got: list[int] = []
    async with open_stream(source, **run.options) as stream:

        async def consume() -> None:
            async for sample in stream:
                got.append(int(sample["row"]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            with anyio.fail_after(10):
                await source.straggling.wait()
            await anyio.wait_all_tasks_blocked()
            # Nothing overtook row 0, and the engine stopped fetching at its row budget.
            assert got == []
            assert source.calls == run.budget
            source.release.set()
    assert got == list(range(40))


# --- permanent failure: prompt, unwrapped, nothing left behind -------------------


class Boom(Exception):
    """A permanent error that remembers when it was raised."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.raised_at = time.monotonic()


@pytest.mark.parametrize("via_dataloader", [False, True])
def test_permanent_failure_reaches_the_training_loop_within_a_second(
    pairs_url: str, backend: str, thread_baseline: set[int], via_dataloader: bool
) -> None:
    faulty = FaultySource(
        DeeplakeSource(pairs_url), fail_after=7, permanent_error=Boom, transient_rate=0.2
    )
    dataset = AsyncDataset(faulty, backend=backend, concurrency=4, fetch_size=2, retries=10)
    loader: Any = DataLoader(dataset, batch_size=4) if via_dataloader else dataset
    seen = 0

    def train() -> None:
        nonlocal seen
        for item in loader:
            seen += len(item["images"]) if via_dataloader else 1

    with pytest.raises(Boom) as info:
        train()
    caught_at = time.monotonic()
    assert caught_at - info.value.raised_at < 1.0
    assert seen < 97
    assert faulty.stats.permanent >= 1
    assert "fail_after=7" in str(info.value)
    assert any("not retried" in note for note in info.value.__notes__)
    leftover = {t.name for t in threading.enumerate() if t.ident not in thread_baseline}
    assert leftover == set()


# --- a latency store that faults: moto S3 on loopback ---------------------------


@pytest.mark.slow
async def test_exactly_once_through_a_faulty_latency_store() -> None:
    """20 ms per GET, 20% of GETs answer 500 or reset the connection, plus 20% injected errors."""
    import deeplake
    from deeplake import types

    from anyloader._sources.synthetic import make_pair
    from benchmarks import s3_server

    rows = 48
    with s3_server.serve(latency_s=0.02, fault_rate=0.2, seed=5) as endpoint_url:
        creds = {**s3_server.CREDS, "endpoint_url": endpoint_url}
        s3_server.create_bucket(endpoint_url, "anyloader-faults")
        url = "s3://anyloader-faults/pairs"
        ds = deeplake.create(url, creds=creds)
        ds.add_column("images", types.Image(types.UInt8(), sample_compression="jpeg"))
        ds.add_column("masks", types.BinaryMask(sample_compression="lz4"))
        pairs = [make_pair(i) for i in range(rows)]
        ds.append({"images": [p[0] for p in pairs], "masks": [p[1] for p in pairs]})
        ds.commit()
        faulty = FaultySource(
            DeeplakeSource(url, creds=creds), seed=5, transient_rate=0.2, hang_rate=0.05
        )
        config = fast_config(
            faulty,
            retry=dataclasses.replace(FAST, timeout=5.0),
            concurrency=16,
            fetch_size=2,
            shuffle=True,
            return_index=True,
        )
        with anyio.fail_after(120):
            samples = await drain(config)
    got = sorted(int(s["index"]) for s in samples)
    assert got == list(range(rows))
    for sample in samples:
        assert read_row_id(sample["images"]) == sample["index"]
        assert read_row_id(sample["masks"]) == sample["index"]
    assert faulty.stats.transient > 0
    assert faulty.stats.calls >= rows // 2 + faulty.stats.transient
