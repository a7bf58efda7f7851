"""What always-on epoch stats cost: anyloader before them against this checkout, in one process.

``git archive BASE src/anyloader`` is unpacked as the package ``anyloader_base`` next to this
checkout's ``anyloader``; the same epochs run on both, alternated (the order flips every round),
and the report gives median CPU time per row and the ratio. One process and alternation keep
drift in the machine's load out of the ratio; an A/A pair (the base twice) shows the noise.

Cases: an in-memory source with no work per row (the engine's own overhead, the worst case:
``open_stream`` and ``AsyncDataset`` with ``fetch_size=1``, batch mode with ``fetch_size=8``),
and with ``--url`` a deeplake store in batch mode (what training sees).

    python -m benchmarks.stats_overhead --base 26aa50c [--url file:///.../pairs-2000x512-seed0]
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def unpack_base(revision: str, into: Path) -> None:
    """Unpack ``src/anyloader`` at ``revision`` as ``into/anyloader_base`` (and a twin, A/A)."""
    archive = subprocess.run(
        ["git", "archive", revision, "src/anyloader"], cwd=REPO, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    # The package imports itself relatively, so a renamed copy is an independent package.
    (into / "src" / "anyloader").rename(into / "anyloader_base")
    shutil.copytree(into / "anyloader_base", into / "anyloader_twin")


def _rows_source(mod: Any, rows: int) -> Any:
    import numpy as np

    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    return mod.MemorySource({"x": x, "y": np.arange(rows)})


def _dataset(mod: Any, source: Any, **options: Any) -> float:
    start = time.process_time()
    for _ in mod.AsyncDataset(source, **options):
        pass
    return time.process_time() - start


def _stream(mod: Any, source: Any, **options: Any) -> float:
    import anyio

    async def epoch() -> None:
        async with mod.open_stream(source, **options) as samples:
            async for _ in samples:
                pass

    start = time.process_time()
    anyio.run(epoch)
    return time.process_time() - start


def measure(url: str | None, rows: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median CPU seconds per row, per case and build."""
    import anyloader_base  # type: ignore[import-not-found]
    import anyloader_twin  # type: ignore[import-not-found]

    import anyloader

    builds = {"base": anyloader_base, "twin": anyloader_twin, "stats": anyloader}
    memory = {name: _rows_source(mod, rows) for name, mod in builds.items()}
    cases: dict[str, tuple[Any, dict[str, Any], int]] = {
        "open_stream, memory, fetch_size=1": (_stream, {}, rows),
        "AsyncDataset, memory, fetch_size=1": (_dataset, {}, rows),
        "AsyncDataset, memory, batch_size=32 fetch_size=8": (
            _dataset,
            {"batch_size": 32, "fetch_size": 8},
            rows,
        ),
    }
    if url is not None:
        opened = anyloader_base.AsyncDataset(url)
        cases["AsyncDataset, deeplake store, batch_size=32"] = (
            _dataset,
            {"batch_size": 32},
            len(opened),
        )
        for mod in builds.values():  # deeplake's chunk cache, warm for every build alike
            _dataset(mod, url, batch_size=32)
    seconds: dict[str, dict[str, list[float]]] = {case: {b: [] for b in builds} for case in cases}
    order = list(builds)
    for r in range(rounds + 1):  # round 0 warms up (imports, first threads) and is dropped
        for case, (run, options, n) in cases.items():
            for name in order[r % 3 :] + order[: r % 3]:
                source = memory[name] if "memory" in case else url
                took = run(builds[name], source, **options) / n
                if r:
                    seconds[case][name].append(took)
    return {
        case: {name: statistics.median(values) for name, values in by.items()}
        for case, by in seconds.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision before stats, e.g. 26aa50c")
    parser.add_argument("--url", help="a deeplake dataset to measure too (batch mode)")
    parser.add_argument("--rows", type=int, default=10_000, help="rows of the in-memory source")
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        unpack_base(args.base, Path(scratch))
        sys.path[:0] = [scratch, str(REPO / "src")]
        medians = measure(args.url, args.rows, args.rounds)
    print(f"median CPU us per row over {args.rounds} alternated epochs; stats/base and twin/base:")
    for case, by in medians.items():
        base = by["base"]
        print(
            f"  {case:50} base {base * 1e6:8.2f}  stats {by['stats'] * 1e6:8.2f}  "
            f"stats/base {by['stats'] / base:.3f}  (A/A twin/base {by['twin'] / base:.3f})"
        )


if __name__ == "__main__":
    main()
