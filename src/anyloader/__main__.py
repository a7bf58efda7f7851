"""Command line: ``anyloader demo [URL] [--backend trio] [--workers N]``."""

from __future__ import annotations

import argparse
import sys

from ._options import BACKENDS

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anyloader", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="stream one epoch through a torch DataLoader and check exactly-once delivery",
    )
    demo.add_argument(
        "url", nargs="?", help="deeplake dataset URL (default: a generated image/mask dataset)"
    )
    demo.add_argument("--backend", choices=BACKENDS, default="asyncio")
    demo.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--rows", type=int, default=512, help="rows of the generated dataset")
    demo.add_argument("--size", type=int, default=256, help="side of the generated images")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (1 if the exactly-once check fails)."""
    args = _parser().parse_args(argv)
    from ._demo import demo_dataset, run_demo

    generated = args.url is None
    url = demo_dataset(args.rows, args.size) if generated else args.url
    print(f"dataset  {url}")
    print(
        f"loader   AsyncDataset(backend={args.backend!r}) in DataLoader(num_workers={args.workers})"
    )
    result = run_demo(
        url,
        backend=args.backend,
        num_workers=args.workers,
        batch_size=args.batch_size,
        pairs=generated,
        progress=not args.no_progress,
    )
    print(
        f"rows     {result.rows} in {result.seconds:.2f} s = {result.rows_per_second:,.0f} rows/s"
    )
    print(f"first    batch after {result.first_batch_seconds * 1000:.0f} ms")
    verdict = "PASS" if result.exactly_once else "FAIL"
    print(
        f"check    exactly once: {verdict} ({result.expected} expected, "
        f"{result.duplicates} duplicated, {result.missing} missing)"
    )
    ok = result.exactly_once
    if result.mismatched_pairs is not None:
        pairs_ok = result.mismatched_pairs == 0
        ok = ok and pairs_ok
        print(
            f"check    every image with its own mask: {'PASS' if pairs_ok else 'FAIL'} "
            f"({result.mismatched_pairs} mismatched)"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
