"""One segmentation benchmark run: one loader, one dataset, one store, one epoch, in this process.

Usage (``benchmarks.segmentation`` does this through ``benchmarks.runner``)::

    python -m benchmarks.seg_worker '<task json>'

The task is ``runner.worker_task``'s (a :class:`~benchmarks.seg_loaders.SegSpec`,
the store, the batch size, the result path) plus ``columns``. The dataset is
opened and every loader's modules imported before the clock starts; the clock
runs from creating the loader to its shutdown after the last batch. Measured:
rows/s (``samples_per_s``, as ``benchmarks.worker`` names it), the time to the
first batch (``batch_size`` rows) and to the first ``FIRST_ROWS`` rows, CPU
seconds (process tree) and peak RSS (``Monitor``), the first batch's image and
mask shape and dtype, and the rows delivered: every batch names its rows, so
``missing`` and ``repeated`` count the rows not delivered and those delivered
more than once. The result is written before the interpreter exits, so a crash
at exit (recorded by the runner) cannot lose it.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .measure import Monitor
from .runner import DONE_MARKER
from .seg_loaders import SegSpec, batches

__all__ = ["FIRST_ROWS", "run_task"]

#: The startup question: how long until this many rows have arrived.
FIRST_ROWS = 200


def _form(value: Any) -> str | None:
    shape = getattr(value, "shape", None)
    return None if shape is None else f"{getattr(value, 'dtype', '?')} {tuple(shape)}"


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Run the task; return its measurements (see the module docstring)."""
    import deeplake
    import torch  # imported before the clock: first-import time is not loading time
    import torch.utils.data

    import anyloader  # noqa: F401
    from anyloader._engine.loop_thread import load_backend

    from . import seg_fetch  # noqa: F401

    load_backend("asyncio")
    spec = SegSpec.from_json(task["spec"])
    if spec.family == "spdl":
        import spdl.pipeline  # noqa: F401
    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    store, batch_size = task["store"], int(task["batch_size"])
    ds = deeplake.open_read_only(store["url"], creds=store["creds"])
    total = len(ds)
    seen: Counter[int] = Counter()
    first: dict[str, float] = {}
    forms: dict[str, str | None] = {}
    with Monitor() as monitor:
        start = time.perf_counter()
        loader = batches(spec, ds, list(task["columns"]), batch_size)
        try:
            for batch in loader:
                seen.update(int(i) for i in batch["index"])
                rows = seen.total()
                if not forms:
                    forms = {c: _form(batch.get(c)) for c in ("images", "masks")}
                for key, at in (("batch", batch_size), ("rows", FIRST_ROWS)):
                    if key not in first and rows >= min(at, total):
                        first[key] = time.perf_counter() - start
        finally:
            loader.close()
        seconds = time.perf_counter() - start
    usage = monitor.usage
    assert usage is not None
    rows = seen.total()
    return {
        "loader": spec.name,
        "family": spec.family,
        "store": store["name"],
        "rows": total,
        "samples": rows,
        "seconds": seconds,
        "samples_per_s": rows / seconds if seconds > 0 else 0.0,
        "first_batch_s": first.get("batch", seconds),
        "first_rows_s": first.get("rows", seconds),
        "cpu_s": usage.cpu_s,
        "peak_rss_bytes": usage.peak_rss_bytes,
        "missing": sum(1 for r in range(total) if r not in seen),
        "repeated": sum(n - 1 for n in seen.values() if n > 1),
        "images": forms.get("images"),
        "masks": forms.get("masks"),
    }


def main(argv: list[str] | None = None) -> None:
    task = json.loads((argv or sys.argv[1:])[0])
    Path(task["out"]).write_text(json.dumps(run_task(task)))
    print(DONE_MARKER, flush=True)  # then exit: how it exits is measured too


if __name__ == "__main__":
    main()
