"""Geometry at decode through the whole engine, on a real deeplake dataset of many image sizes.

Every delivered row is checked against a plain reference built from the stored
row: its placement from the pure sampling function, its JPEG decoded at the
documented DCT scale and resized by Pillow's filter (within one level), its PNG
image likewise, its masks by nearest neighbour (exactly), its boxes mapped,
flipped, clipped and filtered by hand. Then the same placements must come out
with workers, on the other backend, in batch mode, and after a resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import deeplake
import numpy as np
import pytest
import simplejpeg
import torch
from deeplake import types
from test_geometry import reference_nearest, reference_resize
from torch.utils.data import DataLoader

import anyloader
from anyloader import AsyncDataset, Boxes, RandomResizedCrop, Resize
from anyloader._plan.geometry import Placement

ROWS = 30


@pytest.fixture(scope="module")
def coco_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """COCO-like rows: JPEG (some grayscale) and PNG images of 24-130 px at any aspect ratio,
    a binary mask and a class-label mask of the same size, xywh boxes with a label each, a
    caption."""
    url = f"file://{tmp_path_factory.mktemp('coco') / 'ds'}"
    ds = deeplake.create(url)
    ds.add_column("image", types.Image(types.UInt8(), sample_compression="jpeg"))
    ds.add_column("png", types.Image(types.UInt8(), sample_compression="png"))
    ds.add_column("mask", types.BinaryMask(sample_compression="lz4"))
    ds.add_column("seg", types.SegmentMask(types.UInt8(), sample_compression="lz4"))
    ds.add_column("boxes", types.BoundingBox())
    ds.add_column("labels", types.Array(types.Int64(), dimensions=1))
    ds.add_column("caption", types.Text())
    rng = np.random.default_rng(11)
    for row in range(ROWS):
        h, w = (int(v) for v in rng.integers(24, 131, 2))
        photo = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        gray = row % 7 == 3
        jpeg = simplejpeg.encode_jpeg(
            np.ascontiguousarray(photo[..., :1]) if gray else photo,
            quality=90,
            colorspace="GRAY" if gray else "RGB",
            colorsubsampling=["420", "444", "422"][row % 3],
        )
        n = int(rng.integers(0, 5))
        xy = rng.uniform(-10, [w, h], (n, 2))
        wh = rng.uniform(1, [w / 2, h / 2], (n, 2))
        ds.append(
            {
                "image": [jpeg],
                "png": [photo[::-1]],
                "mask": [photo[..., :1] > 127],
                "seg": [(photo[..., 1] // 64).astype(np.uint8)],
                "boxes": [np.concatenate([xy, wh], axis=1).astype(np.float32)],
                "labels": [np.arange(n, dtype=np.int64) + 10 * row],
                "caption": [f"row {row}"],
            }
        )
    ds.commit()
    return url


def reference_row(stored: dict[str, Any], geometry: Any, placement: Placement) -> dict[str, Any]:
    """What one row must come out as, from its stored values and its placement."""
    size = (int(placement.height), int(placement.width))
    oh, ow = placement.size
    flip = (
        slice(None, None, -1 if placement.vflip else 1),
        slice(None, None, -1 if placement.hflip else 1),
    )
    # The JPEG, at the documented DCT scale: the largest of 8, 4, 2 leaving the crop >= the output.
    blob = stored["image_bytes"]
    height, width, _, _ = simplejpeg.decode_jpeg_header(blob)
    reduce = next((r for r in (8, 4, 2) if size[0] // r >= oh and size[1] // r >= ow), 1)
    image = simplejpeg.decode_jpeg(
        blob,
        colorspace="RGB",
        min_height=math.ceil(height / reduce) if reduce > 1 else 0,
        min_width=math.ceil(width / reduce) if reduce > 1 else 0,
        strict=False,
    )
    sh, sw = image.shape[:2]
    top, left = placement.top * sh // height, placement.left * sw // width
    box_h = max(1, min(sh - top, placement.height * sh // height))
    box_w = max(1, min(sw - left, placement.width * sw // width))
    if (top, left, box_h, box_w) == (0, 0, sh, sw) and (sh, sw) == (oh, ow):
        expected_image = image
    else:
        expected_image = reference_resize(image[top : top + box_h, left : left + box_w], (oh, ow))
    crop = (
        slice(placement.top, placement.top + placement.height),
        slice(placement.left, placement.left + placement.width),
    )
    png = stored["png"][crop]
    expected_png = png if png.shape[:2] == (oh, ow) else reference_resize(png, (oh, ow))
    box = placement.box
    out = {
        "image": expected_image[flip],
        "png": expected_png[flip],
        "mask": reference_nearest(stored["mask"], box, (oh, ow))[flip],
        "seg": reference_nearest(stored["seg"][..., None], box, (oh, ow))[flip],
    }
    # Boxes: xywh -> corners, into the output, flipped, clipped; empty ones dropped.
    kept_boxes, kept_labels = [], []
    for (x, y, bw, bh), label in zip(
        stored["boxes"].tolist(), stored["labels"].tolist(), strict=True
    ):
        sx, sy = ow / placement.width, oh / placement.height
        x0, x1 = (x - placement.left) * sx, (x + bw - placement.left) * sx
        y0, y1 = (y - placement.top) * sy, (y + bh - placement.top) * sy
        if placement.hflip:
            x0, x1 = ow - x1, ow - x0
        if placement.vflip:
            y0, y1 = oh - y1, oh - y0
        x0, x1, y0, y1 = (
            min(max(x0, 0), ow),
            min(max(x1, 0), ow),
            min(max(y0, 0), oh),
            min(max(y1, 0), oh),
        )
        if x1 > x0 and y1 > y0:
            kept_boxes.append([x0, y0, x1 - x0, y1 - y0])
            kept_labels.append(label)
    out["boxes"] = np.array(kept_boxes, dtype=np.float64).reshape(-1, 4)
    out["labels"] = kept_labels
    out["dropped"] = len(stored["labels"]) - len(kept_labels)
    return out


@pytest.fixture(scope="module")
def stored(coco_url: str) -> list[dict[str, Any]]:
    ds = deeplake.open_read_only(coco_url)
    blobs = ds["image"].get_bytes(list(range(ROWS)))
    return [
        {
            "image_bytes": blobs[i],
            "png": np.asarray(ds["png"][i]),
            "mask": np.asarray(ds["mask"][i]),
            "seg": np.asarray(ds["seg"][i]),
            "boxes": np.asarray(ds["boxes"][i]),
            "labels": np.asarray(ds["labels"][i]),
        }
        for i in range(ROWS)
    ]


GEOMETRIES = {
    "random-resized-crop": RandomResizedCrop(
        (32, 40), scale=(0.2, 1.0), hflip=0.5, vflip=0.3, masks=("seg",)
    ),
    # Small outputs: crops 2, 4 and 8 times larger decode at 1/2, 1/4, 1/8.
    "thumbnail": RandomResizedCrop((8, 10), scale=(0.3, 1.0), masks=("seg",)),
    "resize": Resize((50, 30), hflip=1.0, masks=("seg",)),
    "resize-and-centre-crop": Resize(40, crop=(32, 24), masks=("seg",)),
}
COLUMNS = ["image", "png", "mask", "seg", "boxes", "labels", "caption"]


def loader_of(url: str, geometry: Any, **options: Any) -> AsyncDataset:
    return AsyncDataset(
        url,
        columns=COLUMNS,
        geometry=geometry,
        boxes=[Boxes("boxes", "xywh", aligned=("labels",))],
        return_geometry=True,
        return_index=True,
        shuffle=True,
        seed=5,
        **options,
    )


def rows_of(items: Any) -> Iterator[dict[str, Any]]:
    """Samples, or the rows of batches, as dicts of numpy values."""
    for item in items:
        if isinstance(item["index"], torch.Tensor) and item["index"].ndim == 1:
            for i in range(len(item["index"])):
                yield {
                    k: (v[i].numpy() if isinstance(v, torch.Tensor) else v[i])
                    for k, v in item.items()
                }
        else:
            yield {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in item.items()}


@pytest.mark.parametrize("name", list(GEOMETRIES))
@pytest.mark.parametrize("batch_size", [None, 4])
def test_every_row_is_its_reference(
    coco_url: str, stored: list[dict[str, Any]], backend: str, name: str, batch_size: int | None
) -> None:
    geometry = GEOMETRIES[name]
    ds = loader_of(coco_url, geometry, backend=backend, batch_size=batch_size, fetch_size=3)
    seen, dropped = [], 0
    for row in rows_of(ds):
        index = int(row["index"])
        seen.append(index)
        g = row["geometry"].tolist()
        placement = Placement(
            g[0],
            g[1],
            g[2],
            g[3],
            geometry.place(5, 0, np.array([index]), np.array([g[4:6]]))[0].size,
            bool(g[6]),
            bool(g[7]),
        )
        # The placement is the pure function's, for the row's own size.
        assert placement == geometry.place(5, 0, np.array([index]), np.array([g[4:6]]))[0]
        height, width, _, _ = simplejpeg.decode_jpeg_header(stored[index]["image_bytes"])
        assert g[4:6] == [height, width]
        expected = reference_row(stored[index], geometry, placement)
        assert row["image"].shape == (*placement.size, 3)
        assert np.abs(row["image"].astype(int) - expected["image"]).max() <= 1, f"row {index}"
        assert np.abs(row["png"].astype(int) - expected["png"]).max() <= 1, f"row {index}"
        assert np.array_equal(row["mask"], expected["mask"]), f"row {index}"
        assert np.array_equal(row["seg"], expected["seg"]), f"row {index}"
        np.testing.assert_allclose(np.asarray(row["boxes"]), expected["boxes"], atol=1e-3)
        assert np.asarray(row["labels"]).tolist() == expected["labels"]
        assert row["caption"] == f"row {index}"  # other columns pass through untouched
        dropped += expected["dropped"]
    assert sorted(seen) == list(range(ROWS))
    assert ds.stats().boxes_dropped == dropped


def placements(items: Any) -> dict[int, list[int]]:
    return {int(r["index"]): r["geometry"].tolist() for r in rows_of(items)}


@pytest.mark.slow
def test_each_row_gets_the_same_crop_whatever_runs_it(coco_url: str) -> None:
    geometry = GEOMETRIES["random-resized-crop"]
    reference = placements(loader_of(coco_url, geometry, backend="asyncio"))
    assert sorted(reference) == list(range(ROWS))
    runs = {
        "trio": placements(loader_of(coco_url, geometry, backend="trio")),
        "batch mode, unordered": placements(
            loader_of(coco_url, geometry, batch_size=7, ordered=False)
        ),
        "2 fork workers": placements(
            DataLoader(
                loader_of(coco_url, geometry),
                batch_size=None,
                num_workers=2,
                multiprocessing_context="fork",
            )
        ),
    }
    for name, got in runs.items():
        assert got == reference, name
    # Stopped after 11 rows and resumed in a new dataset: the rest, with the same crops.
    first = loader_of(coco_url, geometry)
    it = iter(first)
    head = placements(next(it) for _ in range(11))
    state = first.state_dict()
    it.close()
    resumed = loader_of(coco_url, geometry)
    resumed.load_state_dict(state)
    assert {**head, **placements(resumed)} == reference
    # A new epoch draws new crops.
    assert placements(first) != reference


def test_an_image_only_deeplake_can_decode_is_placed_too(tmp_path: Any, backend: str) -> None:
    import io

    from PIL import Image

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buffer, "JPEG", quality=90)
    ds = deeplake.create(f"file://{tmp_path / 'ds'}")
    ds.add_column("image", types.Image(types.UInt8(), sample_compression="jpeg"))
    ds.append({"image": [simplejpeg.encode_jpeg(rgb)]})
    ds.append({"image": [buffer.getvalue()]})  # libjpeg-turbo through simplejpeg cannot
    ds.commit()
    (batch,) = AsyncDataset(ds, backend=backend, batch_size=2, geometry=Resize((20, 30)))
    assert tuple(batch["image"].shape) == (2, 20, 30, 3)


def test_a_geometry_needs_something_to_place() -> None:
    source = anyloader.MemorySource({"x": np.arange(4)})
    with pytest.raises(ValueError, match="image or mask column"):
        AsyncDataset(source, geometry=Resize((8, 8)))
    with pytest.raises(ValueError, match="not read"):
        AsyncDataset(source, geometry=Resize((8, 8), masks=("y",)))
    with pytest.raises(ValueError, match="needs a geometry"):
        AsyncDataset(source, return_geometry=True)
    with pytest.raises(ValueError, match="image_size"):
        AsyncDataset(source, geometry=Resize((8, 8)), image_size=(8, 8))


def test_in_memory_label_images_are_placed_as_masks(backend: str) -> None:
    labels = np.arange(4 * 6 * 8).reshape(4, 6, 8) % 5
    source = anyloader.MemorySource({"labels": labels.astype(np.int32)})
    ds = AsyncDataset(
        source, backend=backend, batch_size=4, geometry=Resize((3, 4), masks=("labels",))
    )
    (batch,) = ds
    assert tuple(batch["labels"].shape) == (4, 3, 4, 1)
    assert batch["labels"].dtype == torch.int32
    for i in range(4):
        expected = reference_nearest(labels[i][..., None].astype(np.int32), (0, 0, 6, 8), (3, 4))
        assert np.array_equal(batch["labels"][i].numpy(), expected)
