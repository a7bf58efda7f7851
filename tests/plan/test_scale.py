"""A billion-row epoch starts at once and in constant memory: the plan is never stored."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from anyloader import Shard
from anyloader._plan.order import epoch_order
from anyloader._plan.plan import shard_plan

ROWS = 10**9

# Runs in a fresh interpreter so that its peak RSS is this test's alone.
SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    from collections.abc import Sequence

    import anyio
    import numpy as np

    import anyloader


    class Rows:
        # A source of {rows} rows whose only column is the row number: no storage at all.
        columns = ("row",)

        def __len__(self) -> int:
            return {rows}

        async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> dict:
            await anyio.lowlevel.checkpoint()
            return {{"row": np.asarray(indices, dtype=np.int64)}}


    def peak_kib() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    backend = sys.argv[1]
    before = peak_kib()
    started = time.perf_counter()
    ds = anyloader.AsyncDataset(
        Rows(), backend=backend, rank=1, world_size=4, shuffle=True, seed=5
    )
    rows = []
    for sample in ds:
        rows.append(int(sample["row"]))
        if len(rows) == 1000:
            break
    seconds = time.perf_counter() - started
    print(json.dumps(
        {{"rows": rows, "seconds": seconds, "growth_mib": (peak_kib() - before) / 1024,
          "len": len(ds)}}
    ))
    """
).format(rows=ROWS)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_billion_rows_shuffled_start_in_constant_memory(backend: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, backend],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # The targets: the first 1,000 rows within 2 s, peak RSS growth under
    # 64 MiB. A stored permutation would need 8 GB before the first row.
    assert result["seconds"] < 2.0, result["seconds"]
    assert result["growth_mib"] < 64, result["growth_mib"]
    assert result["len"] == ROWS // 4
    # And they are the right rows: rank 1 of 4's first 1,000 in the plan.
    plan = shard_plan(epoch_order(ROWS, seed=5, epoch=0, shuffle=True), Shard(1, 4))
    assert result["rows"] == plan.rows(np.arange(1000, dtype=np.int64)).tolist()
    assert len(set(result["rows"])) == 1000
