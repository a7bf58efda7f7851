"""Soak: many epochs with shuffle, a transform and injected faults; memory must stay flat.

Usage::

    .venv/bin/python -m benchmarks.soak [--rows 3000] [--epochs 20] [--backend asyncio]
        [--size 64] [--batch-size 32] [--transient-rate 0.05] [--hang-rate 0.01]
        [--url file:///existing/dataset] [--json]

It builds a deeplake dataset of ``rows`` image/mask pairs in a temporary
directory (or reads ``--url``), wraps it in a ``FaultySource`` (transient
errors and stragglers cut by a per-attempt timeout), and runs ``epochs``
epochs of ``DataLoader(AsyncDataset(..., shuffle=True, transform=...))``.
After each epoch it prints one line: rows, seconds, current and peak RSS,
faults injected and retries taken. Every epoch must yield every row exactly
once with each image matching its mask.

Exit status: 0 when every epoch was exactly-once and both the RSS and the peak
RSS after the last epoch are within ``--max-drift`` (10%) of their values
after epoch 2 (epoch 1 warms allocator pools and deeplake's caches); 1
otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader

from anyloader import AsyncDataset, DeeplakeSource, FaultySource
from anyloader._sources.synthetic import create_image_mask_dataset, read_row_id

__all__ = ["main", "soak"]

FETCH_SIZE = 4


def to_tensors(sample: dict[str, Any]) -> dict[str, Any]:
    """A typical training transform: CHW float image in [0, 1], float mask, row index."""
    image = torch.from_numpy(sample["images"]).permute(2, 0, 1).float().div_(255.0)
    mask = torch.from_numpy(sample["masks"]).permute(2, 0, 1).float()
    return {"image": image, "mask": mask, "index": sample["index"]}


def _mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def soak(
    url: str,
    *,
    epochs: int,
    backend: str = "asyncio",
    batch_size: int = 32,
    transient_rate: float = 0.05,
    hang_rate: float = 0.01,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Run ``epochs`` epochs over ``url``; return one record per epoch.

    Raises:
        AssertionError: an epoch missed or repeated a row, or an image did not match its mask.
    """
    faulty = FaultySource(
        DeeplakeSource(url),
        seed=seed,
        transient_rate=transient_rate,
        hang_rate=hang_rate,
        hang_seconds=math.inf,
    )
    dataset = AsyncDataset(
        faulty,
        backend=backend,
        fetch_size=FETCH_SIZE,
        shuffle=True,
        seed=seed,
        transform=to_tensors,
        return_index=True,
        retries=20,
        timeout=0.25,
    )
    rows = len(faulty)
    groups = math.ceil(rows / FETCH_SIZE)
    process = psutil.Process()
    records: list[dict[str, Any]] = []
    for epoch in range(1, epochs + 1):
        dataset.set_epoch(epoch)
        before = (faulty.stats.calls, faulty.stats.injected)
        seen = np.zeros(rows, np.int64)
        started = time.perf_counter()
        for batch in DataLoader(dataset, batch_size=batch_size):
            index = batch["index"].numpy()
            np.add.at(seen, index, 1)
            # Spot-check contents: the mask of the first sample carries its row id.
            mask = batch["mask"][0].permute(1, 2, 0).numpy()
            assert read_row_id(mask) == index[0], f"row {index[0]}: wrong mask"
        seconds = time.perf_counter() - started
        assert (seen == 1).all(), (
            f"epoch {epoch}: rows not exactly once: {np.flatnonzero(seen != 1)}"
        )
        calls, injected = faulty.stats.calls - before[0], faulty.stats.injected - before[1]
        records.append(
            {
                "epoch": epoch,
                "rows": int(seen.sum()),
                "seconds": round(seconds, 3),
                "rows_per_s": round(rows / seconds, 1),
                "rss_mib": _mib(process.memory_info().rss),
                # ru_maxrss is in KiB on Linux.
                "peak_rss_mib": _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
                "faults_injected": injected,
                "retries": calls - groups,
            }
        )
    return records


def drift(records: Sequence[dict[str, Any]], key: str) -> float:
    """Relative growth of ``key`` from epoch 2 to the last epoch."""
    return float(records[-1][key] / records[1][key] - 1.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--transient-rate", type=float, default=0.05)
    parser.add_argument("--hang-rate", type=float, default=0.01)
    parser.add_argument("--max-drift", type=float, default=0.10)
    parser.add_argument("--url", help="read this dataset instead of building one")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (drift is measured from epoch 2)")

    with tempfile.TemporaryDirectory(prefix="anyloader-soak-") as tmp:
        url = args.url
        if url is None:
            url = f"file://{Path(tmp) / 'pairs'}"
            create_image_mask_dataset(url, args.rows, size=args.size)
        records = soak(
            url,
            epochs=args.epochs,
            backend=args.backend,
            batch_size=args.batch_size,
            transient_rate=args.transient_rate,
            hang_rate=args.hang_rate,
        )
    for r in records:
        print(
            f"epoch {r['epoch']:3d}  {r['rows']} rows  {r['seconds']:7.2f} s  "
            f"{r['rows_per_s']:8.1f} rows/s  RSS {r['rss_mib']:7.1f} MiB  "
            f"peak {r['peak_rss_mib']:7.1f} MiB  faults {r['faults_injected']:4d}  "
            f"retries {r['retries']:4d}",
            flush=True,
        )
    summary = {
        "backend": args.backend,
        "rows": records[0]["rows"],
        "epochs": len(records),
        "rss_drift": round(drift(records, "rss_mib"), 4),
        "peak_rss_drift": round(drift(records, "peak_rss_mib"), 4),
        "faults_injected": sum(r["faults_injected"] for r in records),
        "retries": sum(r["retries"] for r in records),
        "exactly_once_epochs": len(records),
        "records": records,
    }
    ok = summary["rss_drift"] <= args.max_drift and summary["peak_rss_drift"] <= args.max_drift
    print(
        f"RSS drift epoch 2 -> {len(records)}: {summary['rss_drift']:+.1%} "
        f"(peak {summary['peak_rss_drift']:+.1%}); faults injected {summary['faults_injected']}, "
        f"retries {summary['retries']}; {'OK' if ok else 'FAIL'}",
        flush=True,
    )
    if args.json:
        print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
