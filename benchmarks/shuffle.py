"""Shuffle benchmark: GET requests per row and rows/s of each epoch order on the S3 store.

Usage::

    .venv/bin/python -m benchmarks.shuffle [--rows 20000] [--size 512] [--latency-ms 20]
        [--repeats 3] [--block-size 32] [--windows 2,8] [--modes batch,sample]
        [--concurrency N] [--probe-rows 2000] [--out benchmarks/results/shuffle]
        [--cache-dir benchmarks/results/cache]

It builds (once, cached) the harness's dataset of ``rows`` JPEG images with
binary masks (``benchmarks.datasets``), serves it from the harness's moto S3
server with ``latency-ms`` per GET, and reads one epoch with anyloader at its
default options in each order: ``sequential`` (``shuffle=False``), ``full``
(``shuffle=True``: a keyed permutation of single rows) and the block shuffle
``blockB-wW`` (``shuffle_block_size=B, shuffle_window=W``) for each window.
Modes: ``batch`` is ``AsyncDataset(batch_size=32)`` under
``DataLoader(batch_size=None)``, ``sample`` is ``DataLoader(AsyncDataset(...),
batch_size=32)``. Every run is a fresh process (deeplake caches what it read),
the order of the settings rotates between repeats.

Per run: rows/s over the epoch and the GET requests (and body bytes) the store
answered during it, from the server's counters (``s3_server.counts``). Per
setting: medians, ratios to ``sequential`` of the same mode, and the
randomness of the order (:func:`randomness`). Before the runs it probes how
many consecutive rows one GET brings, per column (:func:`read_units`).
Writes ``shuffle.json``, ``shuffle.md`` and ``shuffle.png`` to ``--out``
(``--render`` redraws the last two from the first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anyloader._options import Options

from . import datasets, s3_server
from .loaders import COLUMNS, LoaderSpec
from .machine import describe
from .runner import DEFAULT_CACHE, PACKAGE_ROOT, exit_with, run_in_subprocess, worker_task

__all__ = ["main", "measure", "orders", "randomness", "read_units", "summarize"]

BATCH_SIZE = 32
DEFAULT_OUT = PACKAGE_ROOT / "benchmarks" / "results" / "shuffle"
MODES = ("batch", "sample")
Run = Callable[[dict[str, Any], Path], dict[str, Any]]


def orders(block_size: int, windows: Sequence[int]) -> list[tuple[str, dict[str, Any]]]:
    """The settings: ``(name, anyloader shuffle options)``, sequential first."""
    found: list[tuple[str, dict[str, Any]]] = [("sequential", {}), ("full", {"shuffle": True})]
    found += [
        (
            f"block{block_size}-w{w}",
            {"shuffle": True, "shuffle_block_size": block_size, "shuffle_window": w},
        )
        for w in windows
    ]
    return found


def randomness(rows: np.ndarray, batch_size: int = BATCH_SIZE) -> float:
    """How far apart in the dataset the rows of one batch are, relative to a uniform shuffle.

    ``rows`` is an epoch's order (the row read at each position). The value is
    the mean of ``|row_i - row_j|`` over all pairs of positions in the same
    batch of ``batch_size`` consecutive positions (the last partial batch is
    left out), divided by ``(n + 1) / 3``, that mean for a uniformly random
    permutation of ``n`` rows. Sequential order gives ``(batch_size + 1) / (n +
    1)`` (about 0), a uniform shuffle about 1. For a block shuffle it is about
    the share of batch-mate pairs that come from different blocks.
    """
    n = len(rows)
    whole = n - n % batch_size
    if whole == 0 or batch_size < 2:
        return 0.0
    batches = np.asarray(rows[:whole], dtype=np.float64).reshape(-1, batch_size)
    pair_sum = np.abs(batches[:, :, None] - batches[:, None, :]).sum(axis=(1, 2))
    mean = float(pair_sum.mean()) / (batch_size * (batch_size - 1))
    return mean / ((n + 1) / 3)


def order_randomness(num_rows: int, options: dict[str, Any]) -> float:
    """:func:`randomness` of epoch 0 with ``seed=0``, as ``AsyncDataset`` reads it."""
    from anyloader._plan.order import epoch_order

    order = epoch_order(
        num_rows,
        seed=0,
        epoch=0,
        shuffle=bool(options.get("shuffle")),
        block_size=options.get("shuffle_block_size"),
        window=options.get("shuffle_window", Options().shuffle_window),
    )
    return randomness(order.rows(np.arange(num_rows, dtype=np.int64)))


def read_units(store: datasets.Store, columns: Sequence[str], rows: int) -> dict[str, Any]:
    """Per column: how many consecutive rows one GET brings, reading rows ``0..rows-1`` in order.

    Reads one row at a time from a fresh open of the dataset and notes the rows
    at which the store answered new GETs. The first row also reads the chunk
    object's header, so ``gets`` counts one or two more than there are units.
    """
    import deeplake

    endpoint = store.creds["endpoint_url"]
    found: dict[str, Any] = {}
    for name in columns:
        ds = deeplake.open_read_only(store.url, creds=store.creds)
        column = ds[name]
        starts, first = [], s3_server.counts(endpoint)["gets"]
        seen = first
        for row in range(rows):
            column.get_async([row]).result()
            now = s3_server.counts(endpoint)["gets"]
            if now > seen:
                starts.append(row)
            seen = now
        units = np.diff([*starts, rows])
        found[name] = {
            "rows": rows,
            "gets": seen - first,
            "units": len(units),
            "rows_per_get": rows / len(units),
            "min": int(units.min()),
            "median": float(np.median(units)),
            "max": int(units.max()),
        }
    return found


def _subprocess_run(timeout_s: float, exit_grace_s: float) -> Run:
    def run(task: dict[str, Any], log: Path) -> dict[str, Any]:
        return run_in_subprocess(task, log, timeout_s, exit_grace_s)

    return run


def in_process(task: dict[str, Any], log: Path) -> dict[str, Any]:
    """Run a task in this process, for tests; the benchmark's protocol is a process per run.

    Each task opens the dataset anew, and a new open does not reuse what an
    earlier one cached, so GET counts match a fresh process's.
    """
    from .worker import run_task

    return {**run_task(task), "ok": True, "exit": "in process", "clean_exit": True}


def measure(
    store: datasets.Store,
    settings: Sequence[tuple[str, dict[str, Any]]],
    modes: Sequence[str],
    repeats: int,
    out: Path,
    run: Run | None = None,
    progress: Callable[[str], None] | None = None,
    concurrency: int = 0,
) -> list[dict[str, Any]]:
    """One epoch per (repeat, mode, setting) on ``store``; every run's result.

    The settings' order rotates by one each repeat. ``run`` runs one
    ``benchmarks.worker`` task (default: a fresh process, 900 s allowed).
    ``concurrency`` is anyloader's option (0: its default).
    """
    run = run or _subprocess_run(900.0, 15.0)
    for sub in ("logs", "runs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    results = []
    for repeat in range(repeats):
        shift = repeat % len(settings)
        for mode in modes:
            for name, options in [*settings[shift:], *settings[:shift]]:
                spec = LoaderSpec(
                    f"{name}-{mode}",
                    "anyloader",
                    backend="asyncio",
                    batched=mode == "batch",
                    shuffle=bool(options.get("shuffle")),
                    shuffle_block_size=options.get("shuffle_block_size", 0),
                    shuffle_window=options.get("shuffle_window", 0),
                    concurrency=concurrency,
                )
                if progress:
                    progress(f"repeat {repeat + 1}/{repeats} {spec.name}")
                stem = f"{spec.name}-r{repeat}"
                task = worker_task(spec, store, BATCH_SIZE, out, stem)
                result = run(task, out / "logs" / f"{stem}.log")
                results.append({**result, "order": name, "mode": mode, "repeat": repeat})
    return results


def summarize(
    runs: Sequence[dict[str, Any]], settings: Sequence[tuple[str, dict[str, Any]]], num_rows: int
) -> list[dict[str, Any]]:
    """One row per (mode, setting): medians, ratios to ``sequential`` of the mode, randomness."""
    rows = []
    for mode in dict.fromkeys(r["mode"] for r in runs):
        base: dict[str, Any] = {}
        for name, options in settings:
            mine = [r for r in runs if r["mode"] == mode and r["order"] == name]
            ok = [r for r in mine if r.get("ok") and r.get("gets") is not None]
            rates = [r["samples_per_s"] for r in ok]
            gets = [r["gets"] / r["samples"] for r in ok if r["samples"]]
            mib = [r["get_bytes"] / r["samples"] / 2**20 for r in ok if r["samples"]]
            store_ms = [
                r["store_cpu_s"] * 1e3 / r["samples"]
                for r in ok
                if r["samples"] and r.get("store_cpu_s") is not None
            ]
            row = {
                "mode": mode,
                "order": name,
                "options": options,
                "runs": len(mine),
                "ok_runs": len(ok),
                "rows_per_s": statistics.median(rates) if rates else None,
                "rows_per_s_runs": rates,
                "gets_per_row": statistics.median(gets) if gets else None,
                "gets_per_row_runs": gets,
                "mib_per_row": statistics.median(mib) if mib else None,
                "store_cpu_ms_per_row": statistics.median(store_ms) if store_ms else None,
                "randomness": order_randomness(num_rows, options),
            }
            base = base or row
            row["x_sequential"] = _ratio(row["rows_per_s"], base["rows_per_s"])
            row["gets_x_sequential"] = _ratio(row["gets_per_row"], base["gets_per_row"])
            rows.append(row)
    return rows


def _ratio(value: float | None, ref: float | None) -> float | None:
    return value / ref if value is not None and ref else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(summary: Sequence[dict[str, Any]], units: dict[str, Any] | None) -> str:
    """The results table (and the read-unit probe), as Markdown."""
    lines = [
        "| mode | order | GET/row | x sequential GETs | MiB/row | store CPU ms/row "
        "| rows/s (median) "
        "| x sequential rows/s | randomness | rows/s of each run | GET/row of each run |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in summary:
        each = ", ".join(f"{x:.0f}" for x in r["rows_per_s_runs"])
        each_gets = ", ".join(f"{x:.3f}" for x in r["gets_per_row_runs"])
        lines.append(
            f"| {r['mode']} | {r['order']} | {_fmt(r['gets_per_row'], '.3f')} "
            f"| {_fmt(r['gets_x_sequential'], '.2f')} | {_fmt(r['mib_per_row'], '.3f')} "
            f"| {_fmt(r.get('store_cpu_ms_per_row'), '.2f')} "
            f"| {_fmt(r['rows_per_s'], '.0f')} | {_fmt(r['x_sequential'], '.2f')} "
            f"| {r['randomness']:.2f} | {each} | {each_gets} |"
        )
    if units:
        lines += ["", "| column | rows read | GETs | rows per GET (mean, min, median, max) |"]
        lines.append("|---|---:|---:|---|")
        for name, u in units.items():
            lines.append(
                f"| {name} | {u['rows']} | {u['gets']} | {u['rows_per_get']:.1f}, {u['min']}, "
                f"{u['median']:g}, {u['max']} |"
            )
    return "\n".join(lines)


_MODE_STYLE = {
    "batch": ("o", "#3a7dc9", "batch mode: AsyncDataset(batch_size=32)"),
    "sample": ("s", "#e07b39", "per-sample mode: DataLoader(AsyncDataset(), batch_size=32)"),
}
_RANDOMNESS_LABEL = "randomness of the order\n(0 = sequential, 1 = uniform shuffle)"


def plot(summary: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """rows/s against randomness, a panel per mode, and GET requests per row against randomness."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in summary))
    fig, axes = plt.subplots(1, len(modes) + 1, figsize=(5.6 * (len(modes) + 1), 5.4))
    top = max([x for r in summary for x in r["rows_per_s_runs"]] + [1.0])
    for ax, mode in zip(axes, modes, strict=False):
        marker, color, label = _MODE_STYLE.get(mode, ("^", "#777777", mode))
        mine = [r for r in summary if r["mode"] == mode and r["rows_per_s"] is not None]
        for r in mine:
            x, runs = r["randomness"], r["rows_per_s_runs"]
            ax.plot([x] * len(runs), runs, ".", color=color, alpha=0.45, ms=6)
            ax.plot([x], [r["rows_per_s"]], marker, color=color, ms=10)
            ax.annotate(
                f"{r['order']}\n{r['rows_per_s']:.0f} rows/s ({r['x_sequential']:.2f}x)\n"
                f"{r['gets_per_row']:.2f} GET/row",
                (x, r["rows_per_s"]),
                textcoords="offset points",
                xytext=(9, -12),
                fontsize=8,
            )
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(_RANDOMNESS_LABEL)
        ax.set_ylabel("rows/s (large marker: median; dots: each run)")
        ax.set_ylim(0, 1.12 * top)
    gets_ax = axes[-1]
    for k, mode in enumerate(modes):
        marker, color, label = _MODE_STYLE.get(mode, ("^", "#777777", mode))
        mine = [r for r in summary if r["mode"] == mode and r["gets_per_row"] is not None]
        xs, ys = [r["randomness"] for r in mine], [r["gets_per_row"] for r in mine]
        gets_ax.plot(xs, ys, marker, color=color, ms=9, ls="", label=mode)
        for r in mine:
            each = r["gets_per_row_runs"]
            gets_ax.plot([r["randomness"]] * len(each), each, ".", color=color, alpha=0.45, ms=6)
            # The modes often read alike: one mode's labels above its points, the other's below.
            gets_ax.annotate(
                f"{r['order']}: {r['gets_per_row']:.2f}",
                (r["randomness"], r["gets_per_row"]),
                textcoords="offset points",
                xytext=(8, 6 if k % 2 == 0 else -14),
                fontsize=8,
                color=color,
            )
    columns = len(COLUMNS)
    gets_ax.axhline(columns, color="#9e9e9e", ls="--", lw=1)
    gets_ax.text(-0.02, columns, f" {columns}: one GET per row per column", va="bottom", fontsize=8)
    highest = max([x for r in summary for x in r["gets_per_row_runs"]] + [columns])
    gets_ax.set_ylim(0, 1.12 * highest)
    gets_ax.set_title("requests to the store", fontsize=10)
    gets_ax.set_xlabel(_RANDOMNESS_LABEL)
    gets_ax.set_ylabel("GET requests per row (large marker: median; dots: each run)")
    gets_ax.legend(loc="center left", fontsize=8)
    for ax in axes:
        ax.set_xlim(-0.05, 1.45)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.shuffle", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rows", type=int, default=20_000, help="dataset rows (default 20000)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="S3 latency per GET")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (default 3)")
    parser.add_argument(
        "--block-size", type=int, default=32, help="shuffle_block_size of the block shuffle"
    )
    parser.add_argument("--windows", default="2,8", help="shuffle_window values (default 2,8)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: batch,sample")
    parser.add_argument(
        "--concurrency", type=int, default=0, help="anyloader's concurrency (default: its default)"
    )
    parser.add_argument(
        "--probe-rows", type=int, default=2000, help="rows read to find the GET unit (0: skip)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="dataset cache")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per run")
    parser.add_argument(
        "--render", action="store_true", help="only redraw --out's table and plot from its JSON"
    )
    args = parser.parse_args(argv)
    args.windows = [int(w) for w in args.windows.split(",") if w]
    args.modes = [m for m in args.modes.split(",") if m]
    if set(args.modes) - set(MODES) or not args.modes:
        parser.error(f"--modes takes a comma-separated subset of {MODES}")
    if args.rows < 1 or args.repeats < 1 or args.block_size < 1 or min(args.windows, default=0) < 1:
        parser.error("--rows, --repeats, --block-size and --windows must be >= 1")
    return args


def render(out: Path, document: dict[str, Any]) -> str:
    """Write ``shuffle.md`` and ``shuffle.png`` for ``document`` to ``out``; return the table."""
    settings, summary = document["settings"], document["summary"]
    table = markdown(summary, document.get("read_units"))
    (out / "shuffle.md").write_text(table + "\n")
    concurrency = settings.get("concurrency") or "the loader's choice"
    title = (
        f"Epoch order on S3 (moto, {settings['latency_ms']:g} ms/GET): {settings['rows']} rows "
        f"of {settings['size']}px, {settings['dataset_mib']:.0f} MiB; concurrency {concurrency}; "
        f"median of {settings['repeats']} run(s), {document['machine']['cpus']} cores"
    )
    plot(summary, out / "shuffle.png", title)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    if args.render:
        print(render(out, json.loads((out / "shuffle.json").read_text())))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    machine = describe()
    print(f"dataset: {args.rows} rows of {args.size}x{args.size}", file=sys.stderr)
    local_dir = datasets.local_dataset(args.cache_dir, args.rows, args.size)
    settings = orders(args.block_size, args.windows)
    with s3_server.serve(latency_s=args.latency_ms / 1000) as endpoint:
        store = datasets.s3_dataset(endpoint, local_dir)
        probe = min(args.probe_rows, args.rows)
        units = read_units(store, COLUMNS, probe) if probe else None
        runs = measure(
            store,
            settings,
            args.modes,
            args.repeats,
            out,
            run=_subprocess_run(args.timeout, 15.0),
            progress=lambda text: print(text, file=sys.stderr, flush=True),
            concurrency=args.concurrency,
        )
    summary = summarize(runs, settings, args.rows)
    dataset_mib = sum(f.stat().st_size for f in local_dir.rglob("*") if f.is_file()) / 2**20
    document = {
        "settings": {
            "rows": args.rows,
            "size": args.size,
            "dataset_mib": round(dataset_mib, 1),
            "latency_ms": args.latency_ms,
            "repeats": args.repeats,
            "block_size": args.block_size,
            "windows": args.windows,
            "modes": args.modes,
            "concurrency": args.concurrency or None,
            "batch_size": BATCH_SIZE,
            "wall_s": round(time.time() - started, 1),
        },
        "machine": machine,
        "read_units": units,
        "summary": summary,
        "runs": runs,
    }
    (out / "shuffle.json").write_text(json.dumps(document, indent=1, allow_nan=False))
    print(render(out, document))
    failed = [r for r in runs if not r.get("ok")]
    for r in failed:
        print(f"FAILED {r['mode']}/{r['order']} repeat {r['repeat']}: {r['exit']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    exit_with(main)
