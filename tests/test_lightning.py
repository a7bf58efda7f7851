"""PyTorch Lightning DDP: examples/lightning_train.py on 2 CPU ranks (gloo on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from anyloader import AsyncDataset

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightning_train.py"
# 45 rows: odd, so even=True skips one row per epoch. Each rank's 22 rows split
# 11 + 11 over 2 workers, which gives 2 + 2 = 4 batches of at most 8, while
# ceil(22 / 8) = 3: with torch's DataLoader and its len Lightning would stop after 3 steps.
ROWS, BATCH, WORKERS, EPOCHS, STEPS = 45, 8, 2, 2, 4

# Lightning's warning for a sized IterableDataset (lightning/pytorch/utilities/data.py),
# quoted in docs/distributed.md: harmless with anyloader.DataLoader, whose len is exact.
LEN_WARNING = "Your `IterableDataset` has `__len__` defined."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def planned_rows(url: str, rank: int, epoch: int) -> list[int]:
    """The rows anyloader plans for ``rank`` of 2 in ``epoch``, read in this process."""
    ds = AsyncDataset(
        url, columns=["masks"], shuffle=True, even=True, return_index=True, rank=rank, world_size=2
    )
    ds.set_epoch(epoch)
    return sorted(int(sample["index"]) for sample in ds)


@pytest.mark.timeout(120)
def test_lightning_ddp_trains_every_planned_row_once_per_epoch_in_a_new_order(
    tmp_path: Path,
) -> None:
    out = tmp_path / "rows"
    env = {
        **os.environ,
        "ANYLOADER_CACHE": str(tmp_path),
        # Lightning's launcher passes these on to the rank it starts.
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    cmd = [
        sys.executable, str(EXAMPLE), "--out", str(out), "--epochs", str(EPOCHS),
        "--rows", str(ROWS), "--size", "32", "--batch-size", str(BATCH),
        "--workers", str(WORKERS),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]

    records = {}
    for path in out.glob("*.json"):
        record = json.loads(path.read_text())
        records[record["rank"], record["epoch"]] = record
    assert sorted(records) == [(r, e) for r in range(2) for e in range(EPOCHS)], proc.stdout

    planned = ROWS - ROWS % 2
    for epoch in range(EPOCHS):
        ranks = [records[rank, epoch] for rank in range(2)]
        rows = [i for r in ranks for i in r["rows"]]
        assert len(rows) == len(set(rows)) == planned, f"epoch {epoch}: not every row once"
        # DDP needs equal steps on every rank: every batch the workers made, none cut off.
        assert [r["steps"] for r in ranks] == [STEPS, STEPS]
        # Each rank trained on its own share of this epoch (0, then 1: Lightning's
        # iterations advance the epoch), as anyloader plans it.
        for rank, record in enumerate(ranks):
            assert len(record["rows"]) == record["length"] == planned // 2
            assert sorted(record["rows"]) == planned_rows(record["url"], rank, epoch)

    for rank in range(2):
        first, second = (records[rank, epoch]["rows"] for epoch in range(2))
        assert first != second, "the second epoch must be reshuffled"
    # The new order comes from anyloader itself, not from a hook in the example.
    assert not re.search(r"\.set_epoch\(", EXAMPLE.read_text())
    # Lightning warns that the length may be inaccurate; the steps above show it is not.
    assert LEN_WARNING in proc.stderr
