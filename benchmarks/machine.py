"""A description of the machine and software a benchmark ran on, for the report."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
from importlib import metadata
from typing import Any

import psutil

__all__ = ["describe"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _source_state() -> str:
    """The commit the engine was measured at, and whether ``src/`` had local edits."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head} with uncommitted changes in src/" if dirty else head


def _imported_from(module: str) -> str:
    # PYTHONPATH may point the workers at a snapshot instead of the checkout.
    spec = importlib.util.find_spec(module)
    return str(spec.origin) if spec is not None else "not importable"


def describe() -> dict[str, Any]:
    """CPU count and model, memory, OS, Python and the versions of the packages measured."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "anyloader_source": _source_state(),
        "anyloader_imported_from": _imported_from("anyloader"),
        "packages": {
            p: _version(p) for p in ("anyloader", "deeplake", "torch", "anyio", "trio", "moto")
        },
    }
