"""``scripts/setup.sh`` runs pip only when what the install depends on changed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Stands in for .venv/bin/python: answers -c (the version) for real, logs pip calls.
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = "-c" ]; then exec python3 "$@"; fi
echo "$*" >> "$(dirname "$0")/../../pip-calls.log"
"""


def make_checkout(tmp_path: Path) -> Path:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", checkout / "pyproject.toml")
    shutil.copy(ROOT / "scripts" / "setup.sh", checkout / "scripts" / "setup.sh")
    python = checkout / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return checkout


def setup(checkout: Path, extras: str = "") -> tuple[str, list[str]]:
    done = subprocess.run(
        ["bash", "scripts/setup.sh", extras], cwd=checkout, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    log = checkout / "pip-calls.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return done.stdout, calls


def test_setup_runs_pip_once_then_only_when_its_inputs_change(tmp_path: Path) -> None:
    checkout = make_checkout(tmp_path)
    _, first = setup(checkout)
    assert [c.split()[-1] for c in first] == ["pip", "torch==2.13.0", "."]
    out, again = setup(checkout)
    assert again == []
    assert "up to date" in out
    # New extras install; afterwards both extras and none are covered.
    _, with_test = setup(checkout, "test")
    assert with_test[-1].endswith("-e .[test]")
    assert setup(checkout, "")[1] == []
    assert setup(checkout, "test")[1] == []
    # A changed pyproject.toml means installing again.
    with (checkout / "pyproject.toml").open("a") as f:
        f.write("\n# a new dependency, say\n")
    assert setup(checkout, "test")[1] != []
