"""Synthetic image/mask datasets that know their own row numbers.

Each image of :func:`make_pair` is a smooth gradient with a few filled
ellipses (compresses like a photo, not like noise); its mask marks the
ellipses. Both carry the row number as a strip of 8x8 black/white blocks in the
top-left corner, which survives JPEG, so a test can check that every image
arrived with its own mask.

:func:`make_scene` makes rows of any size whose pairing survives any crop,
resize or flip: the image is two tones of the row's own colours, bright where
its mask is set and dark elsewhere, so :func:`scene_agreement` tells from a
cropped image and mask alone that they belong together, and to that row.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ID_BITS",
    "create_image_mask_dataset",
    "make_pair",
    "make_scene",
    "read_row_id",
    "scene_agreement",
]

ID_BITS = 24
_BLOCK = 8
_PER_LINE = 8  # blocks per line of the id strip: 64 px wide, 3 lines tall


def _id_blocks(row: int) -> np.ndarray:
    bits = (row >> np.arange(ID_BITS)) & 1
    blocks = bits.reshape(-1, _PER_LINE).astype(np.uint8)
    return np.kron(blocks, np.ones((_BLOCK, _BLOCK), np.uint8))


def make_pair(row: int, size: int = 64, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return row ``row``'s image (``size x size x 3`` uint8) and mask (``size x size x 1`` bool).

    Raises:
        ValueError: if ``size`` < 64 (the id strip needs 64x24 pixels) or ``row`` is out of range.
    """
    if size < _BLOCK * _PER_LINE:
        raise ValueError(f"size must be >= {_BLOCK * _PER_LINE}, got {size}")
    if not 0 <= row < 2**ID_BITS:
        raise ValueError(f"row must be in [0, 2**{ID_BITS}), got {row}")
    rng = np.random.default_rng([seed, row])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(40, 200, 3).astype(np.float32)
    tilt = rng.uniform(-60, 60, (2, 3)).astype(np.float32)
    image = base + yy[..., None] * tilt[0] + xx[..., None] * tilt[1]
    mask = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        ry, rx = rng.uniform(0.05, 0.25, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        mask |= inside
        image[inside] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 4, image.shape).astype(np.float32)  # sensor-like grain
    strip = _id_blocks(row)
    h, w = strip.shape
    image[:h, :w] = strip[..., None] * 255.0
    mask[:h, :w] = strip.astype(bool)
    return np.clip(image, 0, 255).astype(np.uint8), mask[..., None]


def read_row_id(array: np.ndarray) -> int:
    """Read the row number back from an image or mask made by :func:`make_pair`."""
    a = np.asarray(array, dtype=np.float32)
    if a.ndim == 3:
        a = a.mean(axis=2)
    if a.max() <= 1.0:
        a = a * 255.0
    h, w = ID_BITS // _PER_LINE * _BLOCK, _PER_LINE * _BLOCK
    blocks = a[:h, :w].reshape(h // _BLOCK, _BLOCK, w // _BLOCK, _BLOCK).mean(axis=(1, 3))
    bits = (blocks.reshape(-1) > 127.5).astype(np.int64)
    return int((bits << np.arange(ID_BITS)).sum())


def create_image_mask_dataset(
    url: str,
    rows: int,
    *,
    size: int = 64,
    seed: int = 0,
    batch: int = 64,
    sizes: tuple[int, int] | None = None,
) -> None:
    """Create a deeplake dataset at ``url`` with ``rows`` image/mask pairs.

    Columns: ``images`` (JPEG, ``size x size x 3``) and ``masks`` (binary
    mask, lz4). Row ``i`` holds ``make_pair(i, size, seed=seed)``. With
    ``sizes=(lo, hi)`` row ``i`` is ``make_scene(i, h, w)`` instead, each side
    drawn from ``[lo, hi]``: images of many sizes and aspect ratios.

    Raises:
        ValueError: if ``rows`` is negative, and whatever deeplake raises if
            ``url`` exists or cannot be written.
    """
    import deeplake
    from deeplake import types

    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    ds = deeplake.create(url)
    ds.add_column("images", types.Image(types.UInt8(), sample_compression="jpeg"))
    ds.add_column("masks", types.BinaryMask(sample_compression="lz4"))
    shapes = np.random.default_rng([seed, 9]).integers(
        sizes[0] if sizes else size, (sizes[1] if sizes else size) + 1, (rows, 2)
    )

    def pair(i: int) -> tuple[np.ndarray, np.ndarray]:
        if sizes is None:
            return make_pair(i, size, seed=seed)
        return make_scene(i, int(shapes[i, 0]), int(shapes[i, 1]), seed=seed)

    for start in range(0, rows, batch):
        pairs = [pair(i) for i in range(start, min(rows, start + batch))]
        ds.append({"images": [p[0] for p in pairs], "masks": [p[1] for p in pairs]})
    ds.commit()


def _scene_tones(row: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, row, 7])
    return rng.uniform(20, 70, 3), rng.uniform(180, 235, 3)


def make_scene(
    row: int, height: int, width: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Row ``row``'s image (``height x width x 3`` uint8) and mask (``x 1`` bool), any size.

    The image is the row's bright tone where the mask is set (one to four
    ellipses) and its dark tone elsewhere, with a gentle gradient and grain.
    """
    rng = np.random.default_rng([seed, row, 8])
    dark, bright = _scene_tones(row, seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / height, xx / width
    mask = np.zeros((height, width), bool)
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        ry, rx = rng.uniform(0.08, 0.3, 2)
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    image = np.where(mask[..., None], bright, dark).astype(np.float32)
    image += (yy[..., None] - 0.5) * rng.uniform(-20, 20, 3).astype(np.float32)
    image += rng.normal(0, 3, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), mask[..., None]


def scene_agreement(image: np.ndarray, mask: np.ndarray, row: int, *, seed: int = 0) -> float:
    """Share of pixels whose colour is row ``row``'s tone for its mask value (0..1).

    Near 1 for a scene's image and mask placed alike (edges blur a little);
    far lower for another row's image or mask, or a mask placed elsewhere.
    """
    dark, bright = _scene_tones(row, seed)
    expected = np.where(np.asarray(mask).reshape(*np.shape(mask)[:2], 1), bright, dark)
    distance = np.abs(np.asarray(image, dtype=np.float32) - expected).sum(axis=-1)
    return float(np.mean(distance < 90))
