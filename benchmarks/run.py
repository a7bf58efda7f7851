"""The benchmark harness: every loader on every store, fresh process per run.

Usage::

    .venv/bin/python -m benchmarks.run [--quick] [--rows N] [--size PX]
        [--latency-ms 20] [--repeats 3] [--out benchmarks/results]
        [--loaders NAME,...] [--stores local,s3]

It builds (once, cached) a dataset of ``rows`` JPEG images with binary masks,
serves a copy from a local moto S3 server with ``latency-ms`` per GET, then
runs each loader for one epoch (batch size 32) on each store, ``repeats``
times, rotating the loader order every repeat. It writes ``results.json``,
``results.md`` and ``results.png`` to ``--out`` and prints the table of
medians. Finally it measures the pure engine overhead on an in-memory source
and, unless ``--no-decode-micro``, runs the decode microbenchmark
(``benchmarks.decode``) whose tables join the report.
The S3 server and every worker process are stopped before it returns, also
on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import datasets, report, s3_server
from .loaders import CEILINGS, LoaderSpec, default_specs
from .machine import describe
from .runner import (
    DEFAULT_CACHE,
    PACKAGE_ROOT,
    child_env,
    exit_with,
    run_in_subprocess,
    worker_task,
)

__all__ = ["main", "select_specs"]

BATCH_SIZE = 32
DEFAULT_OUT = PACKAGE_ROOT / "benchmarks" / "results"
STORES = ("local", "s3")
MUST_SUCCEED = ("anyloader", "sequential", *CEILINGS)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="small dataset, 1 repeat, fewer settings: < 3 min"
    )
    parser.add_argument("--rows", type=int, help="dataset rows (default 2000; quick 256)")
    parser.add_argument("--size", type=int, help="image side in pixels (default 512; quick 256)")
    parser.add_argument(
        "--latency-ms", type=float, default=20.0, help="S3 latency per GET (default 20)"
    )
    parser.add_argument(
        "--repeats", type=int, help="runs per loader and store (default 3; quick 1)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="dataset cache")
    parser.add_argument("--loaders", help="comma-separated loader names or families (default: all)")
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated: local,s3")
    parser.add_argument(
        "--micro-rows", type=int, help="rows of the overhead microbenchmark (0: skip)"
    )
    parser.add_argument(
        "--no-decode-micro",
        dest="decode_micro",
        action="store_false",
        help="skip the decode microbenchmark (default: run it; 16 images in --quick)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per run")
    parser.add_argument(
        "--exit-grace", type=float, help="seconds a run may take to exit (default 15; quick 5)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.rows = args.rows if args.rows is not None else (256 if quick else 2000)
    args.size = args.size if args.size is not None else (256 if quick else 512)
    args.repeats = args.repeats if args.repeats is not None else (1 if quick else 3)
    args.micro_rows = (
        args.micro_rows if args.micro_rows is not None else (20_000 if quick else 100_000)
    )
    args.exit_grace = args.exit_grace if args.exit_grace is not None else (5.0 if quick else 15.0)
    args.stores = [s for s in args.stores.split(",") if s]
    unknown = set(args.stores) - set(STORES)
    if unknown or not args.stores:
        parser.error(f"--stores takes a comma-separated subset of {STORES}")
    if args.rows < 1 or args.repeats < 1 or args.size < 64:
        parser.error("--rows and --repeats must be >= 1, --size >= 64")
    return args


def select_specs(quick: bool, names: str | None) -> list[LoaderSpec]:
    """The loaders to run: all (quick: fewer settings), or those ``names`` picks.

    Raises:
        ValueError: a name matches no loader name or family.
    """
    specs = (
        default_specs(
            pytorch_workers=(0, 2),
            ceiling_deeplake=((1, 64),),
            ceiling_bytes=((8, 16),),
            per_sample_threads=(("", 0),),
        )
        if quick
        else default_specs()
    )
    if not names:
        return specs
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    # "ceiling" names both ceiling families.
    wanted = [w for n in wanted for w in (CEILINGS if n == "ceiling" else (n,))]
    # Selectable by name though not run by default: anyloader in 2 DataLoader workers.
    everything = default_specs(anyloader_workers=(0, 2))
    chosen: list[LoaderSpec] = []
    for name in wanted:
        matches = [s for s in everything if name in (s.name, s.family)]
        if not matches:
            raise ValueError(f"no loader named {name!r}; known: {[s.name for s in everything]}")
        if name in {s.family for s in everything}:  # a family: its settings for this mode
            matches = [s for s in specs if s.family == name] or matches
        chosen += [m for m in matches if m not in chosen]
    return chosen


def schedule(
    specs: list[LoaderSpec], stores: list[str], repeats: int
) -> list[tuple[int, str, LoaderSpec]]:
    """Every (repeat, store, loader), the loader order rotated by one each repeat."""
    plan = []
    for repeat in range(repeats):
        shift = repeat % len(specs)
        order = specs[shift:] + specs[:shift]
        for store in stores:
            plan += [(repeat, store, spec) for spec in order]
    return plan


def run_micro(rows: int, repeats: int) -> list[dict[str, Any]]:
    """The overhead microbenchmark, in its own process like every other run."""
    if rows <= 0:
        return []
    cmd = [sys.executable, "-m", "benchmarks.micro", f"--rows={rows}", f"--repeats={repeats}"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=child_env(), cwd=PACKAGE_ROOT, check=True
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def run_decode_micro(cache_dir: Path, quick: bool) -> dict[str, Any] | None:
    """``benchmarks.decode``'s tables, in its own process like every other run."""
    rows, repeats = (16, 3) if quick else (64, 7)
    cmd = [sys.executable, "-m", "benchmarks.decode", f"--rows={rows}", f"--repeats={repeats}"]
    cmd += ["--png-rows=0" if quick else "--png-rows=16", f"--cache-dir={cache_dir}"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "decode.json"
        subprocess.run(
            [*cmd, f"--json={out}"],
            capture_output=True,
            text=True,
            env=child_env(),
            cwd=PACKAGE_ROOT,
            check=True,
        )
        result: dict[str, Any] = json.loads(out.read_text())
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        specs = select_specs(args.quick, args.loaders)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out: Path = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    started = time.time()
    # Described now, not at the end: the engine being measured is the one at start.
    machine = describe()

    print(
        f"dataset: {args.rows} rows of {args.size}x{args.size} (cache: {args.cache_dir})",
        file=sys.stderr,
    )
    local_dir = datasets.local_dataset(args.cache_dir, args.rows, args.size)
    runs: list[dict[str, Any]] = []
    with s3_server.serve(latency_s=args.latency_ms / 1000) as endpoint:
        stores = {"local": datasets.local_store(local_dir)}
        if "s3" in args.stores:
            stores["s3"] = datasets.s3_dataset(endpoint, local_dir)
        plan = schedule(specs, args.stores, args.repeats)
        with tqdm(plan, desc="benchmark", unit="run", file=sys.stderr) as bar:
            for repeat, store_name, spec in bar:
                bar.set_postfix_str(f"{store_name}/{spec.name}")
                store = stores[store_name]
                stem = f"{store_name}-{spec.name}-r{repeat}"
                task = worker_task(spec, store, BATCH_SIZE, out, stem)
                result = run_in_subprocess(
                    task, out / "logs" / f"{stem}.log", args.timeout, args.exit_grace
                )
                result.setdefault("loader", spec.name)
                result.setdefault("family", spec.family)
                result.setdefault("store", store_name)
                runs.append({**result, "repeat": repeat, "spec": spec.to_json()})
    micro = run_micro(args.micro_rows, args.repeats)
    print("decode microbenchmark ...", file=sys.stderr)
    decode_micro = run_decode_micro(args.cache_dir, args.quick) if args.decode_micro else None

    settings = {
        "rows": args.rows,
        "size": args.size,
        "repeats": args.repeats,
        "latency_ms": args.latency_ms,
        "batch_size": BATCH_SIZE,
        "quick": args.quick,
        "stores": args.stores,
        "loaders": [s.name for s in specs],
        "wall_s": round(time.time() - started, 1),
    }
    document = {
        "settings": settings,
        "machine": machine,
        "runs": runs,
        "micro": micro,
        "decode_micro": decode_micro,
    }
    markdown = report.write_all(out, document)
    print(markdown)
    failed = [r for r in runs if not r.get("ok")]
    for r in failed:
        where = f"{r['store']}/{r['loader']} repeat {r['repeat']}"
        print(f"FAILED {where}: {r['exit']}\n{r['error']}", file=sys.stderr)
    # A peer that fails is a finding, reported above and in the table; the
    # loader under test or a reference the ratios need failing is an error.
    return 1 if any(r["family"] in MUST_SUCCEED for r in failed) else 0


if __name__ == "__main__":
    exit_with(main)
