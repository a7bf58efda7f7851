"""Pure engine overhead: anyloader over an in-memory source, tiny samples, no I/O.

Rows per second on each backend, two ways: iterating ``AsyncDataset`` in this
process (no DataLoader: the portal hand-off is what is measured) and
``open_stream`` from async code. Each figure is the median of ``repeats``
epochs. Run standalone: ``python -m benchmarks.micro --rows 100000``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import anyio
import numpy as np

import anyloader

__all__ = ["measure_overhead"]


def _source(rows: int) -> anyloader.MemorySource:
    return anyloader.MemorySource(
        {"x": np.arange(rows * 4, dtype=np.float32).reshape(rows, 4), "y": np.arange(rows)}
    )


def _dataset_rate(source: anyloader.MemorySource, backend: str) -> float:
    dataset = anyloader.AsyncDataset(source, backend=backend)
    start = time.perf_counter()
    count = sum(1 for _ in dataset)
    return count / (time.perf_counter() - start)


def _stream_rate(source: anyloader.MemorySource, backend: str) -> float:
    async def consume() -> int:
        count = 0
        async with anyloader.open_stream(source) as samples:
            async for _ in samples:
                count += 1
        return count

    start = time.perf_counter()
    count = anyio.run(consume, backend=backend)
    return count / (time.perf_counter() - start)


def measure_overhead(
    rows: int, repeats: int, backends: tuple[str, ...] = ("asyncio", "trio")
) -> list[dict[str, Any]]:
    """Median rows/s for each (backend, API); runs alternate between them."""
    source = _source(rows)
    apis = {"AsyncDataset": _dataset_rate, "open_stream": _stream_rate}
    rates: dict[tuple[str, str], list[float]] = {(b, a): [] for b in backends for a in apis}
    for _ in range(repeats):
        for backend in backends:
            for api, rate in apis.items():
                rates[backend, api].append(rate(source, backend))
    return [
        {
            "backend": backend,
            "api": api,
            "rows": rows,
            "rows_per_s": statistics.median(values),
            "runs": values,
        }
        for (backend, api), values in rates.items()
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(measure_overhead(args.rows, args.repeats)))


if __name__ == "__main__":
    main()
