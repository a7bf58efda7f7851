"""Segmentation benchmark: anyloader against its peers on photo-like image/mask data, side by side.

Usage::

    .venv/bin/python -m benchmarks.segmentation                # full: 6 datasets, 3 repeats
    .venv/bin/python -m benchmarks.segmentation --repeats 1    # one run of everything (~35 min)
    .venv/bin/python -m benchmarks.segmentation --quick        # 64 rows, 3 small datasets, < 2 min
    .venv/bin/python -m benchmarks.segmentation --datasets coco-like,256px --stores local \\
        --loaders spdl,anyloader-geometry-batch,ceiling

Options: ``--rows N`` (default 2000, 1024 px gets half; quick 64), ``--datasets
coco-like,64px,...``, ``--stores local,s3`` and ``--s3-datasets coco-like,256px``
(which datasets also run from S3), ``--latency-ms 20``, ``--repeats 3``,
``--loaders NAME|FAMILY,...``, ``--out benchmarks/results/segmentation``,
``--cache-dir benchmarks/results/cache``, ``--timeout S`` per run, ``--exit-grace S``.
``spdl`` needs ``pip install spdl`` (the ``bench`` extra); without it its runs fail
and are reported as failed.

What runs. The workload is the same for every loader: a random-resized crop to
256x256 (scale 0.25-1, ratio 3/4-4/3) and a horizontal flip (p=0.5) of image and
mask together, boxes moved with them, batches of 32 with uint8 images, bool
masks and ragged columns (boxes, captions) as lists (``benchmarks.seg_augment``).

* ``deeplake-pytorch-w2``, ``-w4``: ``DataLoader(ds.pytorch(transform=...),
  batch_size=32, num_workers=N)``, the augmentation a per-sample Python transform
  (torchvision's crop sampling with ``random``, ``F.interpolate`` bilinear
  antialiased on the image, ``nearest-exact`` on the mask, ``torch.flip``);
* ``batched-read-w2``, ``-w4``: a map dataset whose ``__getitems__`` reads
  ``ds[column][rows]`` for the batch (deeplake decodes it in C++), the same
  per-row transform, in DataLoader workers;
* ``spdl-fFxN-tT``: an SPDL pipeline (F rows a request, N requests in flight, T
  decode threads) awaiting deeplake's futures, decoding with anyloader's own
  DCT-scaled libjpeg-turbo routine: SPDL at its strongest (``benchmarks.seg_fetch``);
* ``anyloader-python-transform``: per-sample mode, no geometry, the Python
  transform above (with a collate that stacks its images);
* ``anyloader-geometry-batch`` / ``-sample``: ``geometry=RandomResizedCrop(...)``
  at decode, batch mode / per-sample mode, default settings, ``num_workers=0``;
  ``-t1``: per sample after ``torch.set_num_threads(1)`` (the transform and the
  collate run torch ops on the training thread, whose OpenMP team fights the
  decode threads for the cores);
* ``anyloader-geometry-batch-fFxC``: batch mode with ``fetch_size=F,
  concurrency=C`` (the defaults are 1 x 64, i.e. ``anyloader-geometry-batch``);
* ``ceiling-fFxN``: no loader: bytes and values of F rows a request, N in
  flight, placed by the same routine on one thread per core, results dropped.

Protocol. Datasets are built once and cached (``benchmarks.seg_datasets``); the
S3 store (moto, ``--latency-ms`` per GET) gets a copy of each S3 dataset. Every
run is one epoch in a fresh process (``benchmarks.runner`` and
``benchmarks.seg_worker``), the loader order rotated by one between repeats.
Per run: rows/s, time to the first batch and to the first 200 rows, CPU per row
(process tree), peak RSS, how the process exited, and whether every row came
exactly once. The report (``benchmarks.seg_report``) gives medians, ratios and
the targets, met or missed, and writes ``segmentation.json``, ``segmentation.md``
and ``segmentation.png`` to ``--out``, with each run's log in ``logs/`` and raw
result in ``runs/``. The exit status is 1 if an anyloader or ceiling run failed
(a peer failing is a finding, in the report), 2 for bad arguments, 130 on Ctrl-C
(every worker and the S3 server stopped).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from tqdm import tqdm

from . import datasets, runner, s3_server, seg_report
from .machine import describe
from .run import schedule
from .runner import DEFAULT_CACHE, exit_with, run_in_subprocess, worker_task
from .seg_datasets import SegData, build, default_datasets
from .seg_loaders import SegSpec, default_specs

__all__ = ["main"]

BATCH_SIZE = 32
DEFAULT_OUT = DEFAULT_CACHE.parent / "segmentation"
MUST_SUCCEED = ("anyloader-python-transform", "anyloader-geometry", "ceiling")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.segmentation", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny datasets, fewer settings")
    parser.add_argument("--rows", type=int, help="rows per dataset (default 2000; quick 64)")
    parser.add_argument("--datasets", help="comma-separated dataset names (default: all)")
    parser.add_argument("--stores", default="local,s3", help="comma-separated: local,s3")
    parser.add_argument(
        "--s3-datasets", default="coco-like,256px", help="datasets also read from S3"
    )
    parser.add_argument("--latency-ms", type=float, default=20.0, help="S3 latency per GET")
    parser.add_argument("--repeats", type=int, help="runs per loader (default 3; quick 1)")
    parser.add_argument("--loaders", help="comma-separated loader names or families")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="dataset cache")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per run")
    parser.add_argument("--exit-grace", type=float, help="seconds a run may take to exit")
    args = parser.parse_args(argv)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    args.exit_grace = args.exit_grace if args.exit_grace is not None else 15.0
    args.stores = [s for s in args.stores.split(",") if s]
    if not args.stores or set(args.stores) - {"local", "s3"}:
        parser.error("--stores takes a comma-separated subset of local,s3")
    if args.repeats < 1 or (args.rows is not None and args.rows < 1):
        parser.error("--rows and --repeats must be >= 1")
    args.data = default_datasets(args.quick, args.rows)
    if args.datasets:
        wanted = args.datasets.split(",")
        unknown = set(wanted) - {d.name for d in args.data}
        if unknown:
            parser.error(
                f"unknown dataset(s) {sorted(unknown)}; known: {[d.name for d in args.data]}"
            )
        args.data = [d for d in args.data if d.name in wanted]
    try:
        args.specs = select(default_specs(args.quick), args.loaders)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def select(specs: list[SegSpec], names: str | None) -> list[SegSpec]:
    """The specs ``names`` picks by name or family, in line-up order (all without names).

    Raises:
        ValueError: a name matches no loader name or family.
    """
    if not names:
        return specs
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    for name in wanted:
        if not any(name in (s.name, s.family) for s in specs):
            raise ValueError(f"no loader named {name!r}; known: {[s.name for s in specs]}")
    return [s for s in specs if s.name in wanted or s.family in wanted]


@contextlib.contextmanager
def _seg_worker() -> Iterator[None]:
    """Point ``runner.run_in_subprocess``, which starts ``benchmarks.worker``, at ours.

    Everything else of the runner (its own session, the timeout, the exit
    classification, killing the process group, holding Ctrl-C while it forks)
    is reused as it is; only the module in its command line changes.
    """

    def popen(cmd: list[str], *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        if cmd[1:3] == ["-m", "benchmarks.worker"]:
            cmd = [cmd[0], "-m", "benchmarks.seg_worker", *cmd[3:]]
        return subprocess.Popen(cmd, *args, **kwargs)

    # The runner's own view of ``subprocess``: every name as it is but ``Popen``.
    shim = types.SimpleNamespace(**{**vars(subprocess), "Popen": popen})
    with mock.patch.object(runner, "subprocess", shim):
        yield


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    for sub in ("logs", "runs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    started, load_before = time.time(), _load()
    machine = describe()  # now: the engine measured is the one at start
    machine["packages"]["spdl"] = _spdl_version()
    local: dict[str, Path] = {}
    for data in args.data:
        print(f"dataset {data.name}: {data.rows} rows (cache: {args.cache_dir})", file=sys.stderr)
        local[data.name] = build(args.cache_dir, data)
    s3_names = set(args.s3_datasets.split(",")) if "s3" in args.stores else set()
    plan: list[tuple[int, str, SegSpec, SegData]] = []
    for data in args.data:
        stores = [s for s in args.stores if s == "local" or data.name in s3_names]
        plan += [(r, s, spec, data) for r, s, spec in schedule(args.specs, stores, args.repeats)]
    runs: list[dict[str, Any]] = []
    serving = (
        s3_server.serve(latency_s=args.latency_ms / 1000)
        if s3_names & set(local)
        else contextlib.nullcontext("")
    )
    with serving as endpoint, _seg_worker():
        stores = {(d.name, "local"): datasets.local_store(local[d.name]) for d in args.data}
        for data in args.data:
            if data.name in s3_names:
                stores[data.name, "s3"] = datasets.s3_dataset(endpoint, local[data.name])
        with tqdm(plan, desc="segmentation", unit="run", file=sys.stderr) as bar:
            for repeat, store_name, spec, data in bar:
                bar.set_postfix_str(f"{data.name}/{store_name}/{spec.name}")
                stem = f"{data.name}-{store_name}-{spec.name}-r{repeat}"
                task = worker_task(spec, stores[data.name, store_name], BATCH_SIZE, out, stem)
                task["columns"] = data.columns
                result = run_in_subprocess(
                    task, out / "logs" / f"{stem}.log", args.timeout, args.exit_grace
                )
                result.update(
                    loader=spec.name,
                    family=spec.family,
                    store=store_name,
                    dataset=data.name,
                    repeat=repeat,
                    spec=spec.to_json(),
                )
                runs.append(result)
    settings = {
        "datasets": {d.name: d.rows for d in args.data},
        "stores": args.stores,
        "s3_datasets": sorted(s3_names),
        "repeats": args.repeats,
        "latency_ms": args.latency_ms,
        "batch_size": BATCH_SIZE,
        "quick": args.quick,
        "loaders": [s.name for s in args.specs],
        "wall_s": round(time.time() - started, 1),
        "load_before": load_before,
        "load_after": _load(),
    }
    document = {"settings": settings, "machine": machine, "runs": runs}
    print(seg_report.write_all(out, document))
    failed = [r for r in runs if not r.get("ok")]
    for line in map(_failure, failed):
        print(line, file=sys.stderr)
    return 1 if any(r["family"] in MUST_SUCCEED for r in failed) else 0


def _failure(run: dict[str, Any]) -> str:
    where = f"{run['dataset']}/{run['store']}/{run['loader']} repeat {run['repeat']}"
    return f"FAILED {where}: {run['exit']}\n{run['error']}"


def _spdl_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("spdl")
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    exit_with(main)
