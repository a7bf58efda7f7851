"""Joint image/mask augmentation (random crop, random horizontal flip) as an anyloader transform.

    python examples/segmentation_augment.py [URL] [--epochs 2] [--workers 2] [--per-batch]

An image and its mask get the same crop and the same flip, drawn from a
generator seeded by ``(seed, epoch, row)``: a row's augmentation in an epoch
is the same whatever the number of DataLoader workers, the batch size, the
order rows arrive in, or a resume in another process, and it changes from one
epoch to the next. ``--per-batch`` runs the same augmentation in batch mode.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from ddp_train import example_dataset  # the same demo data, made with deeplake's own API
from torch import nn

import anyloader


class JointAugment:
    """Crop ``size`` at a random place, then flip horizontally half the time: image and mask alike.

    Each row's draws come from its own generator, seeded by ``(seed, epoch,
    row)`` (the row from ``return_index=True``), never from a global RNG.
    Set ``epoch`` before each epoch; DataLoader workers get it with their copy
    of the dataset when ``iter(loader)`` starts them (not persistent workers,
    which keep the copy they started with).
    """

    def __init__(self, size: tuple[int, int], seed: int = 0) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def draw(self, row: int, height: int, width: int) -> tuple[bool, int, int]:
        """Row ``row``'s flip and the top-left corner of its crop, this epoch."""
        rng = np.random.default_rng((self.seed, self.epoch, row))
        flip = bool(rng.integers(2))
        top = int(rng.integers(height - self.size[0] + 1))
        left = int(rng.integers(width - self.size[1] + 1))
        return flip, top, left

    def pair(
        self, image: torch.Tensor, mask: torch.Tensor, row: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One row: ``(H, W, 3)`` uint8 image and ``(H, W, 1)`` bool mask in, ``(C, h, w)`` out."""
        flip, top, left = self.draw(row, image.shape[0], image.shape[1])
        h, w = self.size
        image, mask = image[top : top + h, left : left + w], mask[top : top + h, left : left + w]
        if flip:  # dim 1 is the width of an (H, W, C) array
            image, mask = image.flip(1), mask.flip(1)
        return image.permute(2, 0, 1).float().div_(255), mask.permute(2, 0, 1).float()

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Per-sample mode: the transform receives one row's dict of numpy arrays."""
        row = int(sample["index"])
        image, mask = torch.from_numpy(sample["images"]), torch.from_numpy(sample["masks"])
        image, mask = self.pair(image, mask, row)
        return {"image": image, "mask": mask, "index": row}

    def batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Batch mode: the transform receives whole batches of tensors; each row is drawn alone."""
        rows = batch["index"].tolist()
        pairs = [
            self.pair(image, mask, row)
            for image, mask, row in zip(batch["images"], batch["masks"], rows, strict=True)
        ]
        return {
            "image": torch.stack([image for image, _ in pairs]),
            "mask": torch.stack([mask for _, mask in pairs]),
            "index": batch["index"],
        }


def make_loader(
    url: str, augment: JointAugment, *, batch_size: int, workers: int, per_batch: bool = False
) -> tuple[anyloader.AsyncDataset, anyloader.DataLoader]:
    """The dataset and its loader, with the augmentation per sample or per batch."""
    if per_batch:
        data = anyloader.AsyncDataset(
            url, columns=["images", "masks"], shuffle=True, return_index=True,
            batch_size=batch_size, transform=augment.batch,
        )  # fmt: skip
        return data, anyloader.DataLoader(data, num_workers=workers)
    data = anyloader.AsyncDataset(
        url, columns=["images", "masks"], shuffle=True, return_index=True, transform=augment
    )
    return data, anyloader.DataLoader(data, batch_size=batch_size, num_workers=workers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", nargs="?", help="dataset URL (default: the demo dataset)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--per-batch", action="store_true", help="augment whole batches")
    args = parser.parse_args(argv)

    url = args.url or example_dataset(args.rows, args.size)
    augment = JointAugment((args.crop, args.crop), seed=0)
    data, loader = make_loader(
        url, augment, batch_size=args.batch_size, workers=args.workers, per_batch=args.per_batch
    )
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.BCEWithLogitsLoss()
    for epoch in range(args.epochs):
        augment.epoch = epoch  # before iter(loader): the workers it starts copy it
        data.set_epoch(epoch)
        samples, total = 0, 0.0
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(batch["image"]), batch["mask"])
            loss.backward()
            optimizer.step()
            samples += len(batch["index"])
            total += loss.item() * len(batch["index"])
        print(f"epoch {epoch}: {samples} samples, mean loss {total / max(samples, 1):.4f}")


if __name__ == "__main__":
    main()
