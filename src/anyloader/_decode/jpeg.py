"""Decode deeplake's stored image bytes ourselves, with deeplake's pixels.

deeplake decodes JPEG Image columns in its C++ core; the same bytes
(``Column.get_bytes(rows)``) decoded by libjpeg-turbo through simplejpeg cost a
third to a fifth of the CPU and give the same pixels. This module is that decoding
layer: a :class:`Decoder` protocol (so a GPU decoder can plug in later), the CPU
JPEG decoder, :func:`decode_column_bytes` for one column of one fetch, and the
helpers an engine needs to use them (:func:`jpeg_columns`, :func:`dct_reduction`,
:func:`default_decode_threads`). Nothing here owns threads: every function is
stateless, thread-safe and decodes with the GIL released, so the engine can run it
in its own epoch-owned pool.

Guarantee (``mode="exact"``): every array returned equals deeplake's own decode of
the same bytes bit for bit: uint8, shape ``(H, W, C)``, grayscale as ``(H, W, 1)``.
Bytes for which that cannot be promised are not guessed at: they are reported per
row as a :class:`Fallback`, and the caller asks deeplake for those rows only.

Why simplejpeg. ``python -m benchmarks.decode`` on this 2-core machine, CPU ms per
512x512 image, medians of 7 passes (synthetic benchmark images / crops of a photo):
deeplake ``get_async`` 2.2 / 2.4 (``column[i]`` 1.7 / 1.9); simplejpeg 0.81 / 1.03
into fresh arrays, 0.46 / 0.68 into a preallocated batch (the fresh 768 KiB arrays
cost their page faults); imagecodecs 0.85 / 1.08, 0.50 / 0.74 with ``out=``; Pillow
1.0 / 1.6. All four give deeplake's pixels. simplejpeg and imagecodecs both release
the GIL (1.8x the rows/s in 2 threads; Pillow 1.4x). simplejpeg wins on the rest:
its ``strict`` mode raises on truncated or corrupt data, where imagecodecs returns
an image that differs from deeplake's; it offers libjpeg's DCT scaling (1/2, 1/4,
1/8: 0.39, 0.24, 0.19 ms on the synthetic set); its wheel is 0.4 MB against
imagecodecs' 80 MB installed of codecs we would not use.

Pixel identity. deeplake's output equals libjpeg-turbo's with the accurate integer
DCT and "fancy" (triangular) chroma upsampling, simplejpeg's and Pillow's defaults:
identical for baseline and progressive JPEGs, every chroma subsampling (4:4:4,
4:2:2, 4:2:0, 4:4:0, 4:1:1), odd sizes down to 1x1, grayscale, RGB-coded (Adobe)
JPEGs and EXIF orientation tags (neither side rotates). ``fastdct`` and
``fastupsample`` change pixels (by up to 101 levels) and stay off. Not reproduced,
so reported for fallback: CMYK/YCCK JPEGs (deeplake returns 4 channels of its own
making), 12-bit JPEGs (deeplake returns zeros, simplejpeg refuses them), truncated
or corrupt data (deeplake returns zeros, simplejpeg's strict mode raises), bytes
that are not a JPEG (deeplake returns None) and unknown chroma subsampling.

PNG stays with deeplake: 4.9 / 5.3 ms per 512x512 image against Pillow's 5.3 / 6.5
(identical pixels), so there is nothing to win.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol, cast, runtime_checkable

import numpy as np
import numpy.typing as npt
import simplejpeg

from .._core.checks import choice

__all__ = [
    "DECODE_MODES",
    "REDUCTIONS",
    "DecodeMode",
    "DecodedColumn",
    "Decoder",
    "Fallback",
    "ImageInfo",
    "Reduction",
    "SimpleJpegDecoder",
    "UnsupportedImage",
    "check_decode_mode",
    "check_size",
    "dct_reduction",
    "decode_column_bytes",
    "decode_reduced_leniently",
    "default_decode_threads",
    "jpeg_columns",
    "jpeg_decoder",
    "reduced_shape",
    "usable_cpus",
]

DecodeMode = Literal["exact", "reduced"]
DECODE_MODES: tuple[DecodeMode, ...] = ("exact", "reduced")

Reduction = Literal[1, 2, 4, 8]
# libjpeg can also scale by M/8 for other M, but only these are pure DCT truncations
# (cheaper than a full decode); anything else is better done by a resize.
REDUCTIONS: tuple[Reduction, ...] = (1, 2, 4, 8)

# deeplake 4.7 stores sample_compression="jpg" and "jpeg" both as "jpeg"; accept both.
_JPEG_COMPRESSIONS = frozenset({"jpeg", "jpg"})
# JPEG colour spaces whose decode we can reproduce: gray stays one channel, the rest
# become RGB exactly as deeplake's decoder makes them.
_CHANNELS = {"Gray": 1, "YCbCr": 3, "RGB": 3}

Array = npt.NDArray[np.uint8]


class UnsupportedImage(ValueError):
    """These bytes cannot be decoded to deeplake's exact output here: ask deeplake.

    Raised by a :class:`Decoder` for CMYK, 12-bit, corrupt or non-JPEG data; never
    for a programming error (those stay ``TypeError``/``ValueError``).
    """


class ImageInfo(NamedTuple):
    """What a decoder learns from an image's header, before decoding it."""

    height: int
    width: int
    channels: int


@runtime_checkable
class Decoder(Protocol):
    """Turns one encoded image into the array deeplake's decoder would return.

    Implementations must be thread-safe and should release the GIL while they work.
    A GPU decoder (nvJPEG through nvidia-nvimgcodec, ``torchvision.io.decode_jpeg``
    on CUDA) implements the same two methods.
    """

    def info(self, data: bytes) -> ImageInfo:
        """Return the full-size shape of the image in ``data`` from its header.

        Raises:
            UnsupportedImage: if ``data`` is not an image this decoder reproduces exactly.
        """
        ...

    def decode(self, data: bytes, *, reduce: Reduction = 1, out: Array | None = None) -> Array:
        """Decode ``data`` to a uint8 ``(H, W, C)`` array, into ``out`` if given.

        ``reduce`` > 1 decodes at ``ceil(H / reduce) x ceil(W / reduce)`` (pixels then
        differ from deeplake's full-size decode). With ``out``, the result is ``out``.

        Raises:
            UnsupportedImage: if ``data`` is not an image this decoder reproduces exactly;
                ``out`` is then left in an unspecified state.
            TypeError, ValueError: if ``out`` or ``reduce`` are unusable.
        """
        ...


def _check_data(data: object) -> bytes:
    if not isinstance(data, bytes):
        raise TypeError(f"encoded image must be bytes, got {type(data).__name__}")
    return data


def _check_reduce(reduce: object) -> Reduction:
    if isinstance(reduce, bool) or not isinstance(reduce, int):
        raise TypeError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    return reduce


def _check_out(out: object, shape: tuple[int, int, int]) -> Array:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != np.uint8:
        raise TypeError(f"out must have dtype uint8, got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, the image decodes to {shape}")
    # libjpeg writes whole rows with a fixed pitch; a strided view would be corrupted.
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("out must be C-contiguous and writable")
    return out


class SimpleJpegDecoder:
    """libjpeg-turbo through simplejpeg, with the settings that reproduce deeplake.

    Accurate integer DCT, fancy upsampling, strict error checking. Stateless: one
    instance may be shared by any number of threads; simplejpeg makes a libjpeg
    handle per call and releases the GIL for the header parse and the decode.
    """

    name = "simplejpeg"

    def info(self, data: bytes) -> ImageInfo:
        """Return the full-size ``(height, width, channels)`` from the JPEG header.

        Raises:
            UnsupportedImage: if ``data`` is not a JPEG libjpeg-turbo can parse, is
                CMYK/YCCK, or has a chroma subsampling libjpeg-turbo cannot name.
            TypeError: if ``data`` is not ``bytes``.
        """
        data = _check_data(data)
        try:
            height, width, colorspace, subsampling = simplejpeg.decode_jpeg_header(
                data, strict=True
            )
        except ValueError as exc:
            raise UnsupportedImage(f"not a JPEG libjpeg-turbo can read: {exc}") from exc
        channels = _CHANNELS.get(colorspace)
        if channels is None:
            # deeplake returns CMYK/YCCK as 4 channels that are neither raw CMYK nor
            # its inverse; we cannot reproduce them, so deeplake decodes these rows.
            raise UnsupportedImage(f"{colorspace} JPEG: only deeplake reproduces its decode")
        if subsampling == "unknown":
            # simplejpeg 1.9 already refuses these in the header parse; should a later
            # version let them through, they were never compared with deeplake's decode.
            raise UnsupportedImage("JPEG with an unusual chroma subsampling")
        return ImageInfo(int(height), int(width), channels)

    def decode(
        self, data: bytes, *, reduce: Reduction = 1, out: Array | None = None, strict: bool = True
    ) -> Array:
        """Decode a JPEG to uint8 ``(H, W, C)``: RGB, or ``(H, W, 1)`` for grayscale.

        With ``reduce=1`` the pixels equal deeplake's decode of ``data``. ``reduce`` in
        2, 4, 8 uses libjpeg's DCT scaling: ``ceil(H / reduce) x ceil(W / reduce)``,
        cheaper, different pixels. With ``out`` (uint8, C-contiguous, exactly the
        output shape) the image is written into it and ``out`` is returned.
        ``strict=False`` decodes what libjpeg only warns about (corrupt segments,
        premature end of data) as libjpeg reads it: never equal to deeplake.

        Raises:
            UnsupportedImage: for CMYK, 12-bit, truncated, corrupt or non-JPEG data.
            TypeError: if ``data`` is not bytes or ``out`` not a uint8 array.
            ValueError: if ``reduce`` is not 1, 2, 4 or 8, or ``out`` has the wrong
                shape or layout.
        """
        reduce = _check_reduce(reduce)
        height, width, channels = self.info(data)
        if reduce > 1:
            height, width = math.ceil(height / reduce), math.ceil(width / reduce)
        shape = (height, width, channels)
        if out is not None:
            out = _check_out(out, shape)
        try:
            image = simplejpeg.decode_jpeg(
                data,
                colorspace="GRAY" if channels == 1 else "RGB",
                # Both change pixels (measured: up to 85 levels at 4:2:0); deeplake
                # uses the accurate DCT and fancy upsampling.
                fastdct=False,
                fastupsample=False,
                # 0 means "full size"; otherwise libjpeg picks the smallest DCT scale
                # giving at least this size, which is 1/reduce for these sizes.
                min_height=height if reduce > 1 else 0,
                min_width=width if reduce > 1 else 0,
                buffer=out,
                # Turns libjpeg's warnings (premature end of data, corrupt segments)
                # into errors: deeplake's output for such data is its own business.
                strict=strict,
            )
        except ValueError as exc:
            raise UnsupportedImage(f"libjpeg-turbo cannot decode it exactly: {exc}") from exc
        if image.shape != shape:
            raise UnsupportedImage(f"decoded to {image.shape}, header promised {shape}")
        return out if out is not None else image


class Fallback(NamedTuple):
    """A row :func:`decode_column_bytes` left for deeplake, and why."""

    row: int
    reason: str


@dataclass(frozen=True)
class DecodedColumn:
    """One column of one fetch, decoded.

    ``arrays[i]`` is row ``i``'s image, or ``None`` exactly when ``i`` is the
    ``row`` of an entry of ``fallback``; ``fallback`` is in row order.
    """

    arrays: list[Array | None]
    fallback: tuple[Fallback, ...]

    @property
    def fallback_rows(self) -> tuple[int, ...]:
        """Positions (in the input list) that must be decoded by deeplake."""
        return tuple(f.row for f in self.fallback)


def check_decode_mode(mode: object) -> DecodeMode:
    """Return ``mode`` if it is one of :data:`DECODE_MODES`.

    Raises:
        TypeError: if ``mode`` is not a string.
        ValueError: naming the bad value and the valid choices.
    """
    return cast("DecodeMode", choice("mode", mode, DECODE_MODES))


def check_size(size: object, name: str = "target_size") -> tuple[int, int]:
    """Return ``size`` as ``(height, width)`` of positive ints.

    Raises:
        TypeError: if ``size`` is not a pair of ints.
        ValueError: if either side is < 1.
    """
    if not isinstance(size, tuple | list) or len(size) != 2:
        raise TypeError(f"{name} must be a (height, width) pair of ints, got {size!r}")
    for side in size:
        if isinstance(side, bool) or not isinstance(side, int | np.integer):
            raise TypeError(f"{name} must be a (height, width) pair of ints, got {size!r}")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"{name} sides must be >= 1, got {size!r}")
    return height, width


def dct_reduction(height: int, width: int, target_size: tuple[int, int]) -> Reduction:
    """Return the largest reduction whose output still covers ``target_size``.

    That is the smallest DCT scale (1, 1/2, 1/4, 1/8) with
    ``ceil(height / r) >= target_height`` and ``ceil(width / r) >= target_width``;
    1 when even the full image is smaller than the target (never upscales).

    Raises:
        TypeError, ValueError: if a size is not a positive int (pair).
    """
    full = check_size((height, width), "image size")
    target = check_size(target_size)
    for reduce in reversed(REDUCTIONS):
        if all(math.ceil(side / reduce) >= want for side, want in zip(full, target, strict=True)):
            return reduce
    return 1


_DEFAULT_DECODER = SimpleJpegDecoder()


def jpeg_decoder() -> Decoder:
    """The CPU JPEG decoder :func:`decode_column_bytes` uses by default."""
    return _DEFAULT_DECODER


def decode_column_bytes(
    blobs: Sequence[bytes],
    *,
    mode: DecodeMode = "exact",
    target_size: tuple[int, int] | None = None,
    decoder: Decoder | None = None,
    out: Array | None = None,
) -> DecodedColumn:
    """Decode one column's encoded rows (``Column.get_bytes(rows)``); report the rest.

    ``mode="exact"``: each decoded array equals deeplake's decode of the same bytes.
    ``mode="reduced"``: each image is decoded at the smallest DCT scale whose size
    still covers ``target_size`` (see :func:`dct_reduction`); opt-in, because the
    pixels then differ from any full-size decode.

    Rows the decoder cannot reproduce (CMYK, 12-bit, corrupt, not a JPEG) come back
    as ``None`` and are listed in ``fallback``: decode those rows with deeplake,
    which gives its own value or raises its own error; the other rows stay valid.
    With ``out`` (uint8, C-contiguous, ``(len(blobs), H, W, C)``, e.g. the batch
    tensor's numpy view), row ``i`` is decoded straight into ``out[i]`` and
    ``arrays[i]`` is that view; fallback rows of ``out`` are left for the caller.

    Thread-safe and GIL-free while decoding; may run concurrently on different
    columns or different ``out`` arrays.

    Raises:
        TypeError: if ``blobs`` holds a non-bytes value, or an argument has the
            wrong type.
        ValueError: for an unknown ``mode``, ``target_size`` missing in reduced mode
            or given in exact mode, a non-positive size, or an ``out`` whose shape
            does not fit (including a row that decodes to a different shape).
    """
    mode = check_decode_mode(mode)
    if mode == "reduced":
        if target_size is None:
            raise ValueError("mode='reduced' needs target_size=(height, width)")
        target = check_size(target_size)
    elif target_size is not None:
        raise ValueError(
            f"target_size={target_size!r} is only used with mode='reduced' (mode is 'exact')"
        )
    if decoder is None:
        decoder = _DEFAULT_DECODER
    elif not isinstance(decoder, Decoder):
        raise TypeError(f"decoder must implement Decoder, got {type(decoder).__name__}")
    if isinstance(blobs, bytes | str) or not isinstance(blobs, Sequence):
        raise TypeError(f"blobs must be a sequence of bytes, got {type(blobs).__name__}")
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
        if out.ndim != 4 or out.shape[0] != len(blobs):
            raise ValueError(
                f"out must have shape ({len(blobs)}, H, W, C) for {len(blobs)} rows, "
                f"got {out.shape}"
            )

    arrays: list[Array | None] = []
    fallback: list[Fallback] = []
    for index, data in enumerate(blobs):
        _check_data(data)
        try:
            reduce: Reduction = 1
            if mode == "reduced":
                height, width, _ = decoder.info(data)
                reduce = dct_reduction(height, width, target)
            arrays.append(
                decoder.decode(data, reduce=reduce, out=None if out is None else out[index])
            )
        except UnsupportedImage as exc:
            arrays.append(None)
            fallback.append(Fallback(index, str(exc)))
    return DecodedColumn(arrays, tuple(fallback))


def decode_reduced_leniently(data: bytes, target_size: tuple[int, int]) -> Array | None:
    """Decode ``data`` at the reduction :func:`decode_column_bytes` uses for ``target_size``,
    accepting what libjpeg only warns about; None if even that fails.

    Reduced pixels differ from deeplake's anyway, so data that strict mode refuses
    for a warning ("Corrupt JPEG data: 1 extraneous bytes before marker 0xd9",
    common in scraped datasets) is decoded as libjpeg reads it, at the same size
    as every other row. CMYK, 12-bit or unreadable data gives None.
    """
    try:
        height, width, _ = _DEFAULT_DECODER.info(data)
        reduce = dct_reduction(height, width, target_size)
        return _DEFAULT_DECODER.decode(data, reduce=reduce, strict=False)
    except UnsupportedImage:
        return None


def reduced_shape(height: int, width: int, target_size: tuple[int, int]) -> tuple[int, int]:
    """The size a ``height x width`` image has after the reduction for ``target_size``."""
    reduce = dct_reduction(height, width, target_size)
    return math.ceil(height / reduce), math.ceil(width / reduce)


def jpeg_columns(dataset: Any) -> tuple[str, ...]:
    """Names of ``dataset``'s columns whose stored bytes :func:`decode_column_bytes` takes.

    Those are plain uint8 Image columns with ``sample_compression`` "jpeg"/"jpg".
    Links (their bytes are a URL), sequences, nullable columns, masks and PNG images
    are left out: deeplake decodes them.

    Raises:
        TypeError: if ``dataset`` has no deeplake schema.
    """
    import deeplake

    schema = getattr(dataset, "schema", None)
    columns = getattr(schema, "columns", None)
    if columns is None:
        raise TypeError(
            f"jpeg_columns takes a deeplake dataset or view, got {type(dataset).__name__}"
        )
    names = []
    for column in columns:
        dtype = column.dtype
        # kind is Image only for a bare Image: Link/Nullable/Sequence wrappers change
        # it, although is_image and sample_compression see through them.
        if (
            dtype.kind == deeplake.types.TypeKind.Image
            and dtype.sample_compression in _JPEG_COMPRESSIONS
            and dtype.id == "uint8"
        ):
            names.append(str(column.name))
    return tuple(names)


def usable_cpus() -> int:
    """CPUs this process may run on (``sched_getaffinity``; every CPU where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux: no affinity, count every CPU
        return os.cpu_count() or 1


def default_decode_threads() -> int:
    """Decode threads for this process: its usable CPUs shared among DataLoader workers.

    ``len(os.sched_getaffinity(0))`` (the CPUs this process may run on, which is what
    containers and ``taskset`` restrict) divided by ``num_workers`` when called in a
    DataLoader worker (each worker is a process with its own pool), at least 1.
    """
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    workers = info.num_workers if info is not None else 1
    return max(1, usable_cpus() // max(1, workers))
