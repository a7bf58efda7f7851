"""The main job: ``anyloader demo`` generates a dataset and checks one epoch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from anyloader.__main__ import main


@pytest.mark.parametrize("workers", [0, 2])
def test_demo_generates_caches_and_passes_its_checks(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    backend: str,
    workers: int,
) -> None:
    monkeypatch.setenv("ANYLOADER_CACHE", str(tmp_path))
    argv = ["demo", "--rows", "40", "--size", "64", "--workers", str(workers)]
    assert main([*argv, "--backend", backend, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "generating 40 image/mask pairs" in out
    assert "exactly once: PASS (40 expected, 0 duplicated, 0 missing)" in out
    assert "every image with its own mask, cropped alike: PASS (0 mismatched)" in out
    # The stage breakdown, from the stats of the epoch (summed over its workers).
    assert "  rows     40 in " in out
    assert "  consumer waited " in out
    assert "(input-bound " in out
    assert (tmp_path / "demo-40x40-80").is_dir()  # images of 40 to 80 px, cropped to 64
    # Second run: the cached dataset is used as is.
    assert main([*argv, "--backend", backend, "--no-progress"]) == 0
    assert "generating" not in capsys.readouterr().out


def test_demo_runs_on_a_given_url(pairs_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", pairs_url, "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "exactly once: PASS (97 expected" in out
    assert "own mask" not in out  # pairs are only checked on generated data


def test_demo_rejects_a_bad_backend() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "anyloader", "demo", "--backend", "curio"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "invalid choice: 'curio'" in proc.stderr


def test_demo_progress_bar_shows_rows_per_second_and_the_input_bound_share(
    pairs_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tqdm

    original = tqdm.tqdm.__init__

    def eager(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **{**kwargs, "mininterval": 0})  # draw however fast the epoch

    monkeypatch.setattr(tqdm.tqdm, "__init__", eager)
    assert main(["demo", pairs_url, "--workers", "0", "--batch-size", "16"]) == 0
    bar = capsys.readouterr().err
    assert "row/s" in bar
    assert re.search(r"input-bound \d+%", bar)
