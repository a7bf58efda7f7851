"""Train a tiny segmentation model for an epoch with DistributedDataParallel and anyloader.

    torchrun --nproc_per_node=2 examples/ddp_train.py [--backend trio] [--epochs 2]

Each rank reads its own share of every epoch (``even=True``: the same number of
samples on every rank, so DDP's gradient all-reduce never waits for a rank that
has run out); DataLoader workers split the rank's share again.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

import deeplake
import numpy as np
import torch
import torch.distributed as dist
from deeplake import types
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import anyloader


def example_dataset(rows: int, size: int) -> str:
    """An image/mask dataset made with deeplake's own API (built once, then reused)."""
    root = os.environ.get("ANYLOADER_CACHE") or tempfile.gettempdir()
    path = os.path.join(root, f"ddp-example-{rows}x{size}")
    if not os.path.exists(path):
        ds = deeplake.create(f"file://{path}")
        ds.add_column("images", types.Image(types.UInt8(), sample_compression="jpeg"))
        ds.add_column("masks", types.BinaryMask(sample_compression="lz4"))
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:size, 0:size] / size
        for _ in range(rows):
            cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            image = np.where(mask[..., None], rng.uniform(150, 255, 3), rng.uniform(0, 100, 3))
            ds.append({"images": [image.astype(np.uint8)], "masks": [mask[..., None]]})
        ds.commit()
    return f"file://{path}"


def to_tensors(sample: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.from_numpy(sample["images"]).permute(2, 0, 1).float().div_(255)
    mask = torch.from_numpy(sample["masks"]).permute(2, 0, 1).float()
    return image, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", nargs="?", help="dataset URL (default: the demo dataset)")
    parser.add_argument("--backend", default="asyncio", choices=anyloader.BACKENDS)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()

    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank = dist.get_rank()
    if rank == 0 and args.url is None:
        example_dataset(args.rows, args.size)  # built once, before the others look
    dist.barrier()
    url = args.url or example_dataset(args.rows, args.size)

    data = anyloader.AsyncDataset(
        url,
        columns=["images", "masks"],
        backend=args.backend,
        shuffle=True,
        even=True,  # the same number of samples, hence steps, on every rank
        transform=to_tensors,
    )
    # anyloader.DataLoader knows every rank's layout: it warns (UnevenStepsWarning)
    # if ranks would take different numbers of steps, and its state_dict() resumes
    # on any world size (docs/distributed.md).
    loader = anyloader.DataLoader(data, batch_size=8, num_workers=args.workers)
    model = DistributedDataParallel(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.BCEWithLogitsLoss()

    for epoch in range(args.epochs):
        data.set_epoch(epoch)
        samples, total = 0, 0.0
        for images, masks in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(images), masks)
            loss.backward()
            optimizer.step()
            samples += len(images)
            total += loss.item() * len(images)
        print(
            f"rank {rank}/{dist.get_world_size()} epoch {epoch}: {samples} samples, "
            f"mean loss {total / max(samples, 1):.4f} (pid {os.getpid()})",
            flush=True,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
