"""Build the benchmark datasets once, cache them on disk, mirror them to S3.

The local copy is the source of truth: it is written to a temporary
directory and renamed into place only when complete, so an interrupted build
is never mistaken for a cached dataset. The S3 copy is the same files
uploaded byte for byte (no re-encoding), because moto keeps objects in
memory and forgets them when its server stops.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from . import s3_server

__all__ = ["BUCKET", "Store", "local_dataset", "s3_dataset"]

BUCKET = "anyloader-bench"


@dataclass(frozen=True)
class Store:
    """Where a benchmark run reads its dataset: a URL plus deeplake creds."""

    name: str
    url: str
    creds: dict[str, str]


def dataset_name(rows: int, size: int, seed: int) -> str:
    return f"pairs-{rows}x{size}-seed{seed}"


def local_dataset(cache_dir: Path, rows: int, size: int, seed: int = 0) -> Path:
    """Return the directory of the cached dataset, building it first if missing.

    Guarantee: the returned directory holds a complete dataset of ``rows``
    image/mask pairs made by ``anyloader._sources.synthetic.create_image_mask_dataset``.
    """
    from anyloader._sources.synthetic import create_image_mask_dataset

    path = cache_dir / dataset_name(rows, size, seed)
    if path.is_dir():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    create_image_mask_dataset(f"file://{partial}", rows, size=size, seed=seed)
    partial.rename(path)
    return path


def s3_dataset(endpoint_url: str, local: Path) -> Store:
    """Upload the local dataset at ``local`` to the S3 server; return its store.

    Call once per server lifetime: moto forgets everything when it stops.
    """
    s3_server.create_bucket(endpoint_url, BUCKET)
    s3_server.upload_tree(endpoint_url, BUCKET, local.name, str(local))
    creds = {**s3_server.CREDS, "endpoint_url": endpoint_url}
    return Store("s3", f"s3://{BUCKET}/{local.name}", creds)


def local_store(local: Path) -> Store:
    return Store("local", f"file://{local}", {})
