"""A short soak: ``benchmarks/soak.py`` over several epochs with faults, in a fresh process.

The full soak (20 epochs over 3,000 rows) is ``python -m benchmarks.soak``;
this one keeps the same checks at a size CI can afford: every epoch
exactly-once with matching contents under injected faults, and RSS (current
and peak) after the last epoch within 10% of after epoch 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 12
ROWS = 400


@pytest.mark.slow
def test_memory_stays_flat_over_epochs_with_faults(
    make_pairs: Callable[[int], str], backend: str
) -> None:
    url = make_pairs(ROWS)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.soak",
            "--url",
            url,
            "--epochs",
            str(EPOCHS),
            "--backend",
            backend,
            "--transient-rate",
            "0.1",
            "--json",
        ],
        cwd=ROOT,
        # One malloc arena: see below.
        env={**os.environ, "MALLOC_ARENA_MAX": "1"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr == ""
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["epochs"] == EPOCHS
    assert [r["rows"] for r in summary["records"]] == [ROWS] * EPOCHS
    assert summary["rss_drift"] <= 0.10
    assert summary["peak_rss_drift"] <= 0.10
    # In absolute terms too, once warm. Decode threads are new every epoch, and with
    # glibc's default per-thread malloc arenas RSS creeps up for 10-15 epochs before it
    # settles (+12-20 MiB, by chance of which thread freed what), which hid small leaks
    # and failed this check by chance; with one arena it is flat from epoch 2 (peak within
    # 1 MiB). An epoch's rows are about 6.5 MiB here, so a leak of every fetched row adds
    # about 39 MiB over epochs 6-12 (within 10% of ~300 MiB: the relative check alone
    # let it pass).
    records = summary["records"]
    for key in ("rss_mib", "peak_rss_mib"):
        assert records[-1][key] - records[5][key] <= 12, [r[key] for r in records]
    # Faults were injected, and each cost at least one retry (a timeout may add one).
    assert summary["faults_injected"] > 0
    assert summary["retries"] >= summary["faults_injected"]
