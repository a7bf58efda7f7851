"""Resampling pixels in the decode threads: antialiased for images, nearest for masks.

Images are resized with antialiased bilinear interpolation: Pillow's and
torchvision's ``antialias=True`` (a triangle filter whose support widens with
the downscale factor), through torch's uint8 kernel, which releases the GIL
and matched Pillow within one level on every pixel measured. Masks and other
label images are resized by nearest neighbour with the pixel-centre rule
(output pixel ``i`` reads source pixel ``floor((i + 0.5) * in / out)``,
torchvision's "nearest-exact"), so labels are exact: no value appears that
was not in the mask.

Measured on this 2-core machine, CPU ms per RandomResizedCrop to 256x256 of a
photo-like JPEG (``docs/benchmarks.md``, geometry): torch 0.37 / 0.55 / 1.12
for 256 / 512 / 1024 px sources against Pillow's 0.59 / 1.13 / 3.12; OpenCV's
``INTER_AREA`` is another filter (up to 81 levels off) and its wheel is 172
MB. Nearest with two ``numpy.take`` calls (the second writing into the batch
slot) costs 0.07 ms for a 512 px bool mask.

torch opens an OpenMP region for some copies, and each thread that does
becomes the master of a team of its own: two decode threads then run four
spinning threads on two cores (measured 0.55 -> 10.8 ms per image). Inputs
and outputs here go through numpy, never torch copies, and
:func:`single_threaded_torch` limits OpenMP in the calling thread only (the
training loop keeps its threads).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

__all__ = ["nearest_indices", "resize_image", "resize_nearest", "single_threaded_torch"]


def nearest_indices(start: int, length: int, out: int, *, flip: bool = False) -> NDArray[np.intp]:
    """Source indices of ``out`` pixels resampled from ``[start, start + length)``, centre rule.

    Reversed with ``flip``, so a flip costs nothing.
    """
    # floor((i + 0.5) * length / out), in integers: exact, never past the box.
    index = start + ((2 * np.arange(out, dtype=np.intp) + 1) * length) // (2 * out)
    return index[::-1] if flip else index


def resize_nearest(
    source: NDArray[Any],
    box: tuple[int, int, int, int],
    out: NDArray[Any],
    *,
    hflip: bool = False,
    vflip: bool = False,
) -> None:
    """Write ``source[box]`` resized to ``out``'s height and width by nearest neighbour.

    ``box`` is ``(top, left, height, width)`` in ``source``'s pixels. Any dtype
    and trailing axes; ``out`` receives exactly values of ``source``.
    """
    top, left, height, width = box
    if (height, width) == out.shape[:2]:  # a crop at its own size: copied, not resampled
        crop = source[top : top + height, left : left + width]
        np.copyto(out, crop[:: -1 if vflip else 1, :: -1 if hflip else 1])
        return
    rows = nearest_indices(top, height, out.shape[0], flip=vflip)
    cols = nearest_indices(left, width, out.shape[1], flip=hflip)
    np.take(np.take(source, rows, axis=0), cols, axis=1, out=out)


def resize_image(
    source: NDArray[np.uint8],
    box: tuple[int, int, int, int],
    out: NDArray[np.uint8],
    *,
    hflip: bool = False,
    vflip: bool = False,
) -> None:
    """Write ``source[box]`` (uint8 ``(H, W, C)``) resized to ``out``, antialiased, flipped.

    A box of ``out``'s own size is copied as it is (no resampling at all).
    """
    import torch
    import torch.nn.functional as F

    top, left, height, width = box
    crop = source[top : top + height, left : left + width]
    size = out.shape[:2]
    flips = [axis for axis, flip in ((0, vflip), (1, hflip)) if flip]
    if (height, width) == size and not flips:
        np.copyto(out, crop)
        return
    if not (crop.flags.c_contiguous and crop.flags.writeable):
        crop = np.array(crop)  # torch wraps only writable memory (deeplake's is not)
    resized = torch.from_numpy(crop)
    if (height, width) != size:
        tensor = resized.permute(2, 0, 1)[None]
        resized = F.interpolate(tensor, size=size, mode="bilinear", antialias=True)[0]
        resized = resized.permute(1, 2, 0)
    if flips:
        # torch's flip copies whole pixels: 10x faster than numpy copying a reversed
        # view of 3-byte pixels (0.03 against 0.26 ms at 256 px).
        resized = resized.flip(flips)
    torch.from_numpy(out).copy_(resized)


def single_threaded_torch() -> None:
    """Limit OpenMP to this thread for torch ops it runs (a decode pool's initializer).

    ``omp_set_num_threads`` sets a per-thread value: the training loop's
    threads are untouched. Without torch's libgomp (other builds, macOS),
    nothing to limit here.
    """
    limit = _omp_set_num_threads()
    if limit is not None:
        limit(1)


@functools.cache
def _omp_set_num_threads() -> Callable[[int], object] | None:
    import torch

    for path in glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*.so*")):
        try:
            setter: Callable[[int], object] = ctypes.CDLL(path).omp_set_num_threads
        except (OSError, AttributeError):
            continue
        return setter
    return None
