"""Turn per-run results into medians, ratios, a Markdown table, JSON and a PNG.

Ratios compare medians of the same store only: ``x sequential`` divides by
the ``sequential`` loader, ``x best peer`` by the best median of the
documented alternatives (``documented-async`` and every
``deeplake-pytorch-w*``), ``of ceiling`` by the best ceiling setting.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .loaders import PEERS

__all__ = ["markdown_table", "plot", "summarize", "write_json"]

SCHEMA_VERSION = 1


def _median(values: Iterable[float]) -> float | None:
    """Median of the finite values; ``None`` (JSON null) when there are none."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(vals) if vals else None


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (store, loader) with medians over its successful runs, plus ratios.

    Ceiling settings are folded into a single ``ceiling`` row: the setting
    with the best median (named in ``setting``).
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["store"], run["loader"]), []).append(run)
    rows: list[dict[str, Any]] = []
    for (store, loader), group in groups.items():
        ok = [r for r in group if r.get("ok")]
        rows.append(
            {
                "store": store,
                "loader": loader,
                "family": group[0]["family"],
                "runs": len(group),
                "ok_runs": len(ok),
                "clean_exits": sum(1 for r in group if r.get("clean_exit")),
                "exits": sorted({r["exit"] for r in group}),
                "samples_per_s": _median(r["samples_per_s"] for r in ok),
                "first_batch_s": _median(r["first_batch_s"] for r in ok),
                "cpu_ms_per_sample": _median(
                    1000 * r["cpu_s"] / r["samples"] for r in ok if r["samples"]
                ),
                "peak_rss_mib": _median(r["peak_rss_bytes"] / 2**20 for r in ok),
                "samples": _median(r["samples"] for r in ok),
            }
        )
    rows = _fold_ceiling(rows)
    for store in {r["store"] for r in rows}:
        mine = [r for r in rows if r["store"] == store]
        sequential = _best(mine, ("sequential",))
        peer = _best(mine, PEERS)
        ceiling = _best(mine, ("ceiling",))
        for r in mine:
            r["x_sequential"] = _ratio(r["samples_per_s"], sequential)
            r["x_best_peer"] = _ratio(r["samples_per_s"], peer)
            r["of_ceiling"] = _ratio(r["samples_per_s"], ceiling)
    return sorted(rows, key=lambda r: (r["store"], _order(r)))


def _best(rows: Sequence[dict[str, Any]], families: Sequence[str]) -> float | None:
    rates = [r["samples_per_s"] for r in rows if r["family"] in families]
    return max((v for v in rates if v is not None), default=None)


def _order(row: dict[str, Any]) -> tuple[int, str]:
    families = ["sequential", "documented-async", "deeplake-pytorch", "anyloader", "ceiling"]
    rank = families.index(row["family"]) if row["family"] in families else len(families)
    return rank, row["loader"]


def _fold_ceiling(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [r for r in rows if r["family"] != "ceiling"]
    for store in sorted({r["store"] for r in rows}):
        settings = [r for r in rows if r["family"] == "ceiling" and r["store"] == store]
        if settings:
            best = max(settings, key=lambda r: r["samples_per_s"] or 0.0)
            out.append({**best, "loader": "ceiling", "setting": best["loader"]})
    return out


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{suffix}"


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    """A GitHub Markdown table of the summary (medians), one line per (store, loader)."""
    head = (
        "| store | loader | samples/s | x sequential | x best peer | of ceiling "
        "| first batch s | CPU ms/sample | peak RSS MiB | clean exits |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in summary:
        name = r["loader"] + (f" ({r['setting']})" if r.get("setting") else "")
        lines.append(
            f"| {r['store']} | {name} | {_fmt(r['samples_per_s'], '.0f')} "
            f"| {_fmt(r['x_sequential'], '.2f', 'x')} | {_fmt(r['x_best_peer'], '.2f', 'x')} "
            f"| {_fmt(None if r['of_ceiling'] is None else 100 * r['of_ceiling'], '.0f', '%')} "
            f"| {_fmt(r['first_batch_s'], '.2f')} | {_fmt(r['cpu_ms_per_sample'], '.2f')} "
            f"| {_fmt(r['peak_rss_mib'], '.0f')} | {r['clean_exits']}/{r['runs']} |"
        )
    return "\n".join(lines)


def micro_table(micro: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the pure-overhead microbenchmark."""
    lines = ["| backend | API | rows/s (median) |", "|---|---|---|"]
    for m in micro:
        lines.append(f"| {m['backend']} | {m['api']} | {m['rows_per_s']:,.0f} |")
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write the results document (``schema`` = :data:`SCHEMA_VERSION`)."""
    path.write_text(
        json.dumps({"schema": SCHEMA_VERSION, **document}, indent=2, allow_nan=False, default=str)
    )


def plot(
    summary: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]], path: Path, title: str
) -> None:
    """Horizontal bars of median samples/s per loader, one panel per store, runs as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stores = sorted({r["store"] for r in summary})
    fig, axes = plt.subplots(1, len(stores), figsize=(6.5 * len(stores), 5.5), squeeze=False)
    for ax, store in zip(axes[0], stores, strict=True):
        mine = [r for r in summary if r["store"] == store]
        names = [r["loader"] for r in mine]
        medians = [r["samples_per_s"] or 0.0 for r in mine]
        colors = [_color(r["family"]) for r in mine]
        ax.barh(range(len(mine)), medians, color=colors)
        for i, r in enumerate(mine):
            loader = r.get("setting", r["loader"])
            dots = [
                x["samples_per_s"]
                for x in runs
                if x["store"] == store and x["loader"] == loader and x.get("ok")
            ]
            ax.plot(dots, [i] * len(dots), "k.", markersize=4)
        ax.set_yticks(range(len(mine)), names)
        ax.invert_yaxis()
        ax.set_xlabel("samples/s (bar: median, dots: runs)")
        ax.set_title(f"store: {store}")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _color(family: str) -> str:
    return {
        "sequential": "#9e9e9e",
        "documented-async": "#e07b39",
        "deeplake-pytorch": "#d9b44a",
        "anyloader": "#3a7dc9",
        "ceiling": "#5aa469",
    }.get(family, "#777777")


def markdown_document(
    settings: dict[str, Any],
    machine: dict[str, Any],
    summary: Sequence[dict[str, Any]],
    micro: Sequence[dict[str, Any]],
) -> str:
    """The full ``results.md``: settings, machine, the table of medians, the overhead table."""
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    parts = [
        "# anyloader benchmark results",
        "",
        f"{settings['rows']} rows of {settings['size']}x{settings['size']} JPEG images "
        "with binary masks, "
        f"batch size {settings['batch_size']}, one epoch per run, {settings['repeats']} run(s) per "
        f"loader and store, each in a fresh process, loader order rotated between repeats. "
        f"S3 store: moto on 127.0.0.1 with {settings['latency_ms']:g} ms per GET. "
        f"Wall time {settings['wall_s']:.0f} s.",
        "",
        f"Machine: {machine['cpus']} cores ({machine['cpu_model']}), {machine['memory_gib']} GiB, "
        f"{machine['os']}, Python {machine['python']}; {packages}; "
        f"anyloader source {machine['anyloader_source']}, "
        f"imported from `{machine['anyloader_imported_from']}`.",
        "",
        "Medians over runs. `x best peer` divides by the fastest of documented-async and "
        "deeplake-pytorch-w*; `of ceiling` by the best raw `Column.get_async` setting. "
        "CPU counts the process and its DataLoader workers; peak RSS sums them.",
        "",
        markdown_table(summary),
    ]
    if micro:
        parts += [
            "",
            "Pure overhead (in-memory source, tiny samples, no I/O):",
            "",
            micro_table(micro),
        ]
    parts += [
        "",
        "Issue-3 targets, for the fastest anyloader setting of each store:",
        "",
        targets_table(target_checks(summary, micro)),
    ]
    return "\n".join(parts) + "\n"


#: Issue 3's throughput targets per store: (x sequential, x best peer, share of ceiling).
TARGETS = {"s3": (8.0, 1.3, 0.9), "local": (1.7, 1.3, 0.9)}
#: Issue 3's pure-overhead target, rows/s per backend and API.
OVERHEAD_TARGET = 50_000


def target_checks(
    summary: Sequence[dict[str, Any]], micro: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each issue-3 target: the best anyloader setting's value per store, and met or not."""
    checks: list[dict[str, Any]] = []

    def check(target: str, store: str, value: float | None, threshold: float, higher: bool) -> None:
        met = value is not None and (value >= threshold if higher else value <= threshold)
        checks.append(
            {"target": target, "store": store, "value": value, "threshold": threshold, "met": met}
        )

    for store, (x_seq, x_peer, of_ceiling) in TARGETS.items():
        mine = [r for r in summary if r["store"] == store]
        ours = [r for r in mine if r["family"] == "anyloader" and r["samples_per_s"] is not None]
        if not ours:
            continue
        best = max(ours, key=lambda r: r["samples_per_s"])
        sequential = next((r for r in mine if r["family"] == "sequential"), None)
        check(f"{best['loader']} x sequential", store, best["x_sequential"], x_seq, True)
        check(f"{best['loader']} x best peer", store, best["x_best_peer"], x_peer, True)
        check(f"{best['loader']} of ceiling", store, best["of_ceiling"], of_ceiling, True)
        if sequential is not None and sequential["cpu_ms_per_sample"] is not None:
            check(
                f"{best['loader']} CPU ms/sample <= sequential",
                store,
                best["cpu_ms_per_sample"],
                sequential["cpu_ms_per_sample"],
                False,
            )
    for m in micro:
        check(
            f"overhead {m['backend']} {m['api']} rows/s",
            "memory",
            m["rows_per_s"],
            OVERHEAD_TARGET,
            True,
        )
    return checks


def targets_table(checks: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`target_checks`."""
    lines = ["| store | target | measured | threshold | met |", "|---|---|---|---|---|"]
    for c in checks:
        value = "-" if c["value"] is None else f"{c['value']:,.2f}"
        lines.append(
            f"| {c['store']} | {c['target']} | {value} | {c['threshold']:,.2f} "
            f"| {'yes' if c['met'] else '**no**'} |"
        )
    return "\n".join(lines)


def write_all(out: Path, document: dict[str, Any]) -> str:
    """Write ``results.json``, ``results.md`` and ``results.png`` to ``out``; return the Markdown.

    ``document`` holds ``settings``, ``machine``, ``runs`` and ``micro``; the
    summary and target checks are derived from them here.
    """
    settings, machine = document["settings"], document["machine"]
    runs, micro = document["runs"], document["micro"]
    summary = summarize(runs)
    full = {**document, "summary": summary, "targets": target_checks(summary, micro)}
    write_json(out / "results.json", {k: v for k, v in full.items() if k != "schema"})
    markdown = markdown_document(settings, machine, summary, micro)
    (out / "results.md").write_text(markdown)
    title = (
        f"{settings['rows']} rows {settings['size']}px, "
        f"S3 latency {settings['latency_ms']:g} ms, {machine['cpus']} cores"
    )
    plot(summary, runs, out / "results.png", title)
    return markdown


def main(argv: Sequence[str] | None = None) -> None:
    """Re-render a results directory from its ``results.json`` (after a report change)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=main.__doc__)
    parser.add_argument("out", type=Path, help="directory holding results.json")
    args = parser.parse_args(argv)
    document = json.loads((args.out / "results.json").read_text())
    print(write_all(args.out, document))


if __name__ == "__main__":
    main()
