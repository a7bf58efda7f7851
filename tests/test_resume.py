"""Mid-epoch resume: consumed before the stop + consumed after = the uninterrupted epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from _doubles import JitterSource, rows_source
from hypothesis import given, settings
from hypothesis import strategies as st
from torchdata.stateful_dataloader import StatefulDataLoader

from anyloader import AsyncDataset, StateError


def rows_of(batches: list[Any]) -> list[int]:
    return [int(i) for b in batches for i in b["row"].tolist()]


def make(source: Any, **kwargs: Any) -> AsyncDataset:
    return AsyncDataset(source, columns=["row"], shuffle=True, seed=11, fetch_size=3, **kwargs)


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(0, 90),
    num_workers=st.integers(0, 2),
    world_size=st.integers(1, 2),
    batch_size=st.integers(1, 9),
    epoch=st.integers(0, 5),
    stop=st.integers(0, 30),
    ordered=st.booleans(),
    backend=st.sampled_from(["asyncio", "trio"]),
)
def test_resume_yields_exactly_the_rest_then_the_next_epoch(
    rows: int,
    num_workers: int,
    world_size: int,
    batch_size: int,
    epoch: int,
    stop: int,
    ordered: bool,
    backend: str,
) -> None:
    source = JitterSource(rows)  # completes out of order: ordered=False really is unordered
    for rank in range(world_size):
        options = {"rank": rank, "world_size": world_size, "backend": backend, "ordered": ordered}

        def loader(ds: AsyncDataset) -> StatefulDataLoader:
            return StatefulDataLoader(ds, batch_size=batch_size, num_workers=num_workers)

        # One dataset across epochs, as in training: the reference epochs, then the cut.
        ds = make(source, **options)
        ds.set_epoch(epoch)
        full_batches = list(loader(ds))
        full = rows_of(full_batches)
        ds.set_epoch(epoch + 1)
        following = rows_of(list(loader(ds)))
        # A checkpoint after StopIteration means "epoch over" to StatefulDataLoader
        # (the next iteration starts afresh), so stop at the last batch at most.
        stop = min(stop, len(full_batches))
        ds.set_epoch(epoch)
        first_loader = loader(ds)
        it = iter(first_loader)
        before = [batch for _, batch in zip(range(stop), it, strict=False)]
        state = json.loads(json.dumps(first_loader.state_dict()))  # survives JSON
        del it, first_loader

        resumed_ds = make(source, **options)  # a new process: no set_epoch, only the state
        resumed_loader = loader(resumed_ds)
        resumed_loader.load_state_dict(state)
        after = rows_of(list(resumed_loader))
        if ordered:
            assert rows_of(before) + after == full
        else:
            assert sorted(rows_of(before) + after) == sorted(full)
        # The epoch after the resumed one follows by itself (no set_epoch).
        next_epoch = rows_of(list(resumed_loader))
        assert next_epoch == following if ordered else sorted(next_epoch) == sorted(following)


@pytest.mark.parametrize("ordered", [True, False])
def test_plain_dataloader_resumes_in_the_main_process(backend: str, ordered: bool) -> None:
    ds = make(JitterSource(50), backend=backend, ordered=ordered, concurrency=16)
    ds.set_epoch(2)
    full = [s["row"] for s in ds]
    ds.set_epoch(2)
    it = iter(ds)
    before = [next(it)["row"] for _ in range(17)]
    state = ds.state_dict()
    it.close()
    assert state["epoch"] == 2
    assert state["position"] + len(state["delivered"]) == 17
    again = make(JitterSource(50), backend=backend, ordered=ordered, concurrency=16)
    again.load_state_dict(json.loads(json.dumps(state)))
    after = [s["row"] for s in again]
    if ordered:
        assert before + after == full
    else:
        assert sorted(before + after) == list(range(50))
        assert not set(before) & set(after)
    # The resume point is used once: the next iteration is the next whole epoch.
    assert again.epoch == 3
    assert sorted(s["row"] for s in again) == list(range(50))


def test_a_new_epoch_drops_the_resume_point() -> None:
    ds = make(rows_source(20))
    it = iter(ds)
    for _ in range(15):
        next(it)
    state = ds.state_dict()
    it.close()
    resumed = make(rows_source(20))
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    assert len(list(resumed)) == 20


def saved(**changes: Any) -> dict[str, Any]:
    ds = make(rows_source(5))
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    it.close()
    for key, value in changes.items():
        if key in state["dataset"]:
            state["dataset"][key] = value
        elif value is None:
            del state[key]
        else:
            state[key] = value
    return state


@pytest.mark.parametrize(
    ("state", "error", "match"),
    [
        (saved(seed=12), StateError, "seed=12"),
        (saved(num_rows=6), StateError, "num_rows=6"),
        (saved(shuffle=False), StateError, "shuffle=False"),
        (saved(even=True), StateError, "even=True"),
        (saved(position=None), StateError, "position"),
        (saved(version=1), StateError, "version"),
        (saved(epoch=-1), ValueError, "epoch"),
        (saved(position="3"), TypeError, "position"),
        (saved(delivered=[0]), StateError, "overlap"),
        ([1, 2], TypeError, "state_dict"),
    ],
)
def test_a_state_that_cannot_be_honoured_is_rejected(
    state: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        make(rows_source(5)).load_state_dict(state)


TRAIN_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
    from torchdata.stateful_dataloader import StatefulDataLoader
    from anyloader import AsyncDataset

    url, ckpt, backend = sys.argv[1:4]
    ds = AsyncDataset(url, columns=["masks"], backend=backend, shuffle=True, seed=3,
                      return_index=True)
    ds.set_epoch(1)
    loader = StatefulDataLoader(ds, batch_size=4, num_workers=2)
    rows = []
    if os.path.exists(ckpt):
        saved = torch.load(ckpt, weights_only=False)
        loader.load_state_dict(saved["loader"])
        rows = saved["rows"]
    for step, batch in enumerate(loader):
        rows += batch["index"].tolist()
        # The rows trained on and the loader's state, saved together and atomically:
        # a kill never leaves one without the other, or half a file.
        torch.save({"loader": loader.state_dict(), "rows": rows}, ckpt + ".tmp")
        os.replace(ckpt + ".tmp", ckpt)
        print(step, flush=True)
    print("done", flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_in_a_new_process(
    pairs_url: str, backend: str, tmp_path: Path
) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    ckpt = tmp_path / "ckpt.pt"

    def run(until_step: int | None) -> None:
        cmd = [sys.executable, str(script), pairs_url, str(ckpt), backend]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if until_step is not None and line.strip() == str(until_step):
                    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up or save
                    break
            proc.wait(timeout=60)
        assert proc.returncode == (-signal.SIGKILL if until_step is not None else 0)

    run(until_step=9)
    killed_rows = torch.load(ckpt, weights_only=False)["rows"]
    # At least the 10 steps printed (the kill may land a step or two later), not all.
    assert 40 <= len(killed_rows) < 97
    run(until_step=None)
    all_rows = torch.load(ckpt, weights_only=False)["rows"]
    assert all_rows[: len(killed_rows)] == killed_rows
    assert sorted(all_rows) == list(range(97)), "a row was lost or read twice across the kill"

    uninterrupted = AsyncDataset(
        pairs_url, columns=["masks"], shuffle=True, seed=3, return_index=True
    )
    uninterrupted.set_epoch(1)
    loader: Callable[[], Any] = lambda: StatefulDataLoader(  # noqa: E731
        uninterrupted, batch_size=4, num_workers=2
    )
    expected = [i for b in loader() for i in b["index"].tolist()]
    assert all_rows == expected
