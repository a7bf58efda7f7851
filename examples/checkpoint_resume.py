"""Checkpoint model, optimizer and loader together; resume mid-epoch in a new process.

    python examples/checkpoint_resume.py CHECKPOINT [URL] [--stop-after 5] [--workers 2]

Run it, stop it (``--stop-after N`` stands for a preemption: the job saves
after step N and exits), run it again with the same CHECKPOINT: it resumes
the epoch where it stopped. ``anyloader.DataLoader`` (the default) resumes on
any layout, so the second run may use another ``--workers`` or
``--batch-size``; ``--loader stateful`` uses torchdata's ``StatefulDataLoader``,
which resumes on the same layout only. With ``--log`` every step appends the
rows it trained on to a JSON-lines file.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
from ddp_train import example_dataset, to_tensors  # the demo data and its conversion
from torch import nn
from torchdata.stateful_dataloader import StatefulDataLoader

import anyloader


def make_loader(
    data: anyloader.AsyncDataset, kind: str, *, batch_size: int, workers: int
) -> anyloader.DataLoader | StatefulDataLoader:
    """A loader whose ``state_dict()`` is the loader part of the checkpoint."""
    if kind == "stateful":  # torchdata: resumes on the same layout only
        return StatefulDataLoader(data, batch_size=batch_size, num_workers=workers)
    return anyloader.DataLoader(data, batch_size=batch_size, num_workers=workers)


def with_index(sample: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
    image, mask = to_tensors(sample)
    return image, mask, int(sample["index"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", type=Path, help="read if it exists, written while training")
    parser.add_argument("url", nargs="?", help="dataset URL (default: the demo dataset)")
    parser.add_argument("--loader", choices=["anyloader", "stateful"], default="anyloader")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--save-every", type=int, default=20, help="steps between checkpoints")
    parser.add_argument("--stop-after", type=int, help="save and exit after this many steps")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--log", type=Path, help="append each step's rows to this file")
    args = parser.parse_args(argv)

    url = args.url or example_dataset(args.rows, args.size)
    data = anyloader.AsyncDataset(
        url, columns=["images", "masks"], shuffle=True, seed=0, return_index=True,
        transform=with_index,
    )  # fmt: skip
    loader = make_loader(data, args.loader, batch_size=args.batch_size, workers=args.workers)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.BCEWithLogitsLoss()

    start = 0
    if args.checkpoint.exists():
        checkpoint = torch.load(args.checkpoint)  # plain dicts, lists and numbers: weights_only
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        loader.load_state_dict(checkpoint["loader"])  # the rest of the saved epoch comes next
        start = checkpoint["epoch"]

    def save(epoch: int) -> None:
        checkpoint = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "loader": loader.state_dict(),
            "epoch": epoch,
        }
        torch.save(checkpoint, f"{args.checkpoint}.tmp")
        os.replace(f"{args.checkpoint}.tmp", args.checkpoint)  # never a half-written checkpoint

    steps = 0
    for epoch in range(start, args.epochs):
        data.set_epoch(epoch)  # the saved epoch keeps the loaded state: it resumes, not restarts
        for images, masks, rows in loader:
            optimizer.zero_grad()
            loss_fn(model(images), masks).backward()
            optimizer.step()
            steps += 1
            if args.log is not None:
                with args.log.open("a") as log:
                    log.write(json.dumps({"epoch": epoch, "rows": rows.tolist()}) + "\n")
            if steps == args.stop_after:
                save(epoch)
                print(f"stopped after {steps} steps in epoch {epoch}", flush=True)
                return
            if steps % args.save_every == 0:
                save(epoch)
        print(f"epoch {epoch} done ({steps} steps in this process)", flush=True)
    save(args.epochs)


if __name__ == "__main__":
    main()
