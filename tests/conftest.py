"""Shared fixtures: both AnyIO backends, real deeplake datasets on local paths."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from anyloader._sources.synthetic import create_image_mask_dataset

settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile("ci")

BACKENDS = ["asyncio", "trio"]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    return str(request.param)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend name, for synchronous tests of ``AsyncDataset``."""
    return str(request.param)


def _dataset(root: Path, rows: int) -> str:
    url = f"file://{root / f'pairs-{rows}'}"
    create_image_mask_dataset(url, rows, size=64)
    return url


@pytest.fixture(scope="session")
def pairs_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real deeplake dataset of 97 image/mask pairs (a prime: shards are uneven)."""
    return _dataset(tmp_path_factory.mktemp("deeplake"), 97)


@pytest.fixture(scope="session")
def make_pairs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], str]:
    """Factory of cached deeplake datasets with a given number of rows."""
    root = tmp_path_factory.mktemp("deeplake-sized")
    cache: dict[int, str] = {}

    def make(rows: int) -> str:
        if rows not in cache:
            cache[rows] = _dataset(root, rows)
        return cache[rows]

    return make


@pytest.fixture
def thread_baseline() -> set[int]:
    """Idents of the threads alive before the test (deeplake's own pool included)."""
    return {t.ident for t in threading.enumerate() if t.ident is not None}
