"""Our JPEG decode equals deeplake's, bit for bit, on real deeplake datasets on disk.

Each dataset is written to a ``file://`` path and read back through deeplake: its
own decode (``column[i]``) is the reference, ``Column.get_bytes`` feeds ours.
"""

from __future__ import annotations

import io
import math
import os
import types as pytypes
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import deeplake
import numpy as np
import pytest
import simplejpeg
from _budget import examples
from deeplake import types
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from anyloader._decode import jpeg as _decode
from anyloader._decode.jpeg import (
    DECODE_MODES,
    REDUCTIONS,
    Decoder,
    ImageInfo,
    Reduction,
    SimpleJpegDecoder,
    UnsupportedImage,
    dct_reduction,
    decode_column_bytes,
    default_decode_threads,
    jpeg_columns,
)
from anyloader._sources.synthetic import create_image_mask_dataset

# How a test image gets into the column: deeplake encodes an array itself, or stores
# bytes Pillow wrote (the only way to get progressive JPEGs and chroma choices in).
ENCODERS = ("deeplake", "pillow-baseline", "pillow-progressive")


def _image(rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
    """A gradient with grain and a hard-edged block: smooth areas and sharp edges."""
    yy, xx = np.mgrid[0:height, 0:width]
    slope_y, slope_x = rng.uniform(-4, 4, (2, channels))
    ramp = yy[..., None] * slope_y + xx[..., None] * slope_x
    image = rng.uniform(0, 255, channels) + ramp + rng.normal(0, 25, (height, width, channels))
    image[: height // 2, : width // 3] = rng.uniform(0, 255, channels)
    result: np.ndarray = np.clip(image, 0, 255).astype(np.uint8)
    return result


def _pillow_jpeg(array: np.ndarray, *, quality: int, progressive: bool, subsampling: int) -> bytes:
    mode = "L" if array.shape[2] == 1 else "RGB"
    image = Image.fromarray(array[..., 0] if mode == "L" else array, mode)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, progressive=progressive, subsampling=subsampling)
    return buf.getvalue()


def _jpeg_dataset(path: Path, values: list[Any]) -> Any:
    """A committed deeplake dataset at ``path`` whose JPEG column ``img`` holds ``values``."""
    ds = deeplake.create(f"file://{path}")
    ds.add_column("img", types.Image(types.UInt8(), sample_compression="jpeg"))
    for value in values:  # one append each: deeplake refuses arrays mixed with bytes
        ds.append({"img": [value]})
    ds.commit()
    return deeplake.open_read_only(f"file://{path}")


def _assert_identical(ours: np.ndarray | None, theirs: np.ndarray) -> None:
    assert ours is not None
    assert ours.dtype == theirs.dtype == np.uint8
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


image_specs = st.fixed_dictionaries(
    {
        # Odd sizes and sizes below one MCU (8 or 16 px) are where edge handling differs.
        "height": st.integers(1, 130),
        "width": st.integers(1, 130),
        "channels": st.sampled_from([1, 3]),
        "encoder": st.sampled_from(ENCODERS),
        "quality": st.sampled_from([10, 50, 75, 95, 100]),
        "subsampling": st.sampled_from([0, 1, 2]),  # Pillow: 4:4:4, 4:2:2, 4:2:0
    }
)


@settings(
    max_examples=examples(200), deadline=None
)  # deadline=None: disk timing on a shared machine
@given(specs=st.lists(image_specs, min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_exact_decode_equals_deeplake(
    tmp_path_factory: pytest.TempPathFactory, specs: list[dict[str, Any]], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    values: list[Any] = []
    for spec in specs:
        array = _image(rng, spec["height"], spec["width"], spec["channels"])
        if spec["encoder"] == "deeplake":
            values.append(array)
        else:
            values.append(
                _pillow_jpeg(
                    array,
                    quality=spec["quality"],
                    progressive=spec["encoder"] == "pillow-progressive",
                    subsampling=spec["subsampling"],
                )
            )
    ds = _jpeg_dataset(tmp_path_factory.mktemp("prop") / "ds", values)
    column = ds["img"]
    blobs = column.get_bytes(list(range(len(values))))

    decoded = decode_column_bytes(blobs)

    # Every one of these is a plain JPEG: falling back would hide a decode we skipped.
    assert decoded.fallback == ()
    for row, ours in enumerate(decoded.arrays):
        _assert_identical(ours, column[row])


def test_progressive_bytes_reach_the_column_unchanged(tmp_path: Path) -> None:
    # The property test relies on deeplake storing pre-encoded bytes verbatim.
    blob = _pillow_jpeg(
        _image(np.random.default_rng(0), 20, 30, 3), quality=80, progressive=True, subsampling=2
    )
    assert b"\xff\xc2" in blob  # SOF2: a progressive frame
    ds = _jpeg_dataset(tmp_path / "ds", [blob])
    assert ds["img"].get_bytes([0]) == [blob]


def _cmyk_jpeg() -> bytes:
    rgb = Image.fromarray(_image(np.random.default_rng(1), 24, 40, 3))
    buf = io.BytesIO()
    rgb.convert("CMYK").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _twelve_bit_header(blob: bytes) -> bytes:
    """``blob`` with its frame header claiming 12-bit samples."""
    sof = blob.index(b"\xff\xc0")
    return blob[: sof + 4] + bytes([12]) + blob[sof + 5 :]


def test_unsupported_rows_fall_back_and_deeplake_decodes_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    good = simplejpeg.encode_jpeg(_image(rng, 32, 48, 3), quality=85)
    values = [
        good,
        _cmyk_jpeg(),
        good[: len(good) // 2],  # truncated: deeplake returns an image anyway
        _twelve_bit_header(good),
        _image(rng, 16, 16, 3),  # deeplake-encoded, decodable
    ]
    ds = _jpeg_dataset(tmp_path / "ds", values)
    column = ds["img"]

    decoded = decode_column_bytes(column.get_bytes(list(range(len(values)))))

    assert decoded.fallback_rows == (1, 2, 3)
    assert [f.row for f in decoded.fallback] == [1, 2, 3]
    assert "CMYK" in decoded.fallback[0].reason
    assert "Premature end" in decoded.fallback[1].reason
    assert "precision 12" in decoded.fallback[2].reason
    for row in (0, 4):
        _assert_identical(decoded.arrays[row], column[row])
    for row in decoded.fallback_rows:
        assert decoded.arrays[row] is None
        value = column[row]  # deeplake's own decode gives this row's value
        assert value.dtype == np.uint8
        assert value.ndim == 3
    assert column[1].shape == (24, 40, 4)  # CMYK: four channels we do not reproduce


def test_non_jpeg_bytes_fall_back_and_deeplake_gives_none(tmp_path: Path) -> None:
    png = io.BytesIO()
    Image.fromarray(_image(np.random.default_rng(3), 8, 8, 3)).save(png, "PNG")
    values = [b"definitely not an image", png.getvalue()]
    ds = _jpeg_dataset(tmp_path / "ds", values)

    decoded = decode_column_bytes(ds["img"].get_bytes([0, 1]))

    assert decoded.fallback_rows == (0, 1)
    assert decoded.arrays == [None, None]
    # deeplake 4.7's own answer for bytes it cannot decode: None, no error.
    assert ds["img"][0] is None
    assert ds["img"][1] is None


def test_unusual_chroma_sampling_falls_back() -> None:
    blob = simplejpeg.encode_jpeg(np.zeros((16, 16, 3), np.uint8), colorsubsampling="444")
    sof = blob.index(b"\xff\xc0")
    # Frame header: marker, length, precision, height, width, count, then per
    # component (id, sampling HV, table). Y 1x2 with Cb 2x1 matches no known scheme.
    odd = blob[: sof + 11] + b"\x12" + blob[sof + 12 : sof + 14] + b"\x21" + blob[sof + 15 :]
    decoded = decode_column_bytes([odd])
    assert decoded.fallback_rows == (0,)


def test_empty_bytes_fall_back() -> None:
    decoded = decode_column_bytes([b""])
    assert decoded.fallback_rows == (0,)


def test_decode_into_preallocated_batch_writes_each_row_in_place(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    values = [_image(rng, 24, 40, 3) for _ in range(3)] + [_cmyk_jpeg()]
    ds = _jpeg_dataset(tmp_path / "ds", values)
    column = ds["img"]
    blobs = column.get_bytes([0, 1, 2, 3])
    out = np.full((4, 24, 40, 3), 7, np.uint8)

    decoded = decode_column_bytes(blobs, out=out)

    assert decoded.fallback_rows == (3,)
    for row in range(3):
        array = decoded.arrays[row]
        assert array is not None
        assert np.shares_memory(array, out[row])
        _assert_identical(out[row], column[row])
    assert (out[3] == 7).all()  # the fallback row is left for the caller


def test_out_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    blob = simplejpeg.encode_jpeg(_image(np.random.default_rng(5), 10, 12, 3))
    with pytest.raises(ValueError, match=r"\(2, H, W, C\) for 2 rows"):
        decode_column_bytes([blob, blob], out=np.empty((1, 10, 12, 3), np.uint8))
    with pytest.raises(ValueError, match=r"out has shape \(10, 13, 3\), the image decodes to"):
        decode_column_bytes([blob], out=np.empty((1, 10, 13, 3), np.uint8))
    with pytest.raises(TypeError, match="dtype uint8, got float32"):
        decode_column_bytes([blob], out=np.empty((1, 10, 12, 3), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        SimpleJpegDecoder().decode(blob, out=np.empty((10, 24, 3), np.uint8)[:, ::2])


def test_concurrent_decodes_give_the_serial_result() -> None:
    rng = np.random.default_rng(6)
    blobs = [simplejpeg.encode_jpeg(_image(rng, 64, 64, 3)) for _ in range(8)]
    serial = decode_column_bytes(blobs).arrays
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: decode_column_bytes(blobs).arrays, range(16)))
    for arrays in results:
        for ours, reference in zip(arrays, serial, strict=True):
            assert reference is not None
            _assert_identical(ours, reference)


# --- reduced (DCT-scaled) decode ---------------------------------------------------


@pytest.mark.parametrize(
    ("size", "target", "expected"),
    [
        ((512, 512), (64, 64), 8),
        ((512, 512), (65, 64), 4),
        ((512, 512), (128, 100), 4),
        ((512, 512), (129, 100), 2),
        ((512, 512), (256, 256), 2),
        ((512, 512), (257, 10), 1),
        ((512, 512), (1000, 1000), 1),  # never upscales
        ((600, 512), (75, 64), 8),
        ((601, 512), (76, 64), 8),  # ceil(601 / 8) = 76
        ((9, 9), (2, 2), 8),
        ((9, 9), (3, 2), 4),
    ],
)
def test_dct_reduction_picks_the_smallest_scale_that_covers_the_target(
    size: tuple[int, int], target: tuple[int, int], expected: int
) -> None:
    assert dct_reduction(*size, target) == expected


@settings(max_examples=examples(200), deadline=None)
@given(
    height=st.integers(1, 5000),
    width=st.integers(1, 5000),
    target=st.tuples(st.integers(1, 5000), st.integers(1, 5000)),
)
def test_dct_reduction_covers_the_target_and_no_larger_reduction_does(
    height: int, width: int, target: tuple[int, int]
) -> None:
    reduce = dct_reduction(height, width, target)
    assert reduce in REDUCTIONS

    def covers(r: int) -> bool:
        return math.ceil(height / r) >= target[0] and math.ceil(width / r) >= target[1]

    assert covers(reduce) or reduce == 1
    assert not any(covers(r) for r in REDUCTIONS if r > reduce)


@pytest.mark.parametrize("reduce", [2, 4, 8])
def test_reduced_decode_uses_dct_scaling(reduce: Reduction) -> None:
    full = _image(np.random.default_rng(7), 77, 101, 3)
    blob = simplejpeg.encode_jpeg(full, quality=95)
    target = (math.ceil(77 / reduce), math.ceil(101 / reduce))

    decoded = decode_column_bytes([blob], mode="reduced", target_size=target)

    array = decoded.arrays[0]
    assert array is not None
    assert array.shape == (*target, 3)
    # A DCT-scaled image is a low-pass of the full one: block means agree closely.
    reference = simplejpeg.decode_jpeg(blob).astype(np.float64)
    small = SimpleJpegDecoder().decode(blob, reduce=reduce).astype(np.float64)
    np.testing.assert_array_equal(array, small)
    h, w = 77 // reduce, 101 // reduce
    means = reference[: h * reduce, : w * reduce].reshape(h, reduce, w, reduce, 3).mean((1, 3))
    assert np.abs(means - small[:h, :w]).mean() < 8


def test_reduced_decode_of_a_grayscale_image_keeps_one_channel() -> None:
    gray = _image(np.random.default_rng(8), 64, 48, 1)
    blob = _pillow_jpeg(gray, quality=90, progressive=True, subsampling=0)
    decoded = decode_column_bytes([blob], mode="reduced", target_size=(16, 12))
    array = decoded.arrays[0]
    assert array is not None
    assert array.shape == (16, 12, 1)


# --- argument checking ------------------------------------------------------------

BLOB = simplejpeg.encode_jpeg(np.zeros((8, 8, 3), np.uint8))
# Untyped handles: these tests pass what the signatures forbid, on purpose.
decode_any: Any = decode_column_bytes
decoder_any: Any = SimpleJpegDecoder()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: decode_any([BLOB], mode="fast"), ValueError, "'fast'"),
        (lambda: decode_any([BLOB], mode=None), TypeError, "None"),
        (lambda: decode_any([BLOB], mode="reduced"), ValueError, "target_size"),
        (
            lambda: decode_any([BLOB], target_size=(4, 4)),
            ValueError,
            "only used with mode='reduced'",
        ),
        (
            lambda: decode_any([BLOB], mode="reduced", target_size=(0, 4)),
            ValueError,
            r"\(0, 4\)",
        ),
        (
            lambda: decode_any([BLOB], mode="reduced", target_size=(4, -1)),
            ValueError,
            r"\(4, -1\)",
        ),
        (
            lambda: decode_any([BLOB], mode="reduced", target_size=(4.0, 4)),
            TypeError,
            r"\(4.0, 4\)",
        ),
        (
            lambda: decode_any([BLOB], mode="reduced", target_size=4),
            TypeError,
            "got 4",
        ),
        (
            lambda: decode_any([BLOB], mode="reduced", target_size=(True, 4)),
            TypeError,
            "True",
        ),
        (lambda: decode_any(["abc"]), TypeError, "got str"),
        (lambda: decode_any(BLOB), TypeError, "got bytes"),
        (lambda: decode_any([BLOB], decoder=object()), TypeError, "got object"),
        (lambda: decoder_any.decode(BLOB, reduce=3), ValueError, r"\(1, 2, 4, 8\), got 3"),
        (lambda: decoder_any.decode(BLOB, reduce=2.0), TypeError, "got 2.0"),
        (lambda: dct_reduction(0, 5, (1, 1)), ValueError, r"image size sides must be >= 1"),
    ],
)
def test_bad_arguments_name_the_value(
    call: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("bad", ["fast", "EXACT", ""])
def test_unknown_mode_lists_the_valid_choices(bad: str) -> None:
    with pytest.raises(ValueError, match="exact") as info:
        decode_any([BLOB], mode=bad)
    assert str(DECODE_MODES) in str(info.value)
    assert repr(bad) in str(info.value)


# --- plugging in another decoder ---------------------------------------------------


class _RefusesColour:
    """A decoder that takes only grayscale, to prove decode_column_bytes defers to it."""

    def __init__(self) -> None:
        self.inner = SimpleJpegDecoder()
        self.calls = 0

    def info(self, data: bytes) -> ImageInfo:
        info = self.inner.info(data)
        if info.channels != 1:
            raise UnsupportedImage("colour")
        return info

    def decode(self, data: bytes, *, reduce: Any = 1, out: Any = None) -> Any:
        self.calls += 1
        self.info(data)
        return self.inner.decode(data, reduce=reduce, out=out)


def test_a_plugged_in_decoder_decides_what_falls_back() -> None:
    rng = np.random.default_rng(9)
    gray = _pillow_jpeg(_image(rng, 9, 9, 1), quality=80, progressive=False, subsampling=0)
    colour = simplejpeg.encode_jpeg(_image(rng, 9, 9, 3))
    decoder = _RefusesColour()
    assert isinstance(decoder, Decoder)

    decoded = decode_column_bytes([colour, gray], decoder=decoder)

    assert decoder.calls == 2
    assert decoded.fallback_rows == (0,)
    assert decoded.fallback[0].reason == "colour"


class _Broken(_RefusesColour):
    def decode(self, data: bytes, *, reduce: Any = 1, out: Any = None) -> Any:
        raise RuntimeError("bug in the decoder")


def test_errors_other_than_unsupported_image_propagate() -> None:
    # A decoder bug must surface, not turn every row into a silent fallback.
    with pytest.raises(RuntimeError, match="bug in the decoder"):
        decode_column_bytes([BLOB], decoder=_Broken())


# --- which columns, how many threads ----------------------------------------------


def test_jpeg_columns_names_only_plain_jpeg_image_columns(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'pairs'}"
    create_image_mask_dataset(url, 2)  # images: JPEG, masks: BinaryMask(lz4)
    ds = deeplake.open(url)
    ds.add_column("png", types.Image(types.UInt8(), sample_compression="png"))
    ds.add_column("jpg", types.Image(sample_compression="jpg"))
    ds.add_column("linked", types.Link(types.Image(sample_compression="jpg")))
    ds.add_column("wide", types.Image(types.UInt16(), sample_compression="jpg"))
    ds.add_column("segments", types.SegmentMask(sample_compression="lz4"))
    ds.commit()
    reopened = deeplake.open_read_only(url)
    masks = next(c for c in reopened.schema.columns if c.name == "masks")
    assert masks.dtype.sample_compression == "lz4"

    assert jpeg_columns(reopened) == ("images", "jpg")
    assert jpeg_columns(reopened.query("SELECT * LIMIT 1")) == ("images", "jpg")


def test_jpeg_columns_refuses_what_is_not_a_dataset() -> None:
    with pytest.raises(TypeError, match="got dict"):
        jpeg_columns({"images": []})


@pytest.mark.parametrize(
    ("cpus", "workers", "expected"),
    [(8, None, 8), (8, 3, 2), (8, 8, 1), (2, 16, 1), (1, None, 1), (2, 1, 2)],
)
def test_default_decode_threads_shares_usable_cpus_among_workers(
    monkeypatch: pytest.MonkeyPatch, cpus: int, workers: int | None, expected: int
) -> None:
    import torch.utils.data

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    info = None if workers is None else pytypes.SimpleNamespace(num_workers=workers)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
    assert default_decode_threads() == expected


def test_module_exports_what_it_defines() -> None:
    for name in _decode.__all__:
        assert hasattr(_decode, name), name


def test_decode_benchmark_reports_every_decoder_and_exact_ones_match(tmp_path: Path) -> None:
    from benchmarks import decode as bench

    result = bench.measure(tmp_path, rows=2, repeats=1, png_rows=1)

    for rows in result["jpeg"].values():
        names = [r["decoder"] for r in rows]
        assert names[0].startswith("deeplake get_async")
        assert "anyloader decode_column_bytes(out=batch)" in names
        assert "anyloader reduce=8 (1/8 DCT scale)" in names
        for r in rows:
            assert r["ms_per_image"] > 0
            if r["identical_required"] and not r["decoder"].startswith("deeplake"):
                assert r["max_diff"] == 0, r["decoder"]
    assert "| simplejpeg (anyloader) |" in bench.markdown(result)
