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
