"""Stream a deeplake dataset from S3 or an S3-compatible store, in spawn-started DataLoader workers.

    AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... python examples/s3_read.py s3://bucket/path
    python examples/s3_read.py s3://bucket/path --creds-file creds.json   # explicit creds

Without ``--creds-file`` deeplake takes the credentials (and ``AWS_ENDPOINT_URL``
for an S3-compatible store) from the environment, in every process. With it,
the JSON object is deeplake's ``creds`` dict, passed explicitly. Either way
each DataLoader worker reads the store itself, so each needs the credentials:
spawn workers (``--workers``, started with ``spawn``) show that they arrive.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anyloader


def with_explicit_creds(url: str, creds: dict[str, str]) -> anyloader.AsyncDataset:
    # creds = {"aws_access_key_id": ..., "aws_secret_access_key": ...,
    #          "aws_region": "us-east-1",                     # optional
    #          "endpoint_url": "http://127.0.0.1:9000"}       # S3-compatible stores only
    source = anyloader.DeeplakeSource(url, creds=creds)  # opened now: bad creds fail here
    return anyloader.AsyncDataset(source, columns=["images", "masks"], batch_size=8)


def with_environment(url: str) -> anyloader.AsyncDataset:
    # deeplake reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL
    return anyloader.AsyncDataset(url, columns=["images", "masks"], batch_size=8)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", help="s3://bucket/path of a dataset with images and masks")
    parser.add_argument("--creds-file", type=Path, help="a JSON object of deeplake creds")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    if args.creds_file is not None:
        data = with_explicit_creds(args.url, json.loads(args.creds_file.read_text()))
    else:
        data = with_environment(args.url)
    context = "spawn" if args.workers > 0 else None  # each worker unpickles the dataset
    loader = anyloader.DataLoader(data, num_workers=args.workers, multiprocessing_context=context)
    rows = sum(len(batch["images"]) for batch in loader)
    print(f"{rows} rows of {len(data)} read from {args.url}", flush=True)


if __name__ == "__main__":
    main()
