"""Placing a fetch's rows under a geometry: decode, crop, resize and flip, in the decode threads.

With ``geometry=``, every fetch goes through :func:`place` before it counts as
fetched (inside its attempt, so retries, timeouts and cancellation cover it).
One job per fetch runs in the epoch's decode pool: for each row it reads the
reference column's size (from the JPEG header, or the decoded array), places
the crop (:mod:`anyloader._plan.geometry`), and writes every image and mask column
of the row straight into its output, the batch tensor's slot in ordered batch
mode:

* JPEG bytes (:class:`Encoded`, from a source that left them to us) are decoded
  by libjpeg-turbo at the smallest DCT scale whose crop still has the output
  size (1/2, 1/4 or 1/8: the other scales decoded slower than a full decode),
  the crop is taken in the scaled image's pixels (``top * h' // H``, and so
  on), then resized; a crop of the whole image at its own size is decoded
  straight into the slot;
* decoded images (PNG, deeplake's decode, in-memory arrays) are cropped and
  resized the same way, after decode;
* images come out RGB (grayscale repeated, a fourth channel dropped), masks
  keep their dtype and channels (a 2-D mask gains one) and are resampled by
  nearest neighbour, so labels stay exact;
* boxes move with the crop and the flips (:class:`~anyloader._plan.geometry.Boxes`).

Rows libjpeg-turbo cannot read at all go back to the source (``Encoded.redo``,
deeplake's own decode of that row) and are placed after.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from .resize import resize_image, resize_nearest

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from numpy.typing import NDArray

    from .._batch.slabs import BatchSlabs
    from .._plan.geometry import Placement
    from .threads import DecodeSettings, EpochDecoding

__all__ = ["Encoded", "parts", "place"]

_SCALES = (8, 4, 2)  # DCT reductions worth taking (docs/benchmarks.md, geometry)
_LEAST_ROWS = 4  # rows worth a decode job of their own: fewer cost more in hand-offs than they save


class Encoded(Sequence[bytes]):
    """A JPEG column's stored bytes, one per row, for the geometry to decode at scale.

    A sequence of the bytes (what a source returns for a column). ``redo(i)``
    decodes row ``i`` the source's own way, for rows libjpeg-turbo cannot read.
    """

    def __init__(self, blobs: Sequence[bytes], redo: Callable[[int], Awaitable[Any]]) -> None:
        self.blobs = blobs
        self.redo = redo

    def __len__(self) -> int:
        return len(self.blobs)

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        return self.blobs[i]


def _jpeg_size(blob: bytes) -> tuple[int, int] | None:
    import simplejpeg

    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(blob)
    except ValueError:
        return None
    return (int(height), int(width)) if colorspace in ("Gray", "YCbCr", "RGB") else None


def _scaled_box(
    placement: Placement, full: tuple[int, int], scaled: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``placement``'s box in an image decoded at ``scaled`` instead of ``full`` size."""
    (fh, fw), (sh, sw) = full, scaled
    top, left = placement.top * sh // fh, placement.left * sw // fw
    height = max(1, min(sh - top, placement.height * sh // fh))
    width = max(1, min(sw - left, placement.width * sw // fw))
    return top, left, height, width


def _decode_jpeg(
    blob: bytes, placement: Placement, size: tuple[int, int], out: NDArray[np.uint8]
) -> bool:
    """Decode, crop, resize and flip one JPEG into ``out``; False if libjpeg-turbo cannot."""
    import simplejpeg

    height, width = size
    oh, ow = placement.size
    identity = placement.box == (0, 0, height, width) and (oh, ow) == size
    try:
        if identity and not (placement.hflip or placement.vflip):
            simplejpeg.decode_jpeg(
                blob, colorspace="RGB", fastdct=False, fastupsample=False, buffer=out, strict=False
            )
            return True
        reduce = next(
            (r for r in _SCALES if placement.height // r >= oh and placement.width // r >= ow), 1
        )
        image = simplejpeg.decode_jpeg(
            blob,
            colorspace="RGB",
            fastdct=False,  # deeplake's settings: the accurate DCT and fancy upsampling
            fastupsample=False,
            min_height=math.ceil(height / reduce) if reduce > 1 else 0,
            min_width=math.ceil(width / reduce) if reduce > 1 else 0,
            strict=False,
        )
    except ValueError:
        return False
    box = _scaled_box(placement, size, image.shape[:2])
    resize_image(image, box, out, hflip=placement.hflip, vflip=placement.vflip)
    return True


def _as_rgb(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """An image array as ``(H, W, 3)``: grayscale repeated, a fourth channel dropped."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[..., :3]


class _Job:
    """One fetch's placing: :meth:`run` on disjoint parts of its rows, in decode threads at once.

    Outputs of a fixed size are allocated before any part runs (the batch slot
    when there is one), so each part writes only its own rows; state is kept per
    row, so parts never share a value.
    """

    def __init__(self, settings: DecodeSettings, values: Mapping[str, Any], rows: Sequence[int]):
        self.settings = settings
        self.values = dict(values)
        self.rows = list(rows)
        self.outputs: dict[str, Any] = {}
        self.placements: list[Placement | None] = [None] * len(rows)
        self.sizes: list[tuple[int, int] | None] = [None] * len(rows)
        self.done: list[set[str]] = [set() for _ in rows]
        self.redone: dict[tuple[str, int], Any] = {}
        self.in_slab: set[str] = set()  # columns written into the batch tensors themselves
        self.fixed = True  # every row of a placed column has one output shape
        self.dropped = 0

    def allocate(
        self,
        destination: Callable[[str, tuple[int, ...], np.dtype[Any]], list[NDArray[Any]] | None],
    ) -> None:
        """Every placed column's output, before any row is placed.

        A fixed output size: the rows' slots in their batch tensors (ordered batch
        mode), else one array for the fetch. Otherwise one array per row, made as
        each is placed.
        """
        s = self.settings
        assert s.geometry is not None
        size, n = s.geometry.output_size, len(self.rows)
        self.fixed = size is not None
        for column, role in s.roles.items():
            if size is None or not n:
                self.outputs[column] = [None] * n
                continue
            if role == "image":
                row_shape, dtype = (*size, 3), np.dtype(np.uint8)
            else:  # a mask keeps its dtype and channels: its first row says which
                first = np.asarray(self.values[column][0])
                row_shape, dtype = (*size, *(first.shape[2:] or (1,))), first.dtype
            slots = destination(column, row_shape, dtype)
            if slots is None:
                self.outputs[column] = np.empty((n, *row_shape), dtype)
            else:
                self.outputs[column] = slots
                self.in_slab.add(column)

    def _size(self, column: str, i: int) -> tuple[int, int] | None:
        """Row ``i``'s image size in ``column``; None if unknown (the row must be redone)."""
        value = self.values[column]
        if isinstance(value, Encoded) and (column, i) not in self.redone:
            return _jpeg_size(value.blobs[i])
        shape = np.shape(self.redone[column, i] if (column, i) in self.redone else value[i])
        return (int(shape[0]), int(shape[1])) if len(shape) >= 2 else None

    def _output(
        self, column: str, i: int, row_shape: tuple[int, ...], dtype: np.dtype[Any]
    ) -> NDArray[Any]:
        """Row ``i``'s output of ``column``.

        Raises:
            TypeError: the row comes out with another dtype or channels than its column.
        """
        out = self.outputs[column]
        if not self.fixed:
            out[i] = np.empty(row_shape, dtype)
            return out[i]  # type: ignore[no-any-return]
        slot: NDArray[Any] = out[i]
        if slot.shape != row_shape or slot.dtype != dtype:
            raise TypeError(
                f"geometry: column {column!r} row {self.rows[i]} comes out {dtype} {row_shape}, "
                f"the column {slot.dtype} {slot.shape}: a column's rows must have one dtype "
                "and number of channels"
            )
        return slot

    def run(self, part: Sequence[int]) -> dict[str, list[int]]:
        """Place the rows ``part`` (indices into the fetch); return those to redo, by column."""
        s = self.settings
        assert s.geometry is not None
        assert s.reference is not None
        redo: dict[str, list[int]] = {}
        sized = []
        for i in part:
            if self.placements[i] is not None:
                continue
            size = self._size(s.reference, i)
            if size is None:
                redo.setdefault(s.reference, []).append(i)
            else:
                self.sizes[i] = size
                sized.append(i)
        if sized:
            placements = s.geometry.place(
                s.seed,
                s.epoch,
                np.array([self.rows[i] for i in sized], dtype=np.int64),
                np.array([self.sizes[i] for i in sized], dtype=np.int64),
            )
            for i, placed in zip(sized, placements, strict=True):
                self.placements[i] = placed
        for i in part:
            placement = self.placements[i]
            if placement is None:
                continue
            for column, role in s.roles.items():
                if column in self.done[i]:
                    continue
                if self._place(column, role, i, placement):
                    self.done[i].add(column)
                else:
                    redo.setdefault(column, []).append(i)
        return redo

    def _place(self, column: str, role: str, i: int, placement: Placement) -> bool:
        reference = self.sizes[i]
        assert reference is not None
        size = self._size(column, i)
        if size is None:
            return False
        here = placement.scaled(reference, size)
        value = self.redone.get((column, i), self.values[column])
        if role == "image":
            out = self._output(column, i, (*placement.size, 3), np.dtype(np.uint8))
            if isinstance(value, Encoded) and (column, i) not in self.redone:
                return _decode_jpeg(value.blobs[i], here, size, out)
            image = value if (column, i) in self.redone else value[i]
            image = _as_rgb(np.asarray(image))
            if image.dtype != np.uint8:
                raise TypeError(f"geometry: image column {column!r} holds {image.dtype}, not uint8")
            resize_image(image, here.box, out, hflip=here.hflip, vflip=here.vflip)
            return True
        mask = np.asarray(value if (column, i) in self.redone else value[i])
        if mask.ndim == 2:
            mask = mask[..., None]
        out = self._output(column, i, (*placement.size, *mask.shape[2:]), mask.dtype)
        resize_nearest(mask, here.box, out, hflip=here.hflip, vflip=here.vflip)
        return True

    def finished(self) -> dict[str, Any]:
        """The fetch's values with every placed column, its boxes moved, its placements."""
        s = self.settings
        values = {**self.values, **self.outputs}
        placements = [p for p in self.placements if p is not None]
        dropped = 0
        for boxes in s.boxes:
            moved, kept_all = [], []
            for i, placement in enumerate(placements):
                moved_i, keep = boxes.place(np.asarray(values[boxes.column][i]), placement)
                moved.append(moved_i)
                kept_all.append(keep)
                dropped += int((~keep).sum())
            values[boxes.column] = moved
            for name in boxes.aligned:
                values[name] = [
                    np.asarray(values[name][i])[keep] for i, keep in enumerate(kept_all)
                ]
        if s.return_geometry:
            sizes = [size for size in self.sizes if size is not None]
            values["geometry"] = (
                np.stack([p.as_array(size) for p, size in zip(placements, sizes, strict=True)])
                if placements
                else np.empty((0, 8), np.int64)
            )
        self.dropped = dropped
        return values


def parts(rows: int, threads: int, least: int = _LEAST_ROWS) -> list[range]:
    """``range(rows)`` cut into at most ``threads`` parts of at least ``least`` rows each.

    A fetch of many rows is placed by every decode thread at once, so large
    requests (cheap per row for the store) do not make one thread do all the work
    while the other waits; a part's rows are contiguous.
    """
    count = max(1, min(threads, rows // least))
    bounds = [rows * k // count for k in range(count + 1)]
    return [range(a, b) for a, b in itertools.pairwise(bounds) if b > a]


async def place(
    values: Mapping[str, Any],
    rows: Sequence[int],
    decoding: EpochDecoding,
    *,
    first: int | None,
) -> tuple[dict[str, Any], int]:
    """Place every row of one fetch (see the module): the new values and boxes dropped.

    Raises:
        TypeError: an image column that is not uint8, or rows of one column
            that come out with different channels.
        ValueError: a row that is not an image even after the source decoded it.
        Exception: whatever the source's own decode of a row raises.
    """
    slabs: BatchSlabs | None = decoding.slabs

    def destination(
        column: str, row_shape: tuple[int, ...], dtype: np.dtype[Any]
    ) -> list[NDArray[Any]] | None:
        if slabs is None or first is None:
            return None
        return slabs.rows(column, first, len(rows), row_shape, dtype)

    job = _Job(decoding.settings, values, rows)
    job.allocate(destination)
    pending = await _run_parts(job, parts(len(rows), decoding.threads), decoding)
    while pending:
        for column, indices in pending.items():
            for i in indices:
                value = values[column]
                if not isinstance(value, Encoded) or (column, i) in job.redone:
                    shown = job.redone.get(
                        (column, i), value if isinstance(value, Encoded) else value[i]
                    )
                    raise ValueError(
                        f"geometry: row {rows[i]} of column {column!r} is not an image it can "
                        f"place (shape {np.shape(shown)})"
                    )
                job.redone[column, i] = await value.redo(i)
        again = sorted({i for indices in pending.values() for i in indices})
        pending = await _run_parts(job, [again], decoding)
    values_out = job.finished()
    if slabs is not None and first is not None:
        for column in job.in_slab:
            slabs.filled(column, first, len(rows))
    return values_out, job.dropped


async def _run_parts(
    job: _Job, cuts: Sequence[Sequence[int]], decoding: EpochDecoding
) -> dict[str, list[int]]:
    """Run the job on each part at once in the decode pool; merge the rows to redo."""
    redo: dict[str, list[int]] = {}
    for found in await decoding.run_parts(job.run, cuts):
        for column, indices in found.items():
            redo.setdefault(column, []).extend(indices)
    return redo
