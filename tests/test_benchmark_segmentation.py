"""The segmentation benchmark runs end to end and reports every loader, every row once.

One ``--quick`` run on a tiny COCO-like dataset (images of many sizes, ragged
boxes, captions), as a user would start it. It checks shape, not speed: the
JSON, Markdown and PNG exist, every loader of the line-up produced a result
whose batches are 256 px uint8 images and bool masks, and every loader
delivered every row exactly once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("spdl.pipeline")

ROOT = Path(__file__).resolve().parent.parent
ROWS = 48


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("segmentation")
    cmd = [sys.executable, "-m", "benchmarks.segmentation", "--quick", f"--rows={ROWS}"]
    cmd += ["--datasets=coco-like", "--stores=local", "--exit-grace=5"]
    cmd += [f"--out={out}", f"--cache-dir={out / 'cache'}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    return {"out": out, "done": done}


@pytest.mark.slow
def test_quick_run_reports_every_loader_with_every_row_once(quick_run: dict[str, Any]) -> None:
    done, out = quick_run["done"], quick_run["out"]
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("segmentation.json", "segmentation.md", "segmentation.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "segmentation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    document = json.loads((out / "segmentation.json").read_text())
    loaders = document["settings"]["loaders"]
    assert {"spdl", "ceiling", "anyloader-geometry-batch"} <= {
        s["loader"] for s in document["summary"]
    }
    runs = {r["loader"]: r for r in document["runs"]}
    assert sorted(runs) == sorted(loaders)
    for name, run in runs.items():
        assert run["ok"], (name, run.get("error"))
        assert run["rows"] == ROWS, name
        assert (run["samples"], run["missing"], run["repeated"]) == (ROWS, 0, 0), name
        assert run["samples_per_s"] > 0, name
        assert run["first_batch_s"] <= run["first_rows_s"] <= run["seconds"], name
        if run["family"] != "ceiling":  # the ceiling drops what it placed
            assert run["images"] == "torch.uint8 (32, 256, 256, 3)", name
            assert run["masks"] == "torch.bool (32, 256, 256, 1)", name
    markdown = (out / "segmentation.md").read_text()
    assert "## Targets (local store)" in markdown
    assert "geometry batch mode vs SPDL" in markdown
    assert "MISSED" in markdown or "met" in markdown


def test_a_target_past_the_best_of_the_same_run_reads_as_bounded() -> None:
    from benchmarks import seg_report

    def row(loader: str, family: str, rate: float, cpu: float = 3.0) -> dict[str, Any]:
        return {
            "dataset": "coco-like",
            "store": "local",
            "loader": loader,
            "family": family,
            "samples_per_s": rate,
            "cpu_ms_per_sample": cpu,
        }

    summary = [
        row("batched-read-w2", "batched-read", 400.0),
        row("spdl", "spdl", 450.0),
        row(seg_report.DEFAULTS, seg_report.GEOMETRY, 540.0, cpu=2.5),
        row("ceiling", "ceiling", 600.0, cpu=2.4),
    ]
    # A loader faster than the ceiling raises what the run shows attainable.
    faster = seg_report.ratios([*summary, row("other", "batched-read", 700.0, cpu=3.0)])
    assert faster[0]["bounds"]["x_spdl"] == pytest.approx(700 / 450)
    checks = {c["target"]: c for c in seg_report.target_checks(seg_report.ratios(summary))}
    torch_peers = checks["geometry batch mode vs best of ds.pytorch and batched read"]
    assert torch_peers["limit"] == pytest.approx(1.5)  # 600 / 400 < 2.5: nothing did
    assert (torch_peers["met"], torch_peers["bounded"]) == (False, True)
    spdl = checks["geometry batch mode vs SPDL"]  # 600 / 450 = 1.33 >= 1.3: reachable
    assert (spdl["met"], spdl["bounded"]) == (False, False)
    cpu = checks["geometry batch mode CPU ms per row (256 px out)"]
    assert (cpu["limit"], cpu["bounded"]) == (2.4, True)  # the ceiling itself needs 2.4 ms
    table = seg_report.targets_table(list(checks.values()))
    assert "bounded (past all measured)" in table
    assert "MISSED" in table
