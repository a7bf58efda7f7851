"""The segmentation benchmark's datasets: COCO-like rows and fixed sizes, photo-like, cached.

Images are photo-like JPEGs: three octaves of smoothed random texture plus
per-pixel grain, encoded by libjpeg-turbo at quality 90 with 4:2:0 chroma (a
camera's), about 50 KB at 512 px, so entropy decoding costs what it costs on
photos (smooth gradients decode several times faster). Each row's
``masks`` (BinaryMask, lz4) marks the blobs where the coarsest octave is
high, so image and mask share a scene.

* ``coco-like``: images of 200-640 px per side at random aspect ratios,
  ``masks`` of the same size, an int ``label``, ragged ``boxes``
  (BoundingBox, 0-8 per row, ``xyxy`` pixels) and a ``caption`` (Text).
* ``NNNpx``: square images and masks of one size.

Each dataset is built once into the cache directory (named by kind, rows,
size and seed) and renamed into place only when complete
(``benchmarks.decode._cached``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .decode import _cached

__all__ = ["COCO", "SegData", "build", "default_datasets", "photo"]

COCO = "coco-like"
COCO_SIDES = (200, 640)
MAX_BOXES = 8
_VERSION = 1  # bump when the generator changes: the cache is keyed by name


@dataclass(frozen=True)
class SegData:
    """One benchmark dataset: ``coco-like`` (``size=0``) or square images of ``size`` px."""

    rows: int
    size: int = 0
    seed: int = 0

    @property
    def name(self) -> str:
        return COCO if not self.size else f"{self.size}px"

    @property
    def columns(self) -> list[str]:
        """What every loader reads: images and masks first."""
        extra = ["label", "boxes", "caption"] if not self.size else []
        return ["images", "masks", *extra]

    @property
    def dirname(self) -> str:
        return f"seg-v{_VERSION}-{self.name}-{self.rows}rows-seed{self.seed}"


def default_datasets(quick: bool, rows: int | None = None) -> list[SegData]:
    """The line-up: COCO-like and 64-1024 px (1024 px with half the rows), or tiny ``quick``."""
    if quick:
        n = rows or 64
        return [SegData(n), SegData(n, 64), SegData(n, 256)]
    n = rows or 2000
    big = max(1, n // 2)  # 1024 px rows decode ~7 ms each in the slowest peers
    return [SegData(n), *(SegData(n, s) for s in (64, 128, 256, 512)), SegData(big, 1024)]


def photo(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo-like ``(height, width, 3)`` uint8 image and its ``(height, width, 1)`` bool mask."""
    import torch
    import torch.nn.functional as F

    image = np.zeros((height, width, 3), np.float32)
    coarse = None
    for div, amplitude in ((64, 60.0), (16, 35.0), (4, 12.0)):
        small = rng.standard_normal((1, 3, max(2, height // div), max(2, width // div)), np.float32)
        up = F.interpolate(torch.from_numpy(small), size=(height, width), mode="bilinear")
        octave = up[0].permute(1, 2, 0).numpy()
        coarse = octave[..., 0] if coarse is None else coarse
        image += amplitude * octave
    image += rng.uniform(60, 190, 3).astype(np.float32)
    image += rng.standard_normal((height, width, 3), np.float32) * 2.5
    mask = coarse > 0.5
    return np.clip(image, 0, 255).astype(np.uint8), mask[..., None]


def _boxes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    n = int(rng.integers(0, MAX_BOXES + 1))
    corners = rng.uniform(0, [width, height, width, height], (n, 4))
    x0, x1 = np.minimum(corners[:, 0], corners[:, 2]), np.maximum(corners[:, 0], corners[:, 2])
    y0, y1 = np.minimum(corners[:, 1], corners[:, 3]), np.maximum(corners[:, 1], corners[:, 3])
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)


def _create(data: SegData, url: str) -> None:
    import deeplake
    import simplejpeg
    from deeplake import types

    ds = deeplake.create(url)
    ds.add_column("images", types.Image(types.UInt8(), sample_compression="jpeg"))
    ds.add_column("masks", types.BinaryMask(sample_compression="lz4"))
    if not data.size:
        ds.add_column("label", types.Int64())
        ds.add_column("boxes", types.BoundingBox(types.Float32(), "ltrb", "pixel"))
        ds.add_column("caption", types.Text())
    rng = np.random.default_rng([data.seed, data.size, 5])
    for start in range(0, data.rows, 64):
        batch: dict[str, list[object]] = {c: [] for c in data.columns}
        for row in range(start, min(data.rows, start + 64)):
            lo, hi = COCO_SIDES
            h, w = (data.size, data.size) if data.size else map(int, rng.integers(lo, hi + 1, 2))
            image, mask = photo(rng, h, w)
            batch["images"].append(
                simplejpeg.encode_jpeg(image, quality=90, colorsubsampling="420")
            )
            batch["masks"].append(mask)
            if not data.size:
                batch["label"].append(int(rng.integers(0, 80)))
                batch["boxes"].append(_boxes(rng, h, w))
                batch["caption"].append(f"row {row}: a photo-like scene of {w}x{h} pixels")
        ds.append(batch)
    ds.commit()


def build(cache_dir: Path, data: SegData) -> Path:
    """The directory of ``data``'s dataset in ``cache_dir``, built first if missing."""
    url = _cached(cache_dir, data.dirname, lambda url: _create(data, url))
    return Path(url.removeprefix("file://"))
