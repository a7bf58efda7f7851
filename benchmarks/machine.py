"""A description of the machine and software a benchmark ran on, for the report."""

from __future__ import annotations

import os
import platform
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


def describe() -> dict[str, Any]:
    """CPU count and model, memory, OS, Python and the versions of the packages measured."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": {
            p: _version(p) for p in ("anyloader", "deeplake", "torch", "anyio", "trio", "moto")
        },
    }
