"""The segmentation workload, written the ways anyloader's peers write it.

Every loader of ``benchmarks.segmentation`` does the same work per row: a
random-resized crop to ``OUT`` x ``OUT`` (area scale ``SCALE``, torchvision's
aspect ratios 3/4-4/3) and a horizontal flip with probability 1/2, applied to
the image and its mask together; boxes (``xyxy`` pixels) move with the crop,
are flipped and clipped, and boxes left without area are dropped.

Two ways of doing it, one per kind of peer:

:func:`augment_sample`
    A per-sample Python transform as a user writes it without torchvision:
    crop parameters drawn with Python's ``random`` the way torchvision's
    ``RandomResizedCrop.get_params`` draws them, the decoded image cropped,
    ``torch.nn.functional.interpolate`` (bilinear, antialiased) on the uint8
    tensor, ``nearest-exact`` on the mask, ``torch.flip``. For
    ``ds.pytorch(transform=...)``, the batched read and anyloader's
    per-sample ``transform``.
:func:`place_group`
    The strongest version of the same work on stored JPEG bytes, for SPDL and
    the no-loader ceiling: anyloader's own routine (``anyloader._decode.placing._decode_jpeg``:
    libjpeg-turbo through simplejpeg at the smallest DCT scale whose crop
    still covers the output, crop, torch's antialiased uint8 resize through
    numpy, flip) and its nearest mask resampling, written straight into a
    group's output arrays. Run it in threads whose OpenMP is limited to the
    thread (:func:`anyloader._decode.resize.single_threaded_torch` as the pool's
    initializer), or two decode threads start four spinning OpenMP threads.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "OUT",
    "SCALE",
    "augment_sample",
    "collate",
    "crop_params",
    "move_boxes",
    "place_group",
]

OUT = 256
SCALE = (0.25, 1.0)
RATIO = (3 / 4, 4 / 3)
HFLIP = 0.5
#: Columns batched as tensors; every other column is collated as a list.
STACKED = ("images", "masks", "label")


def crop_params(height: int, width: int, rng: Any = random) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random-resized crop: torchvision's ``get_params``."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    # Fallback: the central crop, trimmed to the nearest allowed aspect ratio.
    ratio = width / height
    if ratio < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif ratio > RATIO[1]:
        w, h = round(height * RATIO[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def move_boxes(boxes: Any, box: tuple[int, int, int, int], flip: bool) -> np.ndarray:
    """``xyxy`` boxes of the source in the output's pixels: scaled, flipped, clipped, non-empty."""
    top, left, h, w = box
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    x = (b[:, [0, 2]] - left) * (OUT / w)
    y = (b[:, [1, 3]] - top) * (OUT / h)
    if flip:
        x = OUT - x[:, ::-1]
    x, y = np.clip(x, 0, OUT), np.clip(y, 0, OUT)
    keep = (x[:, 1] > x[:, 0]) & (y[:, 1] > y[:, 0])
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)[keep]


def augment_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """The joint crop and flip of one decoded sample, in Python and torch (see the module)."""
    import torch
    import torch.nn.functional as F

    image, mask = np.asarray(sample["images"]), np.asarray(sample["masks"])
    box = crop_params(image.shape[0], image.shape[1])
    top, left, h, w = box
    flip = random.random() < HFLIP
    # A copy of the crop: deeplake's arrays are read-only, torch wraps only writable memory.
    crop = torch.from_numpy(np.array(image[top : top + h, left : left + w])).permute(2, 0, 1)
    out = F.interpolate(crop[None], size=(OUT, OUT), mode="bilinear", antialias=True)[0]
    labels = torch.from_numpy(np.array(mask[top : top + h, left : left + w], dtype=np.uint8))
    labels = F.interpolate(labels.permute(2, 0, 1)[None], size=(OUT, OUT), mode="nearest-exact")[0]
    if flip:
        out, labels = torch.flip(out, [2]), torch.flip(labels, [2])
    result = dict(sample)
    result["images"] = out.permute(1, 2, 0)
    result["masks"] = labels.permute(1, 2, 0).bool()
    if "boxes" in sample:
        result["boxes"] = move_boxes(sample["boxes"], box, flip)
    return result


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Images, masks and labels stacked; ragged columns (boxes, captions) and rows as lists."""
    import torch

    batch: dict[str, Any] = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if name in STACKED:
            batch[name] = torch.stack(
                [
                    v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v))
                    for v in values
                ]
            )
        else:
            batch[name] = values
    return batch


def place_group(
    blobs: Sequence[bytes], values: dict[str, Any], rng: Any = random
) -> dict[str, Any]:
    """One fetched group's rows placed like anyloader places them (see the module).

    ``blobs`` are the stored JPEGs; ``values`` the other columns as fetched
    (``masks`` and, on the COCO-like dataset, ``label``, ``boxes``, ``caption``).
    Returns the group's columns: ``images`` uint8 ``(n, OUT, OUT, 3)``, ``masks``
    bool ``(n, OUT, OUT, 1)``, moved ``boxes``, the rest as fetched.

    Raises:
        ValueError: a row libjpeg-turbo cannot decode (the benchmark's never are).
    """
    from anyloader._decode.placing import _decode_jpeg, _jpeg_size
    from anyloader._decode.resize import resize_nearest
    from anyloader._plan.geometry import Placement

    n = len(blobs)
    images = np.empty((n, OUT, OUT, 3), np.uint8)
    masks = np.empty((n, OUT, OUT, 1), bool)
    boxes = []
    for i, blob in enumerate(blobs):
        size = _jpeg_size(blob)
        if size is None:
            raise ValueError(f"row {i} of the group is not a JPEG libjpeg-turbo reads")
        box = crop_params(*size, rng=rng)
        flip = rng.random() < HFLIP
        placement = Placement(*box, (OUT, OUT), flip, False)
        if not _decode_jpeg(blob, placement, size, images[i]):
            raise ValueError(f"row {i} of the group is not a JPEG libjpeg-turbo decodes")
        mask = np.asarray(values["masks"][i])
        resize_nearest(mask.reshape(*mask.shape[:2], -1), box, masks[i], hflip=flip)
        if "boxes" in values:
            boxes.append(move_boxes(values["boxes"][i], box, flip))
    placed = {**values, "images": images, "masks": masks}
    if "boxes" in values:
        placed["boxes"] = boxes
    return placed
