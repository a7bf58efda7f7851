"""Command line: ``anyloader demo [URL]`` and ``anyloader profile [URL]``."""

from __future__ import annotations

import argparse
import sys

from ._options import BACKENDS, DECODERS

__all__ = ["main"]


def _add_dataset_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("url", nargs="?", help=f"deeplake dataset URL (default: {default})")
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anyloader", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="stream one epoch through a torch DataLoader and check exactly-once delivery",
    )
    _add_dataset_arguments(demo, "a generated image/mask dataset")
    demo.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--rows", type=int, default=512, help="rows of the generated dataset")
    demo.add_argument(
        "--size",
        type=int,
        default=256,
        help="side of the random crops (the generated images are 5/8 to 5/4 of it)",
    )
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    profile = commands.add_parser(
        "profile",
        help="run one epoch, show where the time went and whether training waits for data",
    )
    _add_dataset_arguments(profile, "the demo's generated dataset")
    profile.add_argument(
        "--concurrency", type=int, help="fetch requests in flight (default: the loader's choice)"
    )
    profile.add_argument(
        "--fetch-size", type=int, help="rows per fetch request (default: the loader's choice)"
    )
    profile.add_argument("--columns", help="comma-separated columns to read (default: all)")
    shape = profile.add_mutually_exclusive_group()
    shape.add_argument(
        "--crop", type=int, metavar="N", help="geometry: a random-resized crop to N x N and a flip"
    )
    shape.add_argument("--resize", type=int, metavar="N", help="geometry: a resize to N x N")
    profile.add_argument("--batch-size", type=int, default=32)
    profile.add_argument(
        "--per-sample",
        action="store_true",
        help="yield samples and let the DataLoader collate them (default: batch mode)",
    )
    profile.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    profile.add_argument("--decode", choices=DECODERS, default="auto")
    profile.add_argument(
        "--shuffle", action=argparse.BooleanOptionalAction, default=True, help="seeded shuffle"
    )
    profile.add_argument("--unordered", action="store_true", help="ordered=False")
    profile.add_argument(
        "--step-ms",
        type=float,
        default=0.0,
        help="simulated training step per batch, in ms (sleeps; 0: no training at all)",
    )
    profile.add_argument("--png", default="anyloader-profile.png", help="where to write the figure")
    profile.add_argument("--rows", type=int, default=512, help="rows of the generated dataset")
    profile.add_argument("--size", type=int, default=256, help="side of the generated images")
    profile.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _profile(args: argparse.Namespace) -> int:
    from ._advice import breakdown
    from ._demo import demo_dataset
    from ._profile import ProfileSettings, plot_profile, run_profile

    url = demo_dataset(args.rows, args.size) if args.url is None else args.url
    settings = ProfileSettings(
        backend=args.backend,
        concurrency=args.concurrency,
        fetch_size=args.fetch_size,
        batch_size=args.batch_size,
        batch_mode=not args.per_sample,
        workers=args.workers,
        decode=args.decode,
        shuffle=args.shuffle,
        ordered=not args.unordered,
        step_ms=args.step_ms,
        columns=tuple(args.columns.split(",")) if args.columns else None,
        geometry=(
            f"crop {args.crop}" if args.crop else f"resize {args.resize}" if args.resize else None
        ),
    )
    print(f"dataset  {url}")
    result = run_profile(url, settings, progress=not args.no_progress)
    print(f"settings {result.settings.describe()}")  # with what the loader chose
    print(
        f"epoch    {result.rows:,} rows in {result.seconds:.2f} s = "
        f"{result.rows_per_second:,.0f} rows/s; first batch after {result.startup:.2f} s"
    )
    for line in breakdown(result.stats):
        print(line)
    print(f"verdict  {result.verdict}")
    try:
        plot_profile(result, args.png)
    except ImportError:
        print("figure   not drawn: matplotlib is not installed (pip install matplotlib)")
        return 0
    print(f"figure   {args.png}")
    return 0


def _check(args: argparse.Namespace) -> None:
    """Refuse bad arguments before anything runs, as the loader itself would.

    Raises:
        TypeError, ValueError: naming the argument (or the URL that does not open).
    """
    from ._core.checks import non_negative_int, positive_int
    from ._options import Options

    non_negative_int("--workers", args.workers)
    positive_int("--batch-size", args.batch_size)
    if args.url is None:
        non_negative_int("--rows", args.rows)
        if args.size < 16:
            raise ValueError(
                f"--size must be >= 16 (the generated scenes need room), got {args.size}"
            )
    if args.command == "profile":
        Options.validate(concurrency=args.concurrency, fetch_size=args.fetch_size)
        for name in ("crop", "resize"):
            if getattr(args, name) is not None:
                positive_int(f"--{name}", getattr(args, name))
        if args.step_ms < 0:
            raise ValueError(f"--step-ms must be >= 0, got {args.step_ms}")
    if args.url is not None:
        from ._sources.deeplake import DeeplakeSource

        DeeplakeSource(args.url)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status.

    1 if the exactly-once check fails; 2, with one line on stderr, for a bad
    argument or a dataset that does not open (as argparse does for its own).
    """
    args = _parser().parse_args(argv)
    try:
        _check(args)
    except (TypeError, ValueError) as exc:
        message = " ".join(str(exc).split())
        print(f"anyloader: error: {message}", file=sys.stderr)
        return 2
    if args.command == "profile":
        return _profile(args)
    from ._advice import breakdown
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
        size=args.size,
        pairs=generated,
        progress=not args.no_progress,
    )
    print(
        f"rows     {result.rows} in {result.seconds:.2f} s = {result.rows_per_second:,.0f} rows/s"
    )
    print(f"first    batch after {result.first_batch_seconds * 1000:.0f} ms")
    print("stages   where the time went (docs/stats.md):")
    for line in breakdown(result.stats):
        print(f"  {line}")
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
            "check    every image with its own mask, cropped alike: "
            f"{'PASS' if pairs_ok else 'FAIL'} "
            f"({result.mismatched_pairs} mismatched)"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
