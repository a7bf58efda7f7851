"""Detection-style loading: boxes and their labels cropped, flipped and filtered with the image.

    python examples/detection_boxes.py [URL] [--epochs 1] [--workers 0]

Each row has an image of its own size, ``(N, 4)`` boxes in pixels (``xywh``,
COCO's convention) and one category per box. ``geometry=`` random-resized-crops
and flips the image; ``boxes=`` moves the boxes with it, clips them to the crop,
and drops the boxes left outside it together with their categories, so the
two columns stay aligned. Boxes and categories are ragged: in batch mode they
are lists with one tensor per row.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import deeplake
import numpy as np
from deeplake import types

import anyloader


def example_dataset(rows: int) -> str:
    """Images of many sizes with xywh boxes and a category per box (deeplake's own API)."""
    root = os.environ.get("ANYLOADER_CACHE") or tempfile.gettempdir()
    path = os.path.join(root, f"detection-example-{rows}")
    if not os.path.exists(path):
        ds = deeplake.create(f"file://{path}")
        ds.add_column("image", types.Image(types.UInt8(), sample_compression="jpeg"))
        ds.add_column("boxes", types.BoundingBox())
        ds.add_column("categories", types.Array(types.Int64(), dimensions=1))
        rng = np.random.default_rng(1)
        for _ in range(rows):
            h, w = (int(side) for side in rng.integers(120, 320, 2))
            image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            n = int(rng.integers(1, 6))
            corner = rng.uniform(0, [w * 0.8, h * 0.8], (n, 2))
            size = rng.uniform(8, [w * 0.4, h * 0.4], (n, 2))
            ds.append(
                {
                    "image": [image],
                    "boxes": [np.concatenate([corner, size], axis=1).astype(np.float32)],
                    "categories": [rng.integers(0, 80, n)],
                }
            )
        ds.commit()
    return f"file://{path}"


def make_loader(url: str, *, size: int, batch_size: int, workers: int) -> anyloader.DataLoader:
    """Batches of ``size x size`` crops, boxes moved and filtered with them, categories alike."""
    data = anyloader.AsyncDataset(
        url,
        columns=["image", "boxes", "categories"],
        shuffle=True,
        batch_size=batch_size,
        geometry=anyloader.RandomResizedCrop((size, size), scale=(0.3, 1.0), hflip=0.5),
        boxes=[anyloader.Boxes("boxes", "xywh", aligned=("categories",))],
    )
    return anyloader.DataLoader(data, num_workers=workers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", nargs="?", help="dataset URL (default: the example dataset)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--rows", type=int, default=64)
    args = parser.parse_args(argv)

    url = args.url or example_dataset(args.rows)
    loader = make_loader(url, size=args.size, batch_size=args.batch_size, workers=args.workers)
    for epoch in range(args.epochs):
        rows = boxes = 0
        for batch in loader:
            images = batch["image"]  # uint8 (B, size, size, 3)
            for row_boxes, row_categories in zip(batch["boxes"], batch["categories"], strict=True):
                assert len(row_boxes) == len(row_categories)  # dropped together
                boxes += len(row_boxes)
            rows += len(images)
        dropped = loader.stats().boxes_dropped
        print(f"epoch {epoch}: {rows} images, {boxes} boxes kept, {dropped} outside their crop")


if __name__ == "__main__":
    main()
