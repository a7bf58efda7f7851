"""Real ranks (torch.distributed, gloo on loopback), each with DataLoader worker processes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

import anyloader
from anyloader import AsyncDataset

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_main(rank: int, world_size: int, port: int, url: str, out: str, start: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        report: dict[str, object] = {}
        for even in (False, True):
            ds = AsyncDataset(
                url, columns=["masks"], shuffle=True, seed=1, return_index=True, even=even
            )
            ds.set_epoch(2)
            loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=start)
            rows = [i for batch in loader for i in batch["index"].tolist()]
            gathered: list[object] = [None] * world_size
            dist.all_gather_object(gathered, {"rows": rows, "len": len(ds)})
            report[str(even)] = gathered
            report[f"skipped-{even}"] = ds.skipped_rows
        if rank == 0:
            Path(out).write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("world_size", "start"), [(2, "fork"), (3, "spawn")], ids=["2-ranks-fork", "3-ranks-spawn"]
)
def test_ranks_times_workers_read_every_row_exactly_once(
    pairs_url: str, tmp_path: Path, world_size: int, start: str
) -> None:
    out = tmp_path / "report.json"
    mp.spawn(
        rank_main,
        args=(world_size, free_port(), pairs_url, str(out), start),
        nprocs=world_size,
        join=True,
    )
    report = json.loads(out.read_text())

    exact = report["False"]
    everything = [i for r in exact for i in r["rows"]]
    assert sorted(everything) == list(range(97))
    assert all(len(r["rows"]) == r["len"] for r in exact)
    assert report["skipped-False"] == 0

    even = report["True"]
    counts = {len(r["rows"]) for r in even}
    assert counts == {97 // world_size}, "DDP needs every rank to take the same steps"
    rows = [i for r in even for i in r["rows"]]
    assert len(rows) == len(set(rows)), "even=True must drop, never duplicate"
    assert 97 - len(rows) == report["skipped-True"] == 97 % world_size


def pickled_rank_main(
    rank: int, world_size: int, port: int, ds: AsyncDataset, out: str, workers: int
) -> None:
    # ``ds`` was built and pickled in the launcher, before any process group existed.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        context = "spawn" if workers else None
        loader = DataLoader(ds, batch_size=2, num_workers=workers, multiprocessing_context=context)
        rows = [int(i) for batch in loader for i in batch["index"].tolist()]
        gathered: list[object] = [None] * world_size
        dist.all_gather_object(gathered, {"rows": rows, "len": len(ds)})
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_dataset_pickled_before_the_process_group_shards_by_rank(
    make_pairs: Callable[[int], str], tmp_path: Path, workers: int
) -> None:
    """Defect 2: pickling fixed (rank, world_size) = (0, 1): every rank read every row."""
    out = tmp_path / "report.json"
    ds = AsyncDataset(make_pairs(10), columns=["masks"], return_index=True)
    mp.spawn(pickled_rank_main, args=(2, free_port(), ds, str(out), workers), nprocs=2, join=True)
    report = json.loads(out.read_text())
    assert [r["len"] for r in report] == [5, 5]
    assert sorted(i for r in report for i in r["rows"]) == list(range(10))


def test_ddp_example_trains_an_epoch_under_torchrun(tmp_path: Path) -> None:
    example = Path(__file__).parents[1] / "examples" / "ddp_train.py"
    env = {**os.environ, "ANYLOADER_CACHE": str(tmp_path)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        str(example), "--rows", "48", "--size", "64", "--workers", "1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Two processes print into one pipe, so their lines may interleave: match, don't split.
    reports = re.findall(r"rank (\d)/2 epoch 0: (\d+) samples", proc.stdout)
    assert sorted(reports) == [("0", "24"), ("1", "24")], proc.stdout


def elastic_rank_main(
    rank: int,
    world_size: int,
    port: int,
    url: str,
    out: str,
    phase: str,
    state: str,
    ordered: bool = True,
) -> None:
    """One rank of a cluster: 2 ranks that stop mid-epoch, or 3 that resume."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        ds = AsyncDataset(
            url, columns=["masks"], shuffle=True, seed=3, return_index=True, ordered=ordered
        )
        # Spawned workers resume the ordered run; fork keeps the unordered one quick.
        workers, start = (2, "fork") if phase == "stop" or not ordered else (2, "spawn")
        loader = anyloader.DataLoader(
            ds, batch_size=3, num_workers=workers, multiprocessing_context=start
        )
        rows: list[int] = []
        if phase == "stop":
            for step, batch in enumerate(loader):
                rows += batch["index"].tolist()
                if step == 4:  # ranks step in lockstep, as DDP does: each stops after 5
                    break
            # Every rank calls it: with ordered=False it gathers the ranks' out-of-order rows.
            saved = loader.state_dict()
            if rank == 0:  # one rank's state describes every rank
                Path(state).write_text(json.dumps(saved))
        else:
            loader.load_state_dict(json.loads(Path(state).read_text()))
            expected = len(loader)
            batches = [batch["index"].tolist() for batch in loader]
            assert len(batches) == expected, "len(loader) counts the batches it yields"
            rows = [i for batch in batches for i in batch]
        gathered: list[object] = [None] * world_size
        dist.all_gather_object(gathered, rows)
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("ordered", [True, False])
def test_two_ranks_stop_mid_epoch_and_three_ranks_with_spawn_workers_resume(
    pairs_url: str, tmp_path: Path, ordered: bool
) -> None:
    state = str(tmp_path / "state.json")
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    for world_size, phase, out in [(2, "stop", before), (3, "resume", after)]:
        mp.spawn(
            elastic_rank_main,
            args=(world_size, free_port(), pairs_url, str(out), phase, state, ordered),
            nprocs=world_size,
            join=True,
        )
    saved = json.loads(Path(state).read_text())
    assert saved["layout"] == {"world_size": 2, "num_workers": 2, "batch_size": 3}
    assert saved["steps"] == 5
    first = [i for rows in json.loads(before.read_text()) for i in rows]
    second = [i for rows in json.loads(after.read_text()) for i in rows]
    assert len(first) == 2 * 5 * 3
    assert sorted(first + second) == list(range(97)), "the union is the epoch, exactly once"
