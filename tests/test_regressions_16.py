"""One test per defect of issue 16 (exactly once, round three): each failed before its fix."""

from __future__ import annotations

import gc
import json
import multiprocessing
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import pytest
import torch
from _doubles import JitterSource

import anyloader
from anyloader import AsyncDataset, MemorySource, StateError
from anyloader._batch_memory import BatchMemory
from anyloader._decoding import DecodeSettings, open_decoding

TESTS = str(Path(__file__).parent)


def xs(n: int = 40) -> MemorySource:
    return MemorySource({"x": np.arange(n)})


def loader_rows(batches: Any) -> list[int]:
    return [int(r) for b in batches for r in np.asarray(b["x"]).reshape(-1)]


# 1. anyloader.DataLoader with ordered=False lost and repeated rows on resume: its
#    checkpoint assumed every worker had delivered a prefix of its shard.


@pytest.mark.parametrize(("workers", "then"), [(0, 0), (0, 2), (2, 0), (2, 3)])
def test_1_an_unordered_checkpoint_resumes_exactly_once(
    backend: str, workers: int, then: int
) -> None:
    def loader(workers: int, batch: int) -> anyloader.DataLoader:
        ds = AsyncDataset(JitterSource(40), backend=backend, ordered=False, concurrency=8)
        fork = {"multiprocessing_context": "fork"} if workers else {}
        return anyloader.DataLoader(ds, batch_size=batch, num_workers=workers, **fork)

    first = loader(workers, 4)
    it = iter(first)
    delivered = [r for _ in range(3) for r in next(it)["row"].tolist()]
    # The jitter delivers rows out of plan order: the case the step count got wrong.
    assert delivered != sorted(delivered)
    state = json.loads(json.dumps(first.state_dict()))
    del it
    second = loader(then, 3)  # resumed elsewhere: other workers, other batch size
    second.load_state_dict(state)
    rest = [r for batch in second for r in batch["row"].tolist()]
    assert Counter(delivered + rest) == Counter(range(40))


# 2. loader.state_dict() between iter(loader) and the first batch forgot a loaded checkpoint.

_release: Any = None  # a fork worker's copy of the event that lets it start iterating


def _wait_for_release(worker_id: int) -> None:
    assert _release is not None
    _release.wait(30)


def test_2_a_checkpoint_during_worker_start_up_keeps_the_loaded_position(backend: str) -> None:
    global _release
    ctx = multiprocessing.get_context("fork")

    def loader(**kwargs: Any) -> anyloader.DataLoader:
        ds = AsyncDataset(xs(), backend=backend, shuffle=True, seed=4)
        return anyloader.DataLoader(ds, batch_size=4, num_workers=2, **kwargs)

    first = loader(multiprocessing_context=ctx)
    it = iter(first)
    delivered = loader_rows(next(it) for _ in range(3))
    saved = json.loads(json.dumps(first.state_dict()))
    del it
    assert saved["steps"] == 3

    # A new process loads it; its workers are held in worker_init_fn (before they
    # iterate the dataset) while a preemption handler saves again.
    _release = ctx.Event()
    second = loader(multiprocessing_context=ctx, worker_init_fn=_wait_for_release)
    second.load_state_dict(saved)
    it = iter(second)
    during_start_up = second.state_dict()
    _release.set()
    rest = loader_rows(it)
    assert during_start_up == saved
    assert Counter(delivered + rest) == Counter(range(40))

    # And that state, resumed, is still the rest of the epoch.
    third = loader(multiprocessing_context=ctx)
    third.load_state_dict(during_start_up)
    assert sorted(delivered + loader_rows(third)) == list(range(40))


# 3. Stats added epochs together when torch was reseeded before each epoch.


@pytest.mark.parametrize("persistent", [False, True])
def test_3_stats_are_one_epoch_when_torch_is_reseeded(backend: str, persistent: bool) -> None:
    ds = AsyncDataset(xs(), backend=backend, batch_size=5)
    loader = anyloader.DataLoader(
        ds, num_workers=2, persistent_workers=persistent, multiprocessing_context="fork"
    )
    for _ in range(3):
        torch.manual_seed(0)  # the same DataLoader base seed every epoch
        assert len(loader_rows(loader)) == 40
        assert ds.stats().rows == 40
        assert loader.stats().rows == 40
        assert ds.stats().workers == 2


# 6. load_state_dict raised a bare KeyError; a state past the end of the epoch was accepted.


@pytest.mark.parametrize("missing", ["dataset", "epoch", "cuts", "layout", "steps"])
def test_6_a_state_missing_a_key_names_it(missing: str) -> None:
    ds = AsyncDataset(xs(), shuffle=True)
    state = anyloader.DataLoader(ds, batch_size=4).state_dict()
    del state[missing]
    with pytest.raises(StateError, match=missing):
        anyloader.DataLoader(AsyncDataset(xs(), shuffle=True), batch_size=4).load_state_dict(state)


def test_6_a_state_past_the_end_of_its_epoch_is_refused() -> None:
    loader = anyloader.DataLoader(AsyncDataset(xs()), batch_size=4)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    del it
    state["steps"] = 11  # 40 rows in batches of 4: 10 steps make the epoch
    with pytest.raises(StateError, match="steps=11"):
        anyloader.DataLoader(AsyncDataset(xs()), batch_size=4).load_state_dict(state)
    state["steps"] = 10  # taken after the last batch: nothing left, and that is fine
    resumed = anyloader.DataLoader(AsyncDataset(xs()), batch_size=4)
    resumed.load_state_dict(state)
    assert list(resumed) == []


def test_6_a_dataset_state_past_the_end_of_its_shard_is_refused() -> None:
    ds = AsyncDataset(xs(10))
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    it.close()
    state["position"] = 11
    with pytest.raises(StateError, match="position 11"):
        AsyncDataset(xs(10)).load_state_dict(state)


# 7. A valid checkpoint was refused over shuffle_window, which the order does not use.


def test_7_options_the_order_does_not_use_do_not_refuse_a_checkpoint() -> None:
    ds = AsyncDataset(xs(), shuffle=True, seed=2, shuffle_window=4)
    it = iter(ds)
    first = [int(next(it)["x"]) for _ in range(5)]
    state = ds.state_dict()
    it.close()
    resumed = AsyncDataset(xs(), shuffle=True, seed=2, shuffle_window=9)
    resumed.load_state_dict(state)
    assert sorted(first + [int(s["x"]) for s in resumed]) == list(range(40))
    # Without shuffling the seed does not matter either; with it, it does.
    unshuffled = AsyncDataset(xs(), seed=1)
    unshuffled.load_state_dict(AsyncDataset(xs(), seed=2).state_dict())
    with pytest.raises(StateError, match="seed"):
        AsyncDataset(xs(), shuffle=True, seed=1).load_state_dict(
            AsyncDataset(xs(), shuffle=True, seed=2).state_dict()
        )


# 4. Ctrl-C could hang training: the training thread waited without a timeout, so a
#    SIGINT whose C-level handler ran on another thread never woke it.

SIGINT_ELSEWHERE = textwrap.dedent(
    """
    import signal, sys, threading, time
    sys.path.insert(0, {tests!r})
    from _doubles import CountingSource
    from anyloader import AsyncDataset

    signal.signal(signal.SIGINT, signal.default_int_handler)
    # A thread that does not block SIGINT, as deeplake's and torch's native threads.
    idle = threading.Event()
    native = threading.Thread(target=idle.wait, daemon=True)
    native.start()
    it = iter(AsyncDataset(CountingSource(100, slow_from=0), backend={backend!r}))
    sent = []

    def interrupt():
        time.sleep(0.3)
        sent.append(time.perf_counter())
        signal.pthread_kill(native.ident, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    try:
        next(it)  # the source stalls: only the interrupt can end this
    except KeyboardInterrupt:
        print("interrupted", time.perf_counter() - sent[0], flush=True)
    """
)


def run_script(script: str, timeout: float = 60, **popen: Any) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter; kill it (and fail) if it outlives ``timeout``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_4_a_sigint_handled_on_another_thread_interrupts_training_within_a_second(
    backend: str,
) -> None:
    done = run_script(SIGINT_ELSEWHERE.format(tests=TESTS, backend=backend), timeout=30)
    assert done.returncode == 0, done.stderr
    word, seconds = done.stdout.split()
    assert word == "interrupted"
    assert float(seconds) < 1.0


def _blocked_signals(native_id: int) -> int:
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    return int(
        next(line for line in status.splitlines() if line.startswith("SigBlk")).split()[1], 16
    )


def test_4_threads_of_ours_leave_signals_to_the_main_thread(pairs_url: str, backend: str) -> None:
    it = iter(AsyncDataset(pairs_url, backend=backend, columns=["images"]))
    next(it)
    ours = [t for t in threading.enumerate() if t.name.startswith("anyloader")]
    try:
        kinds = {t.name.split("_")[0] for t in ours}
        assert kinds == {"anyloader", "anyloader-decode"}, kinds
        sigint = 1 << (signal.SIGINT - 1)
        for thread in ours:
            assert thread.native_id is not None
            assert _blocked_signals(thread.native_id) & sigint, f"{thread.name} takes SIGINT"
        assert threading.main_thread().native_id is not None
        assert not _blocked_signals(threading.main_thread().native_id) & sigint
    finally:
        it.close()


SIGINT_STORM = textwrap.dedent(
    """
    import faulthandler, os, random, signal, sys, threading, time
    faulthandler.dump_traceback_later(120, exit=True)  # a hang fails the run, with stacks
    sys.path.insert(0, {tests!r})
    from _doubles import CountingSource
    from anyloader import AsyncDataset

    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = random.Random(0)
    ds = AsyncDataset(CountingSource(100, slow_from=0), backend={backend!r})
    worst = 0.0
    for _ in range({rounds}):
        sent = []

        def interrupt(delay=rng.uniform(0, 0.01)):
            time.sleep(delay)
            sent.append(time.perf_counter())
            os.kill(os.getpid(), signal.SIGINT)  # to the process: the kernel picks a thread

        it = None
        try:
            threading.Thread(target=interrupt, daemon=True).start()
            it = iter(ds)
            next(it)
            raise SystemExit("the stalled source delivered a row")
        except KeyboardInterrupt:
            worst = max(worst, time.perf_counter() - sent[0])
        finally:
            if it is not None:
                it.close()
    print("worst", worst, flush=True)
    """
)


@pytest.mark.slow
def test_4_every_ctrl_c_interrupts_training_promptly(backend: str) -> None:
    script = SIGINT_STORM.format(tests=TESTS, backend=backend, rounds=40)
    done = run_script(script, timeout=150)
    assert done.returncode == 0, done.stderr
    word, seconds = done.stdout.split()
    assert word == "worst"
    assert float(seconds) < 1.0


# Suspected, confirmed: the batch memory's finaliser took a lock that the code the
# collector interrupts may hold (a deadlock).


def test_suspect_the_collector_frees_a_batch_while_its_memory_is_locked() -> None:
    memory = BatchMemory(shared=False)
    finished = threading.Event()

    def interrupted() -> None:
        batch = memory.empty((4, 4), torch.uint8)
        cycle: list[Any] = [batch]
        cycle.append(cycle)  # only the collector frees it
        del batch
        with memory._lock:  # the code the collector interrupts holds the lock
            del cycle
            gc.collect()  # and the batch's finaliser runs on this very thread
        finished.set()

    thread = threading.Thread(target=interrupted, daemon=True)
    thread.start()
    thread.join(10)
    assert finished.is_set(), "the finaliser deadlocked on the memory's lock"
    assert sum(len(spare) for spare in memory._free.values()) == 1  # and the memory came back


# Suspected, confirmed: a decode that outlived its timed-out fetch attempt kept writing
# into the batch slots the retry (and later a reused batch) filled.


@pytest.mark.anyio
async def test_suspect_no_decode_outlives_the_attempt_it_served() -> None:
    started, release = threading.Event(), threading.Event()
    slot = np.zeros(1)

    def decode() -> None:
        started.set()
        release.wait(10)
        slot[0] = 1  # a write into the batch slot

    async with open_decoding(DecodeSettings(threads=1)) as decoding:
        async with anyio.create_task_group() as tg:
            tg.start_soon(decoding.run, decode)
            await anyio.to_thread.run_sync(started.wait)
            threading.Timer(0.2, release.set).start()  # the decode takes 0.2 s more
            tg.cancel_scope.cancel()  # the attempt times out
        # The attempt has ended: its decode must have ended too.
        assert slot[0] == 1
