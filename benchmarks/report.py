"""Turn per-run results into medians, ratios, a Markdown table, JSON and a PNG.

Ratios compare medians of the same store only: ``x sequential`` divides by
the ``sequential`` loader, ``x best peer`` by the best median of the
documented alternatives (``documented-async`` and every
``deeplake-pytorch-w*``), ``x ceiling-deeplake`` by the best setting of the
deeplake-decode ceiling and ``of ceiling-bytes`` by the best setting of the
bytes + libjpeg-turbo ceiling (see ``benchmarks.ceiling``).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .loaders import CEILINGS, PEERS

__all__ = ["markdown_table", "plot", "summarize", "write_json"]

SCHEMA_VERSION = 2


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

    Each ceiling family's settings are folded into one row named after the
    family (``ceiling-deeplake``, ``ceiling-bytes``): the setting with the best
    median (named in ``setting``).
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
                "spec": group[0].get("spec"),
            }
        )
    rows = _fold_ceiling(rows)
    for store in {r["store"] for r in rows}:
        mine = [r for r in rows if r["store"] == store]
        sequential = _best(mine, ("sequential",))
        peer = _best(mine, PEERS)
        ceilings = {family: _best(mine, (family,)) for family in CEILINGS}
        for r in mine:
            r["x_sequential"] = _ratio(r["samples_per_s"], sequential)
            r["x_best_peer"] = _ratio(r["samples_per_s"], peer)
            r["x_ceiling_deeplake"] = _ratio(r["samples_per_s"], ceilings["ceiling-deeplake"])
            r["of_ceiling_bytes"] = _ratio(r["samples_per_s"], ceilings["ceiling-bytes"])
    return sorted(rows, key=lambda r: (r["store"], _order(r)))


def _best(rows: Sequence[dict[str, Any]], families: Sequence[str]) -> float | None:
    rates = [r["samples_per_s"] for r in rows if r["family"] in families]
    return max((v for v in rates if v is not None), default=None)


def _order(row: dict[str, Any]) -> tuple[int, str]:
    families = ["sequential", "documented-async", "deeplake-pytorch", "anyloader", *CEILINGS]
    rank = families.index(row["family"]) if row["family"] in families else len(families)
    return rank, row["loader"]


def _fold_ceiling(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [r for r in rows if r["family"] not in CEILINGS]
    for store in sorted({r["store"] for r in rows}):
        for family in CEILINGS:
            settings = [r for r in rows if r["family"] == family and r["store"] == store]
            if settings:
                best = max(settings, key=lambda r: r["samples_per_s"] or 0.0)
                out.append({**best, "loader": family, "setting": best["loader"]})
    return out


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{suffix}"


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    """A GitHub Markdown table of the summary (medians), one line per (store, loader)."""
    head = (
        "| store | loader | samples/s | x sequential | x best peer | x ceiling-deeplake "
        "| of ceiling-bytes | first batch s | CPU ms/sample | peak RSS MiB | clean exits |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in summary:
        name = r["loader"] + (f" ({r['setting']})" if r.get("setting") else "")
        of_bytes = None if r["of_ceiling_bytes"] is None else 100 * r["of_ceiling_bytes"]
        lines.append(
            f"| {r['store']} | {name} | {_fmt(r['samples_per_s'], '.0f')} "
            f"| {_fmt(r['x_sequential'], '.2f', 'x')} | {_fmt(r['x_best_peer'], '.2f', 'x')} "
            f"| {_fmt(r['x_ceiling_deeplake'], '.2f', 'x')} | {_fmt(of_bytes, '.0f', '%')} "
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
    """Horizontal bars of median samples/s per loader, one panel per store, runs as dots.

    The best anyloader setting's bar is outlined and labelled; ``sequential`` and
    both ceilings are also drawn as labelled vertical reference lines, so every bar
    reads against them at a glance.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stores = sorted({r["store"] for r in summary})
    height = 2.4 + 0.32 * max(sum(1 for r in summary if r["store"] == s) for s in stores)
    fig, axes = plt.subplots(1, len(stores), figsize=(7.5 * len(stores), height), squeeze=False)
    for ax, store in zip(axes[0], stores, strict=True):
        mine = [r for r in summary if r["store"] == store]
        names = [r["loader"] + (f" ({r['setting']})" if r.get("setting") else "") for r in mine]
        medians = [r["samples_per_s"] or 0.0 for r in mine]
        colors = [_color(r["family"]) for r in mine]
        bars = ax.barh(range(len(mine)), medians, color=colors)
        ours = [i for i, r in enumerate(mine) if r["family"] == "anyloader" and medians[i] > 0]
        if ours:
            best = max(ours, key=lambda i: medians[i])
            bars[best].set_edgecolor("black")
            bars[best].set_linewidth(1.5)
        for i, r in enumerate(mine):
            loader = r.get("setting", r["loader"])
            dots = [
                x["samples_per_s"]
                for x in runs
                if x["store"] == store and x["loader"] == loader and x.get("ok")
            ]
            ax.plot(dots, [i] * len(dots), "k.", markersize=4)
            if medians[i] > 0:
                label = f" {medians[i]:.0f}"
                if r["x_sequential"] is not None:
                    label += f"  ({r['x_sequential']:.1f}x seq)"
                # Right of the bar and of every dot, so the figure never sits on a dot.
                right = max([medians[i], *dots])
                ax.text(right, i, "  " + label.lstrip(), va="center", fontsize=7)
        for family, style in (
            ("sequential", ":"),
            ("ceiling-deeplake", "--"),
            ("ceiling-bytes", "-"),
        ):
            ref = next((r for r in mine if r["family"] == family), None)
            if ref is None or not ref["samples_per_s"]:
                continue
            ax.axvline(
                ref["samples_per_s"],
                color=_color(family),
                linestyle=style,
                linewidth=1.5,
                label=f"{family}: {ref['samples_per_s']:.0f}/s",
            )
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.75 / height),
            ncol=3,
            fontsize=8,
            frameon=False,
        )
        ax.set_yticks(range(len(mine)), names, fontsize=8)
        ax.invert_yaxis()
        every = [x["samples_per_s"] for x in runs if x["store"] == store and x.get("ok")]
        ax.set_xlim(0, 1.08 * max([*(1.15 * m for m in medians), *every, 1.0]))
        ax.set_xlabel(
            "samples/s (bar: median, dots: runs; outlined: best anyloader setting)", fontsize=9
        )
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
        "ceiling-deeplake": "#5aa469",
        "ceiling-bytes": "#2e6b3a",
    }.get(family, "#777777")


def markdown_document(
    settings: dict[str, Any],
    machine: dict[str, Any],
    summary: Sequence[dict[str, Any]],
    micro: Sequence[dict[str, Any]],
    decode_micro: dict[str, Any] | None = None,
) -> str:
    """The full ``results.md``: settings, machine, medians, targets, decode and overhead tables."""
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
        "deeplake-pytorch-w*; `x ceiling-deeplake` by the best raw `Column.get_async` setting "
        "(deeplake decodes); `of ceiling-bytes` by the best raw `get_bytes_async` + "
        "libjpeg-turbo-on-every-core setting. "
        "CPU counts the process and its DataLoader workers; peak RSS sums them.",
        "",
        markdown_table(summary),
        "",
        "Targets (ratios of medians from this run; best = the fastest anyloader setting "
        "of the store; prefetch window = (prefetch + concurrency x fetch_size + batch) rows "
        "x decoded row size):",
        "",
        targets_table(target_checks(summary, settings)),
    ]
    if decode_micro:
        from .decode import markdown as decode_markdown

        parts += ["", "Decode microbenchmark (`python -m benchmarks.decode`):", ""]
        parts += [decode_markdown(decode_micro)]
    if micro:
        parts += [
            "",
            "Pure overhead (in-memory source, tiny samples, no I/O):",
            "",
            micro_table(micro),
        ]
    return "\n".join(parts) + "\n"


#: Throughput targets of the best anyloader setting, per store: (reference, at least).
#: ``x`` references divide by that row's median; ``of`` references too (shown as %).
THROUGHPUT_TARGETS: dict[str, tuple[tuple[str, float], ...]] = {
    "local": (("sequential", 3.5), ("ceiling-deeplake", 1.7), ("ceiling-bytes", 0.75)),
    "s3": (("sequential", 5.0),),
}
#: Per-sample mode (``DataLoader(AsyncDataset(...), batch_size=32)``, num_workers=0)
#: against ``sequential``, per store.
PER_SAMPLE_TARGETS = {"local": 2.5}
#: Both stores, best anyloader setting: CPU ms per sample at most this.
CPU_MS_TARGET = 1.7
#: Peak RSS at most this times (sequential's peak RSS + the prefetch window).
RSS_FACTOR = 1.5
#: Time to first batch at most this times sequential's.
FIRST_BATCH_FACTOR = 2.0


def window_mib(spec: dict[str, Any] | None, settings: dict[str, Any]) -> float | None:
    """The prefetch window of an anyloader spec in MiB: rows it may hold, times a row.

    Rows: ``prefetch + concurrency * fetch_size`` (the bound of ``AsyncDataset``'s
    docstring) plus one batch being built; a row is a decoded RGB image and its
    one-byte mask, ``size * size * 4`` bytes.
    """
    if spec is None:
        return None
    from anyloader._engine.config import IN_FLIGHT_ROWS
    from anyloader._options import Options

    defaults = Options()
    fetch_size, concurrency = spec.get("fetch_size"), spec.get("concurrency")
    # The loader's own choice keeps IN_FLIGHT_ROWS rows in flight (fetch_size <= 32).
    in_flight = fetch_size * concurrency if fetch_size and concurrency else IN_FLIGHT_ROWS
    rows = defaults.prefetch + in_flight + settings["batch_size"]
    return rows * settings["size"] ** 2 * 4 / 2**20


def _is_per_sample(row: dict[str, Any]) -> bool:
    spec = row.get("spec") or {}
    return row["family"] == "anyloader" and not spec.get("batched") and spec.get("workers") == 0


def target_checks(
    summary: Sequence[dict[str, Any]], settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each target: measured value, threshold, met or not, and the numbers behind it."""
    checks: list[dict[str, Any]] = []

    def check(
        target: str, store: str, value: float | None, threshold: float, higher: bool, detail: str
    ) -> None:
        met = value is not None and (value >= threshold if higher else value <= threshold)
        checks.append(
            {
                "target": target,
                "store": store,
                "value": value,
                "threshold": threshold,
                "higher_is_better": higher,
                "met": met,
                "detail": detail,
            }
        )

    def rate(row: dict[str, Any] | None) -> str:
        return "-" if row is None or row["samples_per_s"] is None else f"{row['samples_per_s']:.0f}"

    for store in sorted({r["store"] for r in summary}):
        mine = [r for r in summary if r["store"] == store]
        ours = [r for r in mine if r["family"] == "anyloader" and r["samples_per_s"] is not None]
        if not ours:
            continue
        best = max(ours, key=lambda r: r["samples_per_s"])
        by_family = {r["family"]: r for r in mine if r["family"] != "anyloader"}
        sequential = by_family.get("sequential")
        for ref, threshold in THROUGHPUT_TARGETS.get(store, ()):
            base = by_family.get(ref)
            value = _ratio(best["samples_per_s"], None if base is None else base["samples_per_s"])
            bound = f"{threshold:.0%}" if ref == "ceiling-bytes" else f"{threshold:g}x"
            check(
                f"best ({best['loader']}) vs {ref} >= {bound}",
                store,
                value,
                threshold,
                True,
                f"{rate(best)} / {rate(base)} rows/s",
            )
        if store in PER_SAMPLE_TARGETS:
            per_sample = [r for r in ours if _is_per_sample(r)]
            if per_sample:
                mode = max(per_sample, key=lambda r: r["samples_per_s"])
                threshold = PER_SAMPLE_TARGETS[store]
                check(
                    f"per-sample ({mode['loader']}) vs sequential >= {threshold:g}x",
                    store,
                    mode["x_sequential"],
                    threshold,
                    True,
                    f"{rate(mode)} / {rate(sequential)} rows/s",
                )
        check(
            f"best ({best['loader']}) CPU ms/sample <= {CPU_MS_TARGET:g}",
            store,
            best["cpu_ms_per_sample"],
            CPU_MS_TARGET,
            False,
            f"sequential: {_fmt(sequential and sequential['cpu_ms_per_sample'], '.2f')} ms",
        )
        if sequential is not None and sequential["peak_rss_mib"] is not None:
            window = window_mib(best.get("spec"), settings)
            limit = RSS_FACTOR * (sequential["peak_rss_mib"] + (window or 0.0))
            check(
                f"best ({best['loader']}) peak RSS MiB <= {RSS_FACTOR:g} x (sequential + window)",
                store,
                best["peak_rss_mib"],
                limit,
                False,
                f"sequential {sequential['peak_rss_mib']:.0f} MiB + window "
                f"{_fmt(window, '.0f')} MiB",
            )
        if sequential is not None and sequential["first_batch_s"] is not None:
            check(
                f"best ({best['loader']}) first batch s <= {FIRST_BATCH_FACTOR:g} x sequential",
                store,
                best["first_batch_s"],
                FIRST_BATCH_FACTOR * sequential["first_batch_s"],
                False,
                f"sequential {sequential['first_batch_s']:.3f} s",
            )
    return checks


def targets_table(checks: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`target_checks`."""
    lines = [
        "| store | target | measured | threshold | numbers | met |",
        "|---|---|---|---|---|---|",
    ]
    for c in checks:
        value = "-" if c["value"] is None else f"{c['value']:,.2f}"
        bound = (">= " if c["higher_is_better"] else "<= ") + f"{c['threshold']:,.2f}"
        lines.append(
            f"| {c['store']} | {c['target']} | {value} | {bound} | {c['detail']} "
            f"| {'met' if c['met'] else '**missed**'} |"
        )
    return "\n".join(lines)


def write_all(out: Path, document: dict[str, Any]) -> str:
    """Write ``results.json``, ``results.md`` and ``results.png`` to ``out``; return the Markdown.

    ``document`` holds ``settings``, ``machine``, ``runs``, ``micro`` and optionally
    ``decode_micro`` (``benchmarks.decode.measure``'s result); the
    summary and target checks are derived from them here.
    """
    settings, machine = document["settings"], document["machine"]
    runs, micro = document["runs"], document["micro"]
    decode_micro = document.get("decode_micro")
    summary = summarize(runs)
    full = {**document, "summary": summary, "targets": target_checks(summary, settings)}
    write_json(out / "results.json", {k: v for k, v in full.items() if k != "schema"})
    markdown = markdown_document(settings, machine, summary, micro, decode_micro)
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
