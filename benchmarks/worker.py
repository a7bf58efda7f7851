"""One benchmark run: one loader, one store, one epoch, in this (fresh) process.

Usage (the harness does this; you rarely need to)::

    python -m benchmarks.worker '<task json>'

The task names a :class:`~benchmarks.loaders.LoaderSpec`, a store (URL and
creds), the batch size and a path. The run opens the dataset (not timed),
reads one epoch, and writes its measurements to that path as JSON before the
interpreter exits, so a crash at exit (which the harness records from the
exit status) cannot lose them.

The clock starts when the loader is created and stops after the last batch
and the loader's shutdown; time to first batch is when ``batch_size``
samples have arrived. On the S3 store the run also records the GET requests
the store answered in that window (``gets``, ``get_bytes``) and the CPU time
the store spent (``store_cpu_s``), read from the server's counters just
outside the clock; ``None`` on a local store.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from . import s3_server
from .loaders import LoaderSpec, batches
from .measure import Monitor
from .runner import DONE_MARKER

__all__ = ["run_task"]


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Run the task; return its measurements (see the module docstring)."""
    import deeplake

    # Import every loader's modules (torch above all) before the clock starts:
    # first-import time is not loading time.
    import torch
    import torch.utils.data

    import anyloader  # noqa: F401

    from . import ceiling, documented  # noqa: F401

    spec = LoaderSpec.from_json(task["spec"])
    if spec.backend:  # AnyIO's backend module too (AsyncDataset would import it on construction)
        from anyloader._engine.loop_thread import load_backend

        load_backend(spec.backend)
    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    store = task["store"]
    batch_size = int(task["batch_size"])
    ds = deeplake.open_read_only(store["url"], creds=store["creds"])
    endpoint = store["creds"].get("endpoint_url")
    # Opening reads metadata: count only the epoch's requests.
    before = s3_server.counts(endpoint) if endpoint else None
    samples = 0
    first_batch_s: float | None = None
    with Monitor() as monitor:
        start = time.perf_counter()
        loader = batches(spec, ds, batch_size)
        try:
            for count in loader:
                samples += count
                if first_batch_s is None and samples >= min(batch_size, len(ds)):
                    first_batch_s = time.perf_counter() - start
        finally:
            loader.close()
        seconds = time.perf_counter() - start
    after = s3_server.counts(endpoint) if endpoint else None
    traffic = {k: after[k] - before[k] for k in after} if after and before else {}
    usage = monitor.usage
    assert usage is not None
    return {
        "loader": spec.name,
        "family": spec.family,
        "store": store["name"],
        "rows": len(ds),
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds if seconds > 0 else 0.0,
        "first_batch_s": first_batch_s if first_batch_s is not None else seconds,
        "cpu_s": usage.cpu_s,
        "cpu_s_per_sample": usage.cpu_s / samples if samples else None,
        "peak_rss_bytes": usage.peak_rss_bytes,
        "gets": traffic.get("gets"),
        "get_bytes": traffic.get("get_bytes"),
        "store_cpu_s": traffic["cpu_ms"] / 1000 if "cpu_ms" in traffic else None,
    }


def main(argv: list[str] | None = None) -> None:
    task = json.loads((argv or sys.argv[1:])[0])
    result = run_task(task)
    out = Path(task["out"])
    out.write_text(json.dumps(result))
    print(DONE_MARKER)
    # Leave stdout/stderr flushed before exit: what happens at exit is measured too.
    sys.stdout.flush()
    sys.stderr.flush()


if __name__ == "__main__":
    main()
