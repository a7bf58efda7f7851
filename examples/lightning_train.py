"""Train a tiny segmentation model with PyTorch Lightning's DDP over an anyloader DataModule.

    python examples/lightning_train.py [URL] [--epochs 2] [--workers 2] [--out DIR]

Run it as a plain script: ``Trainer(strategy="ddp", devices=2)`` starts the second
rank by re-running this script with ``LOCAL_RANK=1``. Each rank reads its own
share of every epoch (``even=True``: the same number of samples, hence steps, on
every rank, so DDP's gradient all-reduce never waits for a rank that has run
out), and each new epoch is reshuffled without a ``set_epoch`` call. With
``--out`` every rank writes, per epoch, the dataset rows it trained on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from ddp_train import example_dataset  # the same demo data, made with deeplake's own API
from torch import nn

import anyloader


def to_tensors(sample: dict[str, Any]) -> dict[str, Any]:
    return {
        "image": torch.from_numpy(sample["images"]).permute(2, 0, 1).float().div_(255),
        "mask": torch.from_numpy(sample["masks"]).permute(2, 0, 1).float(),
        "index": sample["index"],  # the dataset row, recorded by RowRecorder
    }


class SegmentationData(L.LightningDataModule):
    """Image/mask pairs streamed by ``anyloader.AsyncDataset``, sharded by rank and worker."""

    def __init__(
        self, url: str | None, *, rows: int, size: int, batch_size: int, workers: int, backend: str
    ) -> None:
        super().__init__()
        self.url, self.rows, self.size = url, rows, size
        self.batch_size, self.workers, self.backend = batch_size, workers, backend

    def prepare_data(self) -> None:
        # Lightning calls this in one process per node, and the other ranks wait
        # for it: the demo dataset is built once, before anyone reads it.
        if self.url is None:
            example_dataset(self.rows, self.size)

    def setup(self, stage: str) -> None:
        # Every rank builds its dataset; AsyncDataset takes its rank from the
        # process group Lightning has started by now, when an epoch starts.
        self.dataset_url = self.url or example_dataset(self.rows, self.size)
        self.train_set = anyloader.AsyncDataset(
            self.dataset_url,
            columns=["images", "masks"],
            backend=self.backend,
            shuffle=True,
            even=True,
            return_index=True,
            transform=to_tensors,
        )

    def train_dataloader(self) -> anyloader.DataLoader:
        # anyloader.DataLoader's len is the number of batches each rank really
        # yields (every worker ends its share with its own short batch), which
        # Lightning runs per epoch; torch's own DataLoader would undercount.
        return anyloader.DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            num_workers=self.workers,
            # Workers live across epochs; each new iteration still reads the next epoch.
            persistent_workers=self.workers > 0,
        )


class SegmentationHead(L.LightningModule):
    """Two 3x3 convolutions predicting the mask from the image."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1)
        )
        self.loss_fn = nn.BCEWithLogitsLoss()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss: torch.Tensor = self.loss_fn(self.net(batch["image"]), batch["mask"])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RowRecorder(L.Callback):
    """Prints, and with ``out`` writes, the rows and steps of each rank's epoch."""

    def __init__(self, data: SegmentationData, out: Path | None) -> None:
        self.data, self.out = data, out
        self.rows: list[int] = []
        self.steps = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows, self.steps = [], 0

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict[str, torch.Tensor],
        batch_idx: int,
    ) -> None:
        self.rows += batch["index"].tolist()
        self.steps += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rank, epoch = trainer.global_rank, trainer.current_epoch
        dataset = self.data.train_set
        print(
            f"rank {rank}/{trainer.world_size} epoch {epoch}: {len(self.rows)} samples "
            f"in {self.steps} steps (the rank's share: {len(dataset)})",
            flush=True,
        )
        if self.out is not None:
            record = {
                "rank": rank,
                "epoch": epoch,
                "rows": self.rows,
                "steps": self.steps,
                "length": len(dataset),
                "url": self.data.dataset_url,
            }
            (self.out / f"rank{rank}-epoch{epoch}.json").write_text(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", nargs="?", help="dataset URL (default: the demo dataset)")
    parser.add_argument("--backend", default="asyncio", choices=anyloader.BACKENDS)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", type=Path, help="write each rank's rows per epoch here")
    args = parser.parse_args()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)

    data = SegmentationData(
        args.url,
        rows=args.rows,
        size=args.size,
        batch_size=args.batch_size,
        workers=args.workers,
        backend=args.backend,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",  # gloo on CPU; MASTER_ADDR/MASTER_PORT are read from the environment
        max_epochs=args.epochs,
        # anyloader shards by rank itself (Lightning leaves iterable datasets alone anyway).
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RowRecorder(data, args.out)],
    )
    trainer.fit(SegmentationHead(), datamodule=data)


if __name__ == "__main__":
    main()
