"""Decode microbenchmark: CPU ms per image, deeplake's decode against ours.

Usage::

    .venv/bin/python -m benchmarks.decode [--rows 64] [--repeats 7] [--png-rows 16]
        [--cache-dir benchmarks/results/cache] [--json PATH]

Image sets (512x512, each a deeplake dataset cached under ``--cache-dir``):
``synthetic`` is the benchmark dataset of ``benchmarks.datasets`` (gradients,
ellipses, grain, JPEG written by deeplake); ``photo`` is crops of matplotlib's
``grace_hopper.jpg`` sample photo, also written by deeplake as JPEG (skipped when
matplotlib is not installed). Every decoder decodes the bytes of
``Column.get_bytes``; deeplake's own decode is ``Column.get_async(rows)`` (32 rows
a request) and ``column[i]`` (a row at a time); ``get_bytes`` alone shows what
reading the bytes costs.

Figures are CPU time of the whole process (``time.process_time``: deeplake's own
threads count too) per image, median over ``--repeats`` passes over the set, the
decoders rotating order between passes. deeplake caches chunks after the first
pass, so its figure is decode plus a cache hit, like ours. "max diff" is the
largest pixel difference to deeplake's decode on the set (0: identical).
The thread table gives wall-clock rows/s in 1 and 2 threads: a decoder that
holds the GIL cannot go faster with 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import deeplake
import numpy as np
import simplejpeg

from anyloader._decode.jpeg import SimpleJpegDecoder, decode_column_bytes

from . import datasets
from .runner import DEFAULT_CACHE

__all__ = ["main", "measure"]

SIZE = 512
CHUNK = 32  # rows per deeplake request: what a batch-mode fetch asks for
Decode = Callable[[list[bytes]], list[np.ndarray]]


def _photo_crops(rows: int) -> list[np.ndarray]:
    """``rows`` different 512x512 crops of a real photo (flips double the variety)."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo = np.asarray(Image.open(f).convert("RGB"))
    height, width = photo.shape[:2]  # 600 x 512
    crops = []
    for i in range(rows):
        top = (i * 7) % (height - SIZE + 1)
        left = (i * 3) % (width - SIZE + 1)
        crop = photo[top : top + SIZE, left : left + SIZE]
        crops.append(np.ascontiguousarray(crop[:, ::-1] if i % 2 else crop))
    return crops


def _cached(cache_dir: Path, name: str, build: Callable[[str], None]) -> str:
    """URL of a dataset built once by ``build(url)`` and renamed into place when complete."""
    path = cache_dir / name
    if not path.is_dir():
        partial = path.with_name(name + ".partial")
        if partial.exists():
            import shutil

            shutil.rmtree(partial)
        cache_dir.mkdir(parents=True, exist_ok=True)
        build(f"file://{partial}")
        partial.rename(path)
    return f"file://{path}"


def _image_dataset(arrays: list[np.ndarray], compression: str) -> Callable[[str], None]:
    def build(url: str) -> None:
        ds = deeplake.create(url)
        ds.add_column("images", deeplake.types.Image(sample_compression=compression))
        ds.append({"images": arrays})
        ds.commit()

    return build


def _cpu_ms(fn: Callable[[], object], images: int) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) * 1e3 / images


def _deeplake_get(column: Any, rows: list[int]) -> Callable[[], object]:
    def run() -> None:
        for start in range(0, len(rows), CHUNK):
            column.get_async(rows[start : start + CHUNK]).result()

    return run


def _candidates(blobs: list[bytes]) -> dict[str, tuple[Decode, bool]]:
    """name -> (decode all blobs, must equal deeplake's pixels)."""
    ours = SimpleJpegDecoder()
    first = simplejpeg.decode_jpeg_header(blobs[0])
    batch = np.empty((len(blobs), first[0], first[1], 3), np.uint8)

    def sj(kw: dict[str, Any]) -> Decode:
        return lambda bs: [simplejpeg.decode_jpeg(b, **kw) for b in bs]

    def sj_into_batch(bs: list[bytes]) -> list[np.ndarray]:
        return [simplejpeg.decode_jpeg(b, buffer=batch[i]) for i, b in enumerate(bs)]

    def sj_then_copy(bs: list[bytes]) -> list[np.ndarray]:
        for i, b in enumerate(bs):
            batch[i] = simplejpeg.decode_jpeg(b)
        return list(batch)

    def column_bytes(bs: list[bytes]) -> list[np.ndarray]:
        return [a for a in decode_column_bytes(bs).arrays if a is not None]

    def column_bytes_out(bs: list[bytes]) -> list[np.ndarray]:
        return [a for a in decode_column_bytes(bs, out=batch).arrays if a is not None]

    def reduced(r: Any) -> Decode:
        return lambda bs: [ours.decode(b, reduce=r) for b in bs]

    found: dict[str, tuple[Decode, bool]] = {
        "simplejpeg": (sj({}), True),
        "simplejpeg, into batch (buffer=)": (sj_into_batch, True),
        "simplejpeg, then copy into batch": (sj_then_copy, True),
        "anyloader decode_column_bytes": (column_bytes, True),
        "anyloader decode_column_bytes(out=batch)": (column_bytes_out, True),
        "simplejpeg fastdct+fastupsample": (sj({"fastdct": True, "fastupsample": True}), False),
        "anyloader reduce=2 (1/2 DCT scale)": (reduced(2), False),
        "anyloader reduce=4 (1/4 DCT scale)": (reduced(4), False),
        "anyloader reduce=8 (1/8 DCT scale)": (reduced(8), False),
    }
    try:
        import imagecodecs

        def ic_into_batch(bs: list[bytes]) -> list[np.ndarray]:
            return [imagecodecs.jpeg8_decode(b, out=batch[i]) for i, b in enumerate(bs)]

        found["imagecodecs"] = (lambda bs: [imagecodecs.jpeg8_decode(b) for b in bs], True)
        found["imagecodecs, into batch (out=)"] = (ic_into_batch, True)
    except ImportError:
        pass
    try:
        import io

        from PIL import Image

        found["Pillow"] = (lambda bs: [np.asarray(Image.open(io.BytesIO(b))) for b in bs], True)
    except ImportError:
        pass
    return found


def _max_diff(ours: list[np.ndarray], theirs: list[np.ndarray]) -> int | None:
    if any(a.shape != b.shape for a, b in zip(ours, theirs, strict=True)):
        return None
    return max(int(np.abs(a.astype(np.int16) - b).max()) for a, b in zip(ours, theirs, strict=True))


def _measure_set(url: str, repeats: int) -> list[dict[str, Any]]:
    ds = deeplake.open_read_only(url)
    column = ds["images"]
    rows = list(range(len(ds)))
    blobs: list[bytes] = column.get_bytes(rows)
    reference = [np.asarray(column[i]) for i in rows]
    candidates = _candidates(blobs)

    runs: dict[str, Callable[[], object]] = {
        "deeplake get_async (32 rows a request)": _deeplake_get(column, rows),
        "deeplake column[i] (a row at a time)": lambda: [column[i] for i in rows],
        "deeplake get_bytes (read only, no decode)": lambda: column.get_bytes(rows),
    }
    for name, (decode, _) in candidates.items():
        runs[name] = lambda decode=decode: decode(blobs)
    diffs = {name: _max_diff(decode(blobs), reference) for name, (decode, _) in candidates.items()}

    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(_cpu_ms(runs[name], len(rows)))
    base = statistics.median(times[names[0]])
    return [
        {
            "decoder": name,
            "ms_per_image": statistics.median(times[name]),
            "vs_deeplake": base / statistics.median(times[name]),
            "max_diff": diffs.get(name, 0),
            "identical_required": candidates[name][1] if name in candidates else True,
            "runs": times[name],
        }
        for name in names
    ]


def _threads(url: str, repeats: int) -> list[dict[str, Any]]:
    ds = deeplake.open_read_only(url)  # keep a reference: columns die with their dataset
    blobs: list[bytes] = ds["images"].get_bytes(list(range(min(32, len(ds)))))
    work = blobs * 4
    ours = SimpleJpegDecoder()
    decoders: dict[str, Callable[[bytes], object]] = {"simplejpeg (anyloader)": ours.decode}
    try:
        import imagecodecs

        decoders["imagecodecs"] = imagecodecs.jpeg8_decode
    except ImportError:
        pass
    try:
        import io

        from PIL import Image

        decoders["Pillow"] = lambda b: np.asarray(Image.open(io.BytesIO(b)))
    except ImportError:
        pass
    result = []
    for name, decode in decoders.items():
        rates: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(repeats):
            for threads in (1, 2):
                with ThreadPoolExecutor(threads) as pool:
                    start = time.perf_counter()
                    list(pool.map(decode, work))
                    rates[threads].append(len(work) / (time.perf_counter() - start))
        one, two = statistics.median(rates[1]), statistics.median(rates[2])
        result.append({"decoder": name, "rows_s_1": one, "rows_s_2": two, "speedup": two / one})
    return result


def _png(cache_dir: Path, rows: int, repeats: int, photos: bool) -> list[dict[str, Any]]:
    import io

    from PIL import Image

    from anyloader._sources.synthetic import make_pair

    sets = {"synthetic": [make_pair(i, SIZE)[0] for i in range(rows)]}
    if photos:
        sets["photo"] = _photo_crops(rows)
    result = []
    for name, arrays in sets.items():
        url = _cached(cache_dir, f"png-{name}-{rows}x{SIZE}", _image_dataset(arrays, "png"))
        ds = deeplake.open_read_only(url)
        column = ds["images"]
        indices = list(range(rows))
        blobs: list[bytes] = column.get_bytes(indices)
        pillow = [np.asarray(Image.open(io.BytesIO(b))) for b in blobs]
        identical = all(np.array_equal(p, column[i]) for i, p in enumerate(pillow))
        runs: dict[str, Callable[[], object]] = {
            "deeplake get_async": _deeplake_get(column, indices),
            "Pillow": lambda blobs=blobs: [np.asarray(Image.open(io.BytesIO(b))) for b in blobs],
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for repeat in range(repeats):
            for key in list(runs)[repeat % 2 :] + list(runs)[: repeat % 2]:
                times[key].append(_cpu_ms(runs[key], rows))
        result.append(
            {
                "set": name,
                "bytes_per_image": statistics.mean(len(b) for b in blobs),
                "deeplake_ms": statistics.median(times["deeplake get_async"]),
                "pillow_ms": statistics.median(times["Pillow"]),
                "pillow_identical": identical,
            }
        )
    return result


def measure(cache_dir: Path, rows: int, repeats: int, png_rows: int) -> dict[str, Any]:
    """Every table of the report, as data."""
    sets = {"synthetic": f"file://{datasets.local_dataset(cache_dir, rows, SIZE)}"}
    try:
        crops = _photo_crops(rows)
    except ImportError:
        crops = []
    if crops:
        sets["photo"] = _cached(cache_dir, f"photo-{rows}x{SIZE}", _image_dataset(crops, "jpeg"))
    return {
        "rows": rows,
        "repeats": repeats,
        "jpeg": {name: _measure_set(url, repeats) for name, url in sets.items()},
        "threads": _threads(sets["synthetic"], repeats),
        "png": _png(cache_dir, png_rows, repeats, photos=bool(crops)) if png_rows else [],
    }


def markdown(result: dict[str, Any]) -> str:
    sets = list(result["jpeg"])
    lines = [
        f"JPEG {SIZE}x{SIZE}, {result['rows']} images per set, CPU ms per image, "
        f"median of {result['repeats']} passes; x = deeplake get_async time / this time.",
        "",
        "| decoder | " + " | ".join(f"{s} ms | {s} x | {s} max diff" for s in sets) + " |",
        "|---|" + "---:|" * (3 * len(sets)),
    ]
    for i, row in enumerate(result["jpeg"][sets[0]]):
        cells = []
        for s in sets:
            r = result["jpeg"][s][i]
            diff = "-" if r["max_diff"] is None else str(r["max_diff"])
            if r["decoder"].startswith("deeplake"):
                diff = ""
            elif r["max_diff"] is None:
                diff = "smaller"
            cells += [f"{r['ms_per_image']:.3f}", f"{r['vs_deeplake']:.2f}", diff]
        lines.append(f"| {row['decoder']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Wall-clock rows/s decoding the synthetic set in a thread pool (GIL released?):",
        "",
        "| decoder | 1 thread | 2 threads | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for r in result["threads"]:
        lines.append(
            f"| {r['decoder']} | {r['rows_s_1']:.0f} | {r['rows_s_2']:.0f} | {r['speedup']:.2f} |"
        )
    if result["png"]:
        lines += [
            "",
            "PNG 512x512 (deeplake-written), CPU ms per image:",
            "",
            "| set | bytes/image | deeplake | Pillow | Pillow identical |",
            "|---|---:|---:|---:|---|",
        ]
        for r in result["png"]:
            lines.append(
                f"| {r['set']} | {r['bytes_per_image']:.0f} | {r['deeplake_ms']:.3f} "
                f"| {r['pillow_ms']:.3f} | {r['pillow_identical']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.decode", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, default=64, help="images per set (default 64)")
    parser.add_argument("--repeats", type=int, default=7, help="passes per decoder (default 7)")
    parser.add_argument("--png-rows", type=int, default=16, help="PNG images; 0 skips PNG")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="dataset cache")
    parser.add_argument("--json", type=Path, help="also write the raw result here")
    args = parser.parse_args(argv)
    result = measure(args.cache_dir, args.rows, args.repeats, args.png_rows)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
