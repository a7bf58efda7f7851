"""The segmentation benchmark's report: medians, ratios, targets, Markdown, JSON and a PNG.

Everything compares medians of one run of ``benchmarks.segmentation``, on the
same dataset and store. ``spdl`` and ``ceiling`` are each folded into the best
of their settings (named beside them). The ratios, per dataset and store:

* ``vs torch peers``: ``anyloader-geometry-batch`` (defaults) over the best of
  ``deeplake-pytorch-w*`` and ``batched-read-w*``;
* ``vs batched read``, ``vs spdl``, ``of ceiling``: the same over each;
* ``best``: the fastest ``anyloader-geometry*`` setting, and ``defaults/best``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import report
from .report import _fmt, _median, _ratio
from .seg_loaders import FAMILIES

__all__ = [
    "TARGETS",
    "main",
    "markdown_document",
    "plot",
    "ratios",
    "summarize",
    "target_checks",
    "write_all",
]

SCHEMA_VERSION = 1
#: Families folded into their best setting.
FOLDED = ("spdl", "ceiling")
DEFAULTS = "anyloader-geometry-batch"
GEOMETRY = "anyloader-geometry"
TORCH_PEERS = ("deeplake-pytorch", "batched-read")
FIXED_SIZES = ("128px", "256px", "512px", "1024px")

#: (what, dataset(s), ratio key or measure, bound, "min"/"max"): checked on the local store.
TARGETS: tuple[tuple[str, tuple[str, ...], str, float, str], ...] = (
    ("geometry batch mode vs best of ds.pytorch and batched read", ("coco-like",),
     "x_torch_peers", 2.5, "min"),
    ("geometry batch mode vs SPDL", ("coco-like",), "x_spdl", 1.3, "min"),
    ("geometry batch mode vs the ceiling", ("coco-like",), "of_ceiling", 0.85, "min"),
    ("geometry batch mode CPU ms per row (256 px out)", ("coco-like",), "cpu_ms_per_sample", 0.8,
     "max"),
    ("best anyloader setting vs best batched read", FIXED_SIZES, "best_x_batched_read", 1.3,
     "min"),
    ("best anyloader setting vs SPDL", FIXED_SIZES, "best_x_spdl", 1.1, "min"),
    ("anyloader defaults vs its best setting", (), "defaults_of_best", 0.9, "min"),
)  # fmt: skip


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, store, loader): medians over its successful runs.

    ``benchmarks.report.summarize``'s medians per dataset (``samples_per_s``
    counts rows), plus the time to the first 200 rows and the worst
    ``missing`` and ``repeated`` over runs (rows not delivered, rows delivered
    more than once). ``spdl`` and ``ceiling`` appear once each, as their best
    setting (``setting``).
    """
    rows = []
    for dataset in sorted({r["dataset"] for r in runs}):
        mine = [r for r in runs if r["dataset"] == dataset]
        for row in report.summarize(mine):
            ok = [
                r
                for r in mine
                if (r["store"], r["loader"]) == (row["store"], row["loader"]) and r.get("ok")
            ]
            rows.append(
                {
                    "dataset": dataset,
                    # the ratios to benchmarks.run's references do not apply here
                    **{k: v for k, v in row.items() if not k.startswith(("x_", "of_"))},
                    "first_rows_s": _median(r["first_rows_s"] for r in ok),
                    "missing": max((r["missing"] for r in ok), default=None),
                    "repeated": max((r["repeated"] for r in ok), default=None),
                    "images": ok[0]["images"] if ok else None,
                    "masks": ok[0]["masks"] if ok else None,
                }
            )
    out = [r for r in rows if r["family"] not in FOLDED]
    for key in sorted({(r["dataset"], r["store"], r["family"]) for r in rows}):
        if key[2] in FOLDED:
            settings = [r for r in rows if (r["dataset"], r["store"], r["family"]) == key]
            best = max(settings, key=lambda r: r["samples_per_s"] or 0.0)
            out.append({**best, "loader": key[2], "setting": best["loader"]})
    order = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(out, key=lambda r: (r["dataset"], r["store"], order[r["family"]], r["loader"]))


def _best(rows: Sequence[dict[str, Any]], families: Sequence[str]) -> dict[str, Any] | None:
    found = [r for r in rows if r["family"] in families and r["samples_per_s"]]
    return max(found, key=lambda r: r["samples_per_s"], default=None)


def _rate(row: dict[str, Any] | None) -> float | None:
    return None if row is None else row["samples_per_s"]


def ratios(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dataset, store): anyloader's defaults and best setting against each peer."""
    out = []
    for dataset, store in sorted({(r["dataset"], r["store"]) for r in summary}, key=_place):
        mine = [r for r in summary if (r["dataset"], r["store"]) == (dataset, store)]
        defaults = next((r for r in mine if r["loader"] == DEFAULTS), None)
        best = _best(mine, (GEOMETRY,))
        peers = {
            "torch_peers": _rate(_best(mine, TORCH_PEERS)),
            "batched_read": _rate(_best(mine, ("batched-read",))),
            "spdl": _rate(_best(mine, ("spdl",))),
        }
        ceiling = _rate(_best(mine, ("ceiling",)))
        rate, top = _rate(defaults), _rate(best)
        # What this run shows attainable: the most rows/s and the least CPU per row of
        # the no-loader ceiling and every loader (a loader may pass a ceiling setting).
        fastest = max((r["samples_per_s"] for r in mine if r["samples_per_s"]), default=None)
        leanest = min(
            (r["cpu_ms_per_sample"] for r in mine if r.get("cpu_ms_per_sample")), default=None
        )
        bounds = {
            **{f"x_{k}": _ratio(fastest, v) for k, v in peers.items()},
            **{f"best_x_{k}": _ratio(fastest, v) for k, v in peers.items()},
            "of_ceiling": _ratio(fastest, ceiling),
            "defaults_of_best": 1.0,
            "cpu_ms_per_sample": leanest,
        }
        out.append(
            {
                "dataset": dataset,
                "store": store,
                "defaults_rows_per_s": rate,
                "cpu_ms_per_sample": None if defaults is None else defaults["cpu_ms_per_sample"],
                **{f"x_{k}": _ratio(rate, v) for k, v in peers.items()},
                "of_ceiling": _ratio(rate, ceiling),
                "best": None if best is None else best["loader"],
                "best_rows_per_s": top,
                **{f"best_x_{k}": _ratio(top, v) for k, v in peers.items()},
                "best_of_ceiling": _ratio(top, ceiling),
                "defaults_of_best": _ratio(rate, top),
                "bounds": bounds,
            }
        )
    return out


def _place(key: tuple[str, str]) -> tuple[int, int, str]:
    """Datasets in size order (COCO-like first), local before S3."""
    dataset, store = key
    size = int(dataset.removesuffix("px")) if dataset.endswith("px") else 0
    return size, store != "local", dataset


def target_checks(table: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target on the local store, per dataset it names (every dataset if none): met or not."""
    local = [r for r in table if r["store"] == "local"]
    checks = []
    for what, datasets, key, bound, kind in TARGETS:
        for r in local:
            if datasets and r["dataset"] not in datasets:
                continue
            value = r[key]
            met = value is not None and (value >= bound if kind == "min" else value <= bound)
            limit = r.get("bounds", {}).get(key)
            # A target past anything measured in the same run, the ceiling included.
            bounded = limit is not None and (limit < bound if kind == "min" else limit > bound)
            checks.append(
                {
                    "target": what,
                    "dataset": r["dataset"],
                    "value": value,
                    "bound": bound,
                    "kind": kind,
                    "met": met,
                    "limit": limit,
                    "bounded": bounded,
                    "best": r["best"],
                }
            )
    return checks


def _name(r: dict[str, Any]) -> str:
    return r["loader"] + (f" ({r['setting']})" if r.get("setting") else "")


def _rows_ok(r: dict[str, Any]) -> str:
    if r["missing"] is None:
        return "-"
    if r["missing"] == r["repeated"] == 0:
        return "yes"
    return f"{r['missing']} missing, {r['repeated']} twice"


def _pct(value: float | None) -> str:
    return _fmt(None if value is None else 100 * value, ".0f", "%")


def _x(value: float | None) -> str:
    return _fmt(value, ".2f", "x")


def _table(columns: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """A Markdown table: a header of ``columns`` and one line per row of ``cells``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def medians_table(summary: Sequence[dict[str, Any]]) -> str:
    """Markdown: one line per (dataset, store, loader)."""
    columns = ["dataset", "store", "loader", "rows/s", "CPU ms/row", "first batch s"]
    columns += ["first 200 rows s", "peak RSS MiB", "every row once", "clean exits"]
    cells = [
        [
            r["dataset"],
            r["store"],
            _name(r),
            _fmt(r["samples_per_s"], ".0f"),
            _fmt(r["cpu_ms_per_sample"], ".2f"),
            _fmt(r["first_batch_s"], ".2f"),
            _fmt(r["first_rows_s"], ".2f"),
            _fmt(r["peak_rss_mib"], ".0f"),
            _rows_ok(r),
            f"{r['clean_exits']}/{r['runs']}",
        ]
        for r in sorted(summary, key=lambda r: _place((r["dataset"], r["store"])))
    ]
    return _table(columns, cells)


def ratios_table(table: Sequence[dict[str, Any]]) -> str:
    """Markdown: anyloader's defaults and best setting against the peers, per dataset and store."""
    columns = ["dataset", "store", "defaults rows/s", "x torch peers", "x batched read"]
    columns += ["x spdl", "of ceiling", "best setting", "best x batched read", "best x spdl"]
    columns += ["best of ceiling", "defaults/best"]
    cells = [
        [
            r["dataset"],
            r["store"],
            _fmt(r["defaults_rows_per_s"], ".0f"),
            _x(r["x_torch_peers"]),
            _x(r["x_batched_read"]),
            _x(r["x_spdl"]),
            _pct(r["of_ceiling"]),
            r["best"] or "-",
            _x(r["best_x_batched_read"]),
            _x(r["best_x_spdl"]),
            _pct(r["best_of_ceiling"]),
            _pct(r["defaults_of_best"]),
        ]
        for r in table
    ]
    return _table(columns, cells)


def _measured(check: dict[str, Any]) -> tuple[str, str]:
    """A check's value and bound as text: % of the ceiling, ms of CPU, or a ratio."""
    sign = ">=" if check["kind"] == "min" else "<="
    if check["target"].endswith("the ceiling"):
        return _pct(check["value"]), f"{sign} {100 * check['bound']:g}%"
    unit = " ms" if check["kind"] == "max" else "x"
    # Three decimals: 1.098x must not read as the 1.1x it misses.
    return _fmt(check["value"], ".3f", unit), f"{sign} {check['bound']:g}{unit}"


def _limit(check: dict[str, Any]) -> str:
    """The best the same run reached for the check (ceiling and loaders), as text."""
    limit = check.get("limit")
    if limit is None:
        return "-"
    if check["target"].endswith("the ceiling"):
        return _pct(limit)
    if check["kind"] == "max":
        return f">= {limit:.3f} ms"
    return f"<= {limit:.3f}x"


def _verdict(check: dict[str, Any]) -> str:
    if check["met"]:
        return "met"
    return "bounded (past all measured)" if check.get("bounded") else "MISSED"


def targets_table(checks: Sequence[dict[str, Any]]) -> str:
    """Markdown: each target per dataset, measured, needed, the ceiling's limit, met or not."""
    cells = [[c["target"], c["dataset"], *_measured(c), _limit(c), _verdict(c)] for c in checks]
    columns = ["target", "dataset", "measured", "needed", "best in this run", "met"]
    return _table(columns, cells)


def markdown_document(document: dict[str, Any]) -> str:
    """The whole ``segmentation.md``."""
    s, m = document["settings"], document["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    data = ", ".join(f"{name} ({rows} rows)" for name, rows in s["datasets"].items())
    return "\n".join(
        [
            "# Segmentation benchmark",
            "",
            f"Datasets: {data}. Every loader: random-resized crop to 256x256 (scale 0.25-1, "
            "ratio 3/4-4/3) and a horizontal flip (p=0.5) of image and mask together, boxes "
            f"moved, batches of {s['batch_size']}; one epoch per run in a fresh process, "
            f"{s['repeats']} run(s) each, loader order rotated between repeats. S3: moto on "
            f"127.0.0.1 with {s['latency_ms']:g} ms per GET. Wall time {s['wall_s']:.0f} s. "
            f"Load average before {s['load_before']}, after {s['load_after']}.",
            "",
            f"Machine: {m['cpus']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
            f"Python {m['python']}; {packages}; anyloader source {m['anyloader_source']}.",
            "",
            "## Medians",
            "",
            medians_table(document["summary"]),
            "",
            "## Ratios (medians of this run)",
            "",
            ratios_table(document["ratios"]),
            "",
            "## Targets (local store)",
            "",
            targets_table(document["targets"]),
            "",
        ]
    )


#: Plotted series: (label, families, pick): pick "defaults" = anyloader-geometry-batch.
SERIES = (
    ("ds.pytorch (best of w2, w4)", ("deeplake-pytorch",), "#d9b44a", "v"),
    ("batched read (best of w2, w4)", ("batched-read",), "#e07b39", "^"),
    ("SPDL (best setting)", ("spdl",), "#9c5bb5", "s"),
    (
        "anyloader per-sample Python transform (best)",
        ("anyloader-python-transform",),
        "#8fb3de",
        "x",
    ),
    ("anyloader geometry, batch mode, defaults", (DEFAULTS,), "#3a7dc9", "o"),
    ("anyloader geometry, best setting", (GEOMETRY,), "#1b3f73", "*"),
    ("ceiling (no loader, best setting)", ("ceiling",), "#2e6b3a", "_"),
)


def _series_value(mine: Sequence[dict[str, Any]], families: tuple[str, ...]) -> float | None:
    if families == (DEFAULTS,):
        return _rate(next((r for r in mine if r["loader"] == DEFAULTS), None))
    return _rate(_best(mine, families))


def plot(summary: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Per store: rows/s per dataset (log scale) and each loader's share of the ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    stores = sorted({r["store"] for r in summary}, key=lambda s: s != "local")
    fig, axes = plt.subplots(len(stores), 2, figsize=(13, 3.8 * len(stores) + 1.2), squeeze=False)
    for row_axes, store in zip(axes, stores, strict=True):
        keys = sorted({(r["dataset"], store) for r in summary if r["store"] == store}, key=_place)
        names = [k[0] for k in keys]
        for label, families, color, marker in SERIES:
            rates, shares = [], []
            for key in keys:
                mine = [r for r in summary if (r["dataset"], r["store"]) == key]
                rate = _series_value(mine, families)
                ceiling = _rate(_best(mine, ("ceiling",)))
                rates.append(float("nan") if rate is None else rate)
                shares.append(float("nan") if not (rate and ceiling) else 100 * rate / ceiling)
            style = {"color": color, "marker": marker, "label": label, "markersize": 7}
            row_axes[0].plot(names, rates, "-", **style)
            row_axes[1].plot(names, shares, "-", **style)
        row_axes[0].set_yscale("log")
        row_axes[0].yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        row_axes[0].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        row_axes[0].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        row_axes[0].set_ylabel("rows/s (median)")
        row_axes[0].set_title(f"{store} store: rows per second")
        row_axes[1].set_ylabel("% of the ceiling's rows/s")
        row_axes[1].set_title(f"{store} store: share of the no-loader ceiling")
        row_axes[1].axhline(85, color="#2e6b3a", linestyle=":", linewidth=1)
        for ax in row_axes:
            ax.grid(alpha=0.3)
            ax.set_xlabel("dataset")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.09 if len(stores) > 1 else 0.14, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(out: Path, document: dict[str, Any]) -> str:
    """Add summary, ratios and targets to ``document``; write JSON, Markdown and PNG.

    Returns the Markdown.
    """
    summary = summarize(document["runs"])
    table = ratios(summary)
    document = {
        "schema": SCHEMA_VERSION,
        **document,
        "summary": summary,
        "ratios": table,
        "targets": target_checks(table),
    }
    (out / "segmentation.json").write_text(
        json.dumps(document, indent=2, allow_nan=False, default=str)
    )
    markdown = markdown_document(document)
    (out / "segmentation.md").write_text(markdown)
    plot(summary, out / "segmentation.png", "anyloader vs its peers: random-resized crop to 256 px")
    return markdown


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.seg_report [OUT]``: render ``OUT/segmentation.json`` again."""
    out = Path((argv or sys.argv[1:] or ["benchmarks/results/segmentation"])[0])
    document = json.loads((out / "segmentation.json").read_text())
    keep = ("settings", "machine", "runs")
    print(write_all(out, {k: document[k] for k in keep}))


if __name__ == "__main__":
    main()
