"""``anyloader demo``: one epoch of image/mask pairs through a torch DataLoader."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._sources.synthetic import create_image_mask_dataset, scene_agreement
from ._stats.epoch_stats import EpochStats

__all__ = ["DemoResult", "cache_dir", "demo_dataset", "demo_sizes", "run_demo"]


def cache_dir() -> Path:
    """Where generated datasets live: ``$ANYLOADER_CACHE``, else ``$XDG_CACHE_HOME/anyloader``."""
    explicit = os.environ.get("ANYLOADER_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "anyloader"


def demo_sizes(size: int) -> tuple[int, int]:
    """The range of the demo dataset's image sides for crops of ``size``: real data varies."""
    return size * 5 // 8, size * 5 // 4


def demo_dataset(rows: int, size: int, *, root: Path | None = None) -> str:
    """Return the URL of a cached synthetic dataset, creating it on first use.

    Images and masks of many sizes and aspect ratios (each side in
    :func:`demo_sizes`), as segmentation data is. The dataset is built in a
    temporary folder and renamed into place, so an interrupted build never
    leaves a half-written dataset in the cache.
    """
    root = root or cache_dir()
    lo, hi = demo_sizes(size)
    final = root / f"demo-{rows}x{lo}-{hi}"
    if not final.exists():
        print(f"generating {rows} image/mask pairs of {lo}-{hi} px into {final} ...", flush=True)
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
        try:
            create_image_mask_dataset(f"file://{scratch / 'ds'}", rows, sizes=(lo, hi))
            try:
                (scratch / "ds").rename(final)
            except OSError:
                if not final.exists():  # lost a race with another builder: fine
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return f"file://{final}"


#: Share of a cropped pair's pixels that must show the row's tone for its mask value.
AGREEMENT = 0.9


def check_pairs(batch: dict[str, Any]) -> dict[str, Any]:
    """Batch transform: whether each image and mask are the same crop of their own row."""
    rows = zip(
        batch["images"].numpy(), batch["masks"].numpy(), batch["index"].tolist(), strict=True
    )
    batch["pair_ok"] = torch.tensor(
        [scene_agreement(image, mask, row) >= AGREEMENT for image, mask, row in rows]
    )
    return batch


@dataclass(frozen=True)
class DemoResult:
    rows: int
    expected: int
    seconds: float
    first_batch_seconds: float
    duplicates: int
    missing: int
    mismatched_pairs: int | None
    #: The loader's stats (summed over workers), with this loop as the consumer.
    stats: EpochStats = field(default_factory=EpochStats)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    @property
    def exactly_once(self) -> bool:
        return self.duplicates == 0 and self.missing == 0 and self.rows == self.expected


def run_demo(
    url: str,
    *,
    backend: str = "asyncio",
    num_workers: int = 2,
    batch_size: int = 32,
    size: int = 256,
    shuffle: bool = True,
    pairs: bool = True,
    progress: bool = True,
) -> DemoResult:
    """Stream one epoch of ``url`` and check that every row arrived exactly once."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from ._dataset import AsyncDataset
    from ._plan.geometry import RandomResizedCrop
    from ._stats.training_clock import TrainingClock

    # Batch mode: the dataset builds each batch with one copy, so the
    # DataLoader only moves batches (batch_size=None). What every segmentation
    # training does, a random crop and flip of image and mask together, runs in
    # the decode threads, straight into the batch.
    dataset = AsyncDataset(
        url,
        backend=backend,
        shuffle=shuffle,
        return_index=True,
        batch_size=batch_size,
        geometry=RandomResizedCrop((size, size), scale=(0.25, 1.0), hflip=0.5),
        transform=check_pairs if pairs else None,
    )
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
    expected = len(dataset)
    seen = np.zeros(len(dataset.config.source), dtype=np.int64)
    mismatched = 0
    first_batch = float("nan")
    clock = TrainingClock()  # time in next(loader) versus the rest: how input-bound we are
    start = time.perf_counter()
    with tqdm(total=expected, unit="row", disable=not progress, leave=False) as bar:
        for batch in clock(loader):
            if first_batch != first_batch:  # NaN: this is the first batch
                first_batch = time.perf_counter() - start
            indices = batch["index"].numpy()
            np.add.at(seen, indices, 1)
            if pairs:
                mismatched += int((~batch["pair_ok"]).sum().item())
            bar.set_postfix_str(f"input-bound {clock.input_bound:.0%}", refresh=False)
            bar.update(len(indices))
    seconds = time.perf_counter() - start
    return DemoResult(
        rows=int(seen.sum()),
        expected=expected,
        seconds=seconds,
        first_batch_seconds=first_batch,
        duplicates=int((seen > 1).sum()),
        missing=int((seen == 0).sum()),
        mismatched_pairs=mismatched if pairs else None,
        stats=clock.applied(dataset.stats()),
    )
