"""Segmentation training with a joint random-resized crop and flip of image and mask, at decode.

    python examples/segmentation_augment.py [URL] [--epochs 2] [--workers 0] [--per-sample]

``geometry=anyloader.RandomResizedCrop(...)`` crops, resizes and flips each
image and its mask together in anyloader's decode threads (images antialiased,
masks by nearest neighbour, so labels stay exact), straight into the batch. A
row's crop and flip are drawn from ``(seed, epoch, row)``: the same whatever
the number of DataLoader workers, the batch size, the order rows arrive in, or
a resume in another process, and new every epoch. ``--per-sample`` yields
samples and lets the DataLoader batch them instead.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import deeplake
import numpy as np
import torch
from deeplake import types
from torch import nn

import anyloader


def example_dataset(rows: int) -> str:
    """Images and masks of many sizes, made with deeplake's own API (built once, then reused)."""
    root = os.environ.get("ANYLOADER_CACHE") or tempfile.gettempdir()
    path = os.path.join(root, f"segmentation-example-{rows}")
    if not os.path.exists(path):
        ds = deeplake.create(f"file://{path}")
        ds.add_column("images", types.Image(types.UInt8(), sample_compression="jpeg"))
        ds.add_column("masks", types.BinaryMask(sample_compression="lz4"))
        rng = np.random.default_rng(0)
        for _ in range(rows):
            h, w = (int(side) for side in rng.integers(96, 200, 2))
            yy, xx = np.mgrid[0:h, 0:w]
            cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(15, 40)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            image = np.where(mask[..., None], rng.uniform(150, 255, 3), rng.uniform(0, 100, 3))
            ds.append({"images": [image.astype(np.uint8)], "masks": [mask[..., None]]})
        ds.commit()
    return f"file://{path}"


def make_loader(
    url: str, *, crop: int, batch_size: int, workers: int, per_sample: bool = False
) -> tuple[anyloader.AsyncDataset, anyloader.DataLoader]:
    """The dataset and its loader: every row random-resized-cropped and flipped, image and mask."""
    data = anyloader.AsyncDataset(
        url,
        columns=["images", "masks"],
        shuffle=True,
        return_index=True,
        geometry=anyloader.RandomResizedCrop((crop, crop), scale=(0.25, 1.0), hflip=0.5),
        batch_size=None if per_sample else batch_size,
    )
    if per_sample:
        return data, anyloader.DataLoader(data, batch_size=batch_size, num_workers=workers)
    return data, anyloader.DataLoader(data, num_workers=workers)


def to_model(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(B, H, W, 3)`` images and bool ``(B, H, W, 1)`` masks to float ``(B, C, H, W)``."""
    images = batch["images"].permute(0, 3, 1, 2).float().div_(255)
    masks = batch["masks"].permute(0, 3, 1, 2).float()
    return images, masks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", nargs="?", help="dataset URL (default: the example dataset)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--per-sample", action="store_true", help="let the DataLoader batch")
    args = parser.parse_args(argv)

    url = args.url or example_dataset(args.rows)
    _data, loader = make_loader(
        url,
        crop=args.crop,
        batch_size=args.batch_size,
        workers=args.workers,
        per_sample=args.per_sample,
    )
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.BCEWithLogitsLoss()
    for epoch in range(args.epochs):
        samples, total = 0, 0.0
        for batch in loader:  # each epoch: a new shuffle and new crops
            images, masks = to_model(batch)
            optimizer.zero_grad()
            loss = loss_fn(model(images), masks)
            loss.backward()
            optimizer.step()
            samples += len(batch["index"])
            total += loss.item() * len(batch["index"])
        print(f"epoch {epoch}: {samples} samples, mean loss {total / max(samples, 1):.4f}")


if __name__ == "__main__":
    main()
