"""Geometry at decode: a random-resized crop or a resize, and flips, for a row's images and masks.

A geometry is a spec (:class:`RandomResizedCrop`, :class:`Resize`) and, per
row, a :class:`Placement`: which box of the source image becomes the output,
at which size, flipped or not. Placements are a pure function of ``(seed,
epoch, row)`` and the image's size, so a resumed or elastic run, either
backend, any number of workers, gives every row the same crop.

Sampling (:meth:`RandomResizedCrop.place`) is torchvision's
``RandomResizedCrop.get_params``, drawing from this module's own stream
instead of torch's global generator: for an ``H x W`` image, up to 10
attempts each draw a target area ``H * W * uniform(*scale)`` and an aspect
ratio ``exp(uniform(log(ratio[0]), log(ratio[1])))``, and set ``w =
round(sqrt(area * aspect))``, ``h = round(sqrt(area / aspect))`` (round half
to even); the first attempt with ``0 < w <= W`` and ``0 < h <= H`` wins, and
its top-left corner is ``floor(u * (H - h + 1))``, ``floor(u * (W - w + 1))``.
If no attempt fits, the crop is the centre of the image, as wide or as tall
as ``ratio`` allows (rounded, at least one pixel). Flips are drawn last:
horizontal if ``u < hflip``, vertical if ``u < vflip``.

The stream: draw ``k`` of row ``r`` is ``u(r, k) = (m(m(r * φ + k * ψ +
key)) >> 11) / 2**53``, where ``m`` is the splitmix64 finaliser, ``φ =
0x9E3779B97F4A7C15``, ``ψ = 0xD1B54A32D192ED03``, arithmetic modulo 2**64, and
``key = mix64(seed, epoch, 0x6E0)``. Draws ``2a`` and ``2a + 1`` are attempt
``a``'s area and aspect, 20 and 21 the corner, 22 and 23 the flips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .order import _mix_array, mix64

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "BOX_FORMATS",
    "Boxes",
    "Geometry",
    "Placement",
    "RandomResizedCrop",
    "Resize",
    "check_boxes",
    "check_geometry",
    "uniforms",
]

_PHI = np.uint64(0x9E3779B97F4A7C15)
_PSI = np.uint64(0xD1B54A32D192ED03)
_SALT = 0x6E0  # keeps the geometry's stream apart from the shuffle's
_ATTEMPTS = 10
_TOP, _LEFT, _HFLIP, _VFLIP = 20, 21, 22, 23
_DRAWS = 24


def uniforms(
    seed: int, epoch: int, rows: NDArray[np.int64], draws: int = _DRAWS
) -> NDArray[np.float64]:
    """Draws ``u(row, k)`` for ``k < draws`` (see the module): ``(len(rows), draws)`` in [0, 1)."""
    key = np.uint64(mix64(seed, epoch, _SALT))
    r = np.asarray(rows, dtype=np.int64).astype(np.uint64)[:, None]
    k = np.arange(draws, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        z = _mix_array(_mix_array(r * _PHI + k * _PSI + key))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


class Placement(NamedTuple):
    """Where one row's output comes from: ``box`` of the source, resized to ``size``, flipped."""

    top: int
    left: int
    height: int
    width: int
    size: tuple[int, int]
    hflip: bool
    vflip: bool

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` in source pixels."""
        return self.top, self.left, self.height, self.width

    def scaled(self, source: tuple[int, int], other: tuple[int, int]) -> Placement:
        """This placement for an image of size ``other`` covering the same scene as ``source``.

        A mask stored at another resolution than its image gets the same part
        of the scene.
        """
        if other == source:
            return self
        sy, sx = other[0] / source[0], other[1] / source[1]
        top, left = min(other[0] - 1, int(self.top * sy)), min(other[1] - 1, int(self.left * sx))
        height = max(1, min(other[0] - top, round(self.height * sy)))
        width = max(1, min(other[1] - left, round(self.width * sx)))
        return self._replace(top=top, left=left, height=height, width=width)

    def as_array(self, source: tuple[int, int]) -> NDArray[np.int64]:
        """``[top, left, height, width, source_height, source_width, hflip, vflip]``."""
        return np.array([*self.box, *source, int(self.hflip), int(self.vflip)], dtype=np.int64)


def _pair(name: str, value: object, kind: type) -> tuple[float, float] | tuple[int, int]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and kind is int:
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair, got {value!r}")
    for v in value:
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or (kind is int and not isinstance(v, int))
        ):
            raise TypeError(f"{name} must be a pair of {kind.__name__}s, got {value!r}")
    return (kind(value[0]), kind(value[1]))


def _size(name: str, value: object) -> tuple[int, int]:
    size = _pair(name, value, int)
    if min(size) < 1:
        raise ValueError(f"{name} sides must be >= 1, got {value!r}")
    return (int(size[0]), int(size[1]))


def _probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a probability in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def _names(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a sequence of column names, got {value!r}")
    if not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must hold column names (str), got {value!r}")
    return tuple(value)


@dataclass(frozen=True, kw_only=True)
class _Flips:
    hflip: float = 0.0
    vflip: float = 0.0
    #: Columns resampled by nearest neighbour besides BinaryMask and SegmentMask ones
    #: (class-label images stored as images, say).
    masks: tuple[str, ...] = ()

    def _check_flips(self) -> None:
        object.__setattr__(self, "hflip", _probability("hflip", self.hflip))
        object.__setattr__(self, "vflip", _probability("vflip", self.vflip))
        object.__setattr__(self, "masks", _names("masks", self.masks))

    def _flipped(self, u: NDArray[np.float64]) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        return u[:, _HFLIP] < self.hflip, u[:, _VFLIP] < self.vflip


@dataclass(frozen=True)
class RandomResizedCrop(_Flips):
    """A random crop of random area and aspect ratio, resized to ``size``, and random flips.

    ``RandomResizedCrop(size=(h, w), scale=(lo, hi), ratio=(a, b), hflip=p,
    vflip=q)``: the defaults are torchvision's (``scale=(0.08, 1.0)``,
    ``ratio=(3/4, 4/3)``, no flips). Sampling is described in the module.

    Raises:
        TypeError, ValueError: at construction, naming the bad field.
    """

    size: tuple[int, int]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        self._check_flips()
        object.__setattr__(self, "size", _size("size", self.size))
        scale = _pair("scale", self.scale, float)
        ratio = _pair("ratio", self.ratio, float)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1, got {self.scale!r}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {self.ratio!r}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "ratio", ratio)

    @property
    def output_size(self) -> tuple[int, int] | None:
        return self.size

    def place(
        self, seed: int, epoch: int, rows: NDArray[np.int64], sizes: NDArray[np.int64]
    ) -> list[Placement]:
        """Each row's placement, for images of ``sizes`` (``(n, 2)``: height, width)."""
        u = uniforms(seed, epoch, rows)
        heights, widths = sizes[:, 0].astype(np.float64), sizes[:, 1].astype(np.float64)
        area = (heights * widths)[:, None]
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        target = area * (
            self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0 : 2 * _ATTEMPTS : 2]
        )
        aspect = np.exp(lo + (hi - lo) * u[:, 1 : 2 * _ATTEMPTS : 2])
        w = np.rint(np.sqrt(target * aspect))
        h = np.rint(np.sqrt(target / aspect))
        fits = (w > 0) & (w <= widths[:, None]) & (h > 0) & (h <= heights[:, None])
        first = np.argmax(fits, axis=1)
        hflip, vflip = self._flipped(u)
        out = []
        for i, (height, width) in enumerate(sizes.tolist()):
            if fits[i, first[i]]:
                ch, cw = int(h[i, first[i]]), int(w[i, first[i]])
                top = int(u[i, _TOP] * (height - ch + 1))
                left = int(u[i, _LEFT] * (width - cw + 1))
            else:
                ch, cw = self._central(height, width)
                top, left = (height - ch) // 2, (width - cw) // 2
            out.append(Placement(top, left, ch, cw, self.size, bool(hflip[i]), bool(vflip[i])))
        return out

    def _central(self, height: int, width: int) -> tuple[int, int]:
        """The fallback: the whole image, trimmed to the nearest allowed aspect ratio."""
        ratio = width / height
        if ratio < self.ratio[0]:
            return max(1, round(width / self.ratio[0])), width
        if ratio > self.ratio[1]:
            return height, max(1, round(height * self.ratio[1]))
        return height, width


@dataclass(frozen=True)
class Resize(_Flips):
    """Resize to ``size`` exactly (``(h, w)``), or the shorter side to ``size`` (an int).

    With ``crop`` (``(h, w)`` or an int), the centre ``crop`` of the resized
    image is the output (validation's ``Resize(256)`` then ``CenterCrop(224)``
    is ``Resize(256, crop=224)``); the crop must fit: each side at most
    ``size``. The crop is taken in the source's pixels (rounded) and then
    resized, so border pixels can differ from torchvision's resize-then-crop
    by a few levels. With an int ``size`` and no crop the output size follows
    each image's aspect ratio, so the column is a list in batch mode.

    Raises:
        TypeError, ValueError: at construction, naming the bad field.
    """

    size: int | tuple[int, int]
    crop: int | tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self._check_flips()
        if isinstance(self.size, int) and not isinstance(self.size, bool):
            if self.size < 1:
                raise ValueError(f"size must be >= 1, got {self.size}")
        else:
            object.__setattr__(self, "size", _size("size", self.size))
        if self.crop is not None:
            crop = _size("crop", self.crop)
            bound = (self.size, self.size) if isinstance(self.size, int) else self.size
            if crop[0] > bound[0] or crop[1] > bound[1]:
                raise ValueError(f"crop={self.crop!r} must fit in size={self.size!r}")
            object.__setattr__(self, "crop", crop)

    @property
    def output_size(self) -> tuple[int, int] | None:
        if self.crop is not None:
            assert isinstance(self.crop, tuple)
            return self.crop
        return self.size if isinstance(self.size, tuple) else None

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """The size the whole image is resized to (torchvision's rule for an int size)."""
        if isinstance(self.size, tuple):
            return self.size
        short, long = (height, width) if height <= width else (width, height)
        other = int(self.size * long / short)
        return (self.size, other) if height <= width else (other, self.size)

    def place(
        self, seed: int, epoch: int, rows: NDArray[np.int64], sizes: NDArray[np.int64]
    ) -> list[Placement]:
        """Each row's placement, for images of ``sizes`` (``(n, 2)``: height, width)."""
        hflip, vflip = self._flipped(uniforms(seed, epoch, rows))
        out = []
        for i, (height, width) in enumerate(sizes.tolist()):
            rh, rw = self.resized(height, width)
            if self.crop is None:
                top, left, ch, cw, size = 0, 0, height, width, (rh, rw)
            else:
                assert isinstance(self.crop, tuple)
                size = self.crop
                sy, sx = height / rh, width / rw
                ch = max(1, min(height, round(size[0] * sy)))
                cw = max(1, min(width, round(size[1] * sx)))
                top = min(height - ch, round(round((rh - size[0]) / 2) * sy))
                left = min(width - cw, round(round((rw - size[1]) / 2) * sx))
            out.append(Placement(top, left, ch, cw, size, bool(hflip[i]), bool(vflip[i])))
        return out


Geometry = RandomResizedCrop | Resize

BOX_FORMATS = ("xyxy", "xywh")


@dataclass(frozen=True)
class Boxes:
    """A column of boxes (``(N, 4)`` per row, in source pixels) moved with the geometry.

    ``format`` is ``"xyxy"`` (corners) or ``"xywh"`` (top-left corner and
    size). Each box is mapped into the output, flipped with the image, and
    clipped to it; boxes left with no area (outside the crop) are dropped, and
    so are the entries of the ``aligned`` columns (per-box labels, say) at the
    same positions. The epoch's stats count the dropped boxes.

    Raises:
        TypeError, ValueError: at construction, naming the bad field.
    """

    column: str
    format: str = "xyxy"
    aligned: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.column, str):
            raise TypeError(f"column must be a column name (str), got {self.column!r}")
        if self.format not in BOX_FORMATS:
            raise ValueError(f"format must be one of {BOX_FORMATS}, got {self.format!r}")
        object.__setattr__(self, "aligned", _names("aligned", self.aligned))

    def place(
        self, boxes: NDArray[np.floating[Any]], placement: Placement
    ) -> tuple[NDArray[np.floating[Any]], NDArray[np.bool_]]:
        """``boxes`` (``(N, 4)`` in this format) in the output's pixels, and which were kept."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        if self.format == "xywh":
            b[:, 2:] += b[:, :2]
        oh, ow = placement.size
        sy, sx = oh / placement.height, ow / placement.width
        x = (b[:, [0, 2]] - placement.left) * sx
        y = (b[:, [1, 3]] - placement.top) * sy
        if placement.hflip:
            x = ow - x[:, ::-1]
        if placement.vflip:
            y = oh - y[:, ::-1]
        x, y = np.clip(x, 0, ow), np.clip(y, 0, oh)
        keep = (x[:, 1] > x[:, 0]) & (y[:, 1] > y[:, 0])
        out = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)[keep]
        if self.format == "xywh":
            out[:, 2:] -= out[:, :2]
        return out.astype(
            np.asarray(boxes).dtype if np.asarray(boxes).dtype.kind == "f" else np.float32
        ), keep


def check_boxes(name: str, value: object) -> tuple[Boxes, ...]:
    """``value`` (a :class:`Boxes`, several, or None) as a tuple.

    Raises:
        TypeError: anything else, naming what is accepted.
    """
    if value is None:
        return ()
    if isinstance(value, Boxes):
        return (value,)
    if isinstance(value, (tuple, list)) and all(isinstance(v, Boxes) for v in value):
        return tuple(value)
    raise TypeError(
        f"{name} must be anyloader.Boxes(...), a sequence of them, or None, got {value!r}"
    )


def check_geometry(name: str, value: object) -> Geometry | None:
    """Return ``value`` if it is a geometry (or None).

    Raises:
        TypeError: naming the kinds accepted.
    """
    if value is None or isinstance(value, (RandomResizedCrop, Resize)):
        return value
    raise TypeError(
        f"{name} must be anyloader.RandomResizedCrop(...), anyloader.Resize(...) or None, "
        f"got {value!r}"
    )
