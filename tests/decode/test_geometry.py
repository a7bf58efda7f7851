"""Geometry at decode, against plain references: torchvision's sampling and Pillow's filter.

The references here are written out in plain Python and numpy from their
documented definitions, not from anyloader's code: the draw stream in Python
integers, torchvision's ``RandomResizedCrop.get_params`` loop row by row,
Pillow's antialiased bilinear filter (a triangle whose support widens with the
downscale factor, two passes, rounded to uint8 in between) and nearest
neighbour by the pixel-centre rule, one pixel at a time.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anyloader._decode.resize import resize_image, resize_nearest
from anyloader._plan.geometry import Placement, RandomResizedCrop, Resize, check_geometry, uniforms

MASK64 = (1 << 64) - 1


def splitmix(z: int) -> int:
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def mix64(*words: int) -> int:
    h = 0x243F6A8885A308D3
    for w in words:
        h = splitmix((h ^ (w & MASK64)) + 0x9E3779B97F4A7C15)
    return h


def draw(seed: int, epoch: int, row: int, k: int) -> float:
    """The module docstring's stream, in Python integers."""
    key = mix64(seed, epoch, 0x6E0)
    z = (row * 0x9E3779B97F4A7C15 + k * 0xD1B54A32D192ED03 + key) & MASK64
    return (splitmix(splitmix(z)) >> 11) / 2**53


def reference_params(spec: RandomResizedCrop, seed: int, epoch: int, row: int, h: int, w: int):
    """torchvision's get_params, row by row, on the documented draws."""
    area = h * w
    lo, hi = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    for attempt in range(10):
        target = area * (
            spec.scale[0] + (spec.scale[1] - spec.scale[0]) * draw(seed, epoch, row, 2 * attempt)
        )
        aspect = math.exp(lo + (hi - lo) * draw(seed, epoch, row, 2 * attempt + 1))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(draw(seed, epoch, row, 20) * (h - ch + 1))
            left = int(draw(seed, epoch, row, 21) * (w - cw + 1))
            break
    else:
        ratio = w / h
        if ratio < spec.ratio[0]:
            cw, ch = w, max(1, round(w / spec.ratio[0]))
        elif ratio > spec.ratio[1]:
            ch, cw = h, max(1, round(h * spec.ratio[1]))
        else:
            ch, cw = h, w
        top, left = (h - ch) // 2, (w - cw) // 2
    return (
        top,
        left,
        ch,
        cw,
        draw(seed, epoch, row, 22) < spec.hflip,
        draw(seed, epoch, row, 23) < spec.vflip,
    )


sizes = st.tuples(st.integers(1, 700), st.integers(1, 700))
specs = st.builds(
    RandomResizedCrop,
    size=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    scale=st.tuples(st.floats(0.01, 1.0), st.floats(0.01, 1.0)).map(sorted).map(tuple),
    ratio=st.tuples(st.floats(0.2, 5.0), st.floats(0.2, 5.0)).map(sorted).map(tuple),
    hflip=st.floats(0, 1),
    vflip=st.floats(0, 1),
)


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**40),
    epoch=st.integers(0, 1000),
    rows=st.lists(st.integers(0, 2**40), min_size=1, max_size=8),
)
def test_the_draw_stream_is_the_documented_one(seed: int, epoch: int, rows: list[int]) -> None:
    got = uniforms(seed, epoch, np.array(rows, dtype=np.int64))
    for i, row in enumerate(rows):
        assert got[i].tolist() == [draw(seed, epoch, row, k) for k in range(24)]


@settings(max_examples=300, deadline=None)
@given(
    spec=specs,
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 50),
    images=st.lists(st.tuples(st.integers(0, 10**9), sizes), min_size=1, max_size=6),
)
def test_random_resized_crop_samples_as_torchvision_documents(
    spec: RandomResizedCrop, seed: int, epoch: int, images: list[tuple[int, tuple[int, int]]]
) -> None:
    rows = np.array([r for r, _ in images], dtype=np.int64)
    placed = spec.place(seed, epoch, rows, np.array([s for _, s in images], dtype=np.int64))
    for (row, (h, w)), p in zip(images, placed, strict=True):
        assert (p.top, p.left, p.height, p.width, p.hflip, p.vflip) == reference_params(
            spec, seed, epoch, row, h, w
        )
        # Every crop lies inside its image and comes out at the spec's size.
        assert p.top >= 0
        assert p.left >= 0
        assert p.top + p.height <= h
        assert p.left + p.width <= w
        assert min(p.height, p.width) >= 1
        assert p.size == spec.size


def test_placements_depend_on_seed_epoch_and_row_only() -> None:
    spec = RandomResizedCrop((64, 64), hflip=0.5)
    sizes_ = np.array([[300, 400]] * 50)
    one = spec.place(1, 3, np.arange(50), sizes_)
    assert one == spec.place(1, 3, np.arange(50), sizes_)  # deterministic
    assert one[7:9] == spec.place(1, 3, np.array([7, 8]), sizes_[:2])  # row by row
    assert one != spec.place(1, 4, np.arange(50), sizes_)  # a new epoch, new crops
    assert one != spec.place(2, 3, np.arange(50), sizes_)
    flips = [p.hflip for p in one]
    assert 10 < sum(flips) < 40  # about half


@pytest.mark.parametrize(
    ("spec", "image", "expected"),
    [
        (Resize((32, 48)), (300, 200), Placement(0, 0, 300, 200, (32, 48), False, False)),
        (Resize(100), (300, 200), Placement(0, 0, 300, 200, (150, 100), False, False)),
        (Resize(100), (200, 300), Placement(0, 0, 200, 300, (100, 150), False, False)),
        # torchvision: Resize(256) then CenterCrop(224), as a box of the source.
        (Resize(256, crop=224), (480, 640), Placement(30, 109, 420, 420, (224, 224), False, False)),
        (
            Resize(100, crop=(100, 50)),
            (100, 100),
            Placement(0, 25, 100, 50, (100, 50), False, False),
        ),
    ],
)
def test_resize_places_the_whole_image_or_its_centre(
    spec: Resize, image: tuple[int, int], expected: Placement
) -> None:
    assert spec.place(0, 0, np.array([0]), np.array([image])) == [expected]
    assert spec.output_size == (
        None if spec.crop is None and isinstance(spec.size, int) else expected.size
    )


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: RandomResizedCrop((0, 5)), ValueError, "size"),
        (lambda: RandomResizedCrop("big"), TypeError, "size"),  # type: ignore[arg-type]
        (lambda: RandomResizedCrop((5, 5), scale=(0.5, 0.2)), ValueError, "scale"),
        (lambda: RandomResizedCrop((5, 5), ratio=(0, 1)), ValueError, "ratio"),
        (lambda: RandomResizedCrop((5, 5), hflip=2), ValueError, "hflip"),
        (lambda: RandomResizedCrop((5, 5), vflip="yes"), TypeError, "vflip"),  # type: ignore[arg-type]
        (lambda: RandomResizedCrop((5, 5), masks="seg"), TypeError, "masks"),  # type: ignore[arg-type]
        (lambda: Resize(0), ValueError, "size"),
        (lambda: Resize(100, crop=101), ValueError, "fit"),
        (lambda: Resize((10, 20), crop=(5, 30)), ValueError, "fit"),
    ],
)
def test_a_bad_geometry_is_refused_by_name(make, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_only_geometries_are_geometries() -> None:
    with pytest.raises(TypeError, match="RandomResizedCrop"):
        check_geometry("geometry", (224, 224))
    assert check_geometry("geometry", None) is None


# --- the pixels --------------------------------------------------------------


PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images


def pillow_weights(in_size: int, out_size: int) -> list[tuple[int, np.ndarray]]:
    """Pillow's antialiased bilinear coefficients, in its fixed point: (first input, weights)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale
    out = []
    for i in range(out_size):
        center = (i + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        last = min(int(center + support + 0.5), in_size)
        x = (np.arange(first, last) - center + 0.5) / filterscale
        w = np.clip(1.0 - np.abs(x), 0.0, None)
        w = w / w.sum()
        fixed = np.where(w < 0, -0.5, 0.5) + w * (1 << PRECISION_BITS)
        out.append((first, fixed.astype(np.int64)))
    return out


def reference_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow's resample: two passes, horizontal first, each in fixed point, rounded to uint8."""
    src = image.astype(np.int64)
    h, w, c = src.shape
    half = 1 << (PRECISION_BITS - 1)
    if size[1] != w:
        tmp = np.empty((h, size[1], c), np.int64)
        for j, (first, wts) in enumerate(pillow_weights(w, size[1])):
            acc = np.tensordot(src[:, first : first + len(wts)], wts, axes=([1], [0]))
            tmp[:, j] = np.clip((acc + half) >> PRECISION_BITS, 0, 255)
        src = tmp
    if size[0] != h:
        tmp = np.empty((size[0], src.shape[1], c), np.int64)
        for i, (first, wts) in enumerate(pillow_weights(h, size[0])):
            acc = np.tensordot(src[first : first + len(wts)], wts, axes=([0], [0]))
            tmp[i] = np.clip((acc + half) >> PRECISION_BITS, 0, 255)
        src = tmp
    return src.astype(np.uint8)


def reference_nearest(
    image: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]
) -> np.ndarray:
    top, left, h, w = box
    out = np.empty((*size, *image.shape[2:]), image.dtype)
    for i in range(size[0]):
        for j in range(size[1]):
            out[i, j] = image[
                top + min(int((i + 0.5) * h / size[0]), h - 1),
                left + min(int((j + 0.5) * w / size[1]), w - 1),
            ]
    return out


@st.composite
def crops(draw_: st.DrawFn, max_side: int = 120):
    h, w = draw_(st.integers(1, max_side)), draw_(st.integers(1, max_side))
    top, left = draw_(st.integers(0, h - 1)), draw_(st.integers(0, w - 1))
    ch, cw = draw_(st.integers(1, h - top)), draw_(st.integers(1, w - left))
    size = (draw_(st.integers(1, 90)), draw_(st.integers(1, 90)))
    return (h, w), (top, left, ch, cw), size, draw_(st.booleans()), draw_(st.booleans())


@settings(max_examples=150, deadline=None)
@given(case=crops(), channels=st.just(3), seed=st.integers(0, 2**32))
def test_images_are_within_one_level_of_pillows_filter(case, channels: int, seed: int) -> None:
    (h, w), box, size, hflip, vflip = case
    image = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    out = np.empty((*size, channels), np.uint8)
    resize_image(image, box, out, hflip=hflip, vflip=vflip)
    top, left, ch, cw = box
    expected = reference_resize(image[top : top + ch, left : left + cw], size)
    if hflip:
        expected = expected[:, ::-1]
    if vflip:
        expected = expected[::-1]
    assert np.abs(out.astype(int) - expected).max() <= 1


@settings(max_examples=150, deadline=None)
@given(
    case=crops(60),
    dtype=st.sampled_from([np.bool_, np.uint8, np.int32]),
    channels=st.sampled_from([(), (1,), (2,)]),
    seed=st.integers(0, 2**32),
)
def test_masks_are_exactly_the_nearest_pixels(
    case, dtype, channels: tuple[int, ...], seed: int
) -> None:
    (h, w), box, size, hflip, vflip = case
    mask = np.random.default_rng(seed).integers(0, 5, (h, w, *channels)).astype(dtype)
    out = np.empty((*size, *channels), dtype)
    resize_nearest(mask, box, out, hflip=hflip, vflip=vflip)
    expected = reference_nearest(mask, box, size)
    if hflip:
        expected = expected[:, ::-1]
    if vflip:
        expected = expected[::-1]
    assert np.array_equal(out, expected)
    assert set(np.unique(out)) <= set(np.unique(mask))  # no label that was not there


def test_a_box_of_the_output_size_is_copied_unresampled() -> None:
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    out = np.empty((20, 30, 3), np.uint8)
    resize_image(image, (5, 7, 20, 30), out, hflip=True)
    assert np.array_equal(out, image[5:25, 7:37][:, ::-1])
