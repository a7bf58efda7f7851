"""docs/recipes.md: its code is the example files' code, and every recipe does what it says."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import deeplake
import numpy as np
import pytest
import torch

import anyloader
from anyloader._sources.synthetic import read_row_id
from benchmarks import s3_server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
RECIPES = ROOT / "docs" / "recipes.md"


@pytest.fixture
def examples(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """Import an example file as a module (they import each other, as scripts do)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module


# --- the page: its code is the examples' code ----------------------------------

INCLUDE = re.compile(r"<!-- from (examples/[\w.]+) -->\n```python\n(.*?)```", re.DOTALL)


def test_every_python_block_is_a_verbatim_excerpt_of_an_example_file() -> None:
    page = RECIPES.read_text()
    included = INCLUDE.findall(page)
    assert len(included) == page.count("```python"), "a python block without an include marker"
    assert {path for path, _ in included} == {
        f"examples/{name}"
        for name in [
            "segmentation_augment.py", "detection_boxes.py", "ddp_train.py",
            "lightning_train.py", "checkpoint_resume.py", "s3_read.py",
        ]
    }  # fmt: skip
    for path, block in included:
        lines = (ROOT / path).read_text().splitlines()
        wanted = block.rstrip("\n")
        size = len(wanted.splitlines())
        excerpts = (textwrap.dedent("\n".join(lines[i : i + size])) for i in range(len(lines)))
        assert wanted in excerpts, f"docs/recipes.md quotes {path} as it is not:\n{block}"


def test_every_test_the_page_names_exists() -> None:
    page = RECIPES.read_text()
    named = set(re.findall(r"`(?:tests/(test_\w+)\.py::)?(test_\w+)`", page))
    assert len(named) >= 6
    for module, name in named:
        files = [ROOT / "tests" / f"{module}.py"] if module else [Path(__file__)]
        assert any(f"def {name}(" in f.read_text() for f in files), f"no test {name}"


def test_the_ddp_recipe_uses_anyloaders_loader_with_even_ranks() -> None:
    example = (EXAMPLES / "ddp_train.py").read_text()
    assert "loader = anyloader.DataLoader(data, " in example
    assert "even=True" in example
    assert "torch.utils.data import DataLoader" not in example


def test_the_uneven_steps_warning_is_quoted_as_anyloader_says_it() -> None:
    quoted = re.search(
        r"<!-- UnevenStepsWarning: 129 rows, 2 ranks, batch_size=32 -->\n```text\n(.*?)\n```",
        RECIPES.read_text(),
    )
    assert quoted is not None
    data = anyloader.AsyncDataset(
        anyloader.MemorySource({"x": np.arange(129)}), rank=0, world_size=2
    )
    with pytest.warns(anyloader.UnevenStepsWarning) as caught:
        iter(anyloader.DataLoader(data, batch_size=32))
    assert quoted.group(1) == f"UnevenStepsWarning: {caught[0].message}"


@pytest.mark.parametrize("page", ["README.md", "docs/guide.md"])
def test_the_recipes_page_is_linked(page: str) -> None:
    target = "docs/recipes.md" if page == "README.md" else "recipes.md"
    assert f"]({target})" in (ROOT / page).read_text()


class GeneratorMadeOnce:
    """The trap the recipe warns of: a generator made once, copied into every worker."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def __call__(self, sample: dict[str, Any]) -> tuple[int, float]:
        return int(sample["index"]), float(self.rng.random())


def test_a_generator_made_once_gives_every_worker_the_same_draws() -> None:
    data = anyloader.AsyncDataset(
        anyloader.MemorySource({"x": np.arange(8)}),
        return_index=True,
        transform=GeneratorMadeOnce(),
    )
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, num_workers=2, multiprocessing_context="fork"
    )
    draws = [draw for _, draw in loader]
    assert len(set(draws)) == 4, "2 workers, 4 rows each: the same 4 draws twice"


# --- segmentation: geometry at decode ---------------------------------------------


def by_row(loader: Any) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """One epoch: {row: (image, mask)} as HWC numpy arrays, checking each row comes once."""
    rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for batch in loader:
        for i, row in enumerate(batch["index"].tolist()):
            assert row not in rows, f"row {row} twice in an epoch"
            rows[row] = (batch["images"][i].numpy(), batch["masks"][i].numpy())
    return rows


def test_segmentation_crops_and_flips_image_and_mask_alike(
    examples: Callable[[str], ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANYLOADER_CACHE", str(tmp_path))
    seg = examples("segmentation_augment")
    url = seg.example_dataset(24)  # bright discs on dark ground, the disc in the mask
    _, loader = seg.make_loader(url, crop=32, batch_size=5, workers=0)
    epochs = [by_row(loader) for _ in range(2)]  # each iteration: the next epoch
    for rows in epochs:
        assert sorted(rows) == list(range(24)), "every row exactly once"
        for row, (image, mask) in rows.items():
            assert image.shape == (32, 32, 3)
            assert mask.shape == (32, 32, 1)
            # The same crop and flip of image and mask: bright pixels are the mask's.
            agree = np.mean((image.mean(axis=2) > 125) == mask[..., 0])
            assert agree > 0.9, f"row {row}: mask and image disagree on {1 - agree:.0%}"
    # Each epoch draws new crops.
    changed = [r for r in range(24) if not np.array_equal(epochs[0][r][0], epochs[1][r][0])]
    assert len(changed) > 20
    images, masks = seg.to_model(next(iter(loader)))
    assert images.dtype == torch.float32
    assert images.shape[1:] == (3, 32, 32)
    assert masks.shape[1:] == (1, 32, 32)


@pytest.mark.slow
def test_segmentation_crops_are_the_same_for_any_workers_batch_size_or_mode(
    examples: Callable[[str], ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANYLOADER_CACHE", str(tmp_path))
    seg = examples("segmentation_augment")
    url = seg.example_dataset(24)
    runs = {}
    for name, batch_size, workers, per_sample in [
        ("main process, batch mode", 4, 0, False),
        ("2 workers, per sample", 3, 2, True),
        ("1 worker, batch mode", 5, 1, False),
    ]:
        data, loader = seg.make_loader(
            url, crop=32, batch_size=batch_size, workers=workers, per_sample=per_sample
        )
        data.set_epoch(1)
        runs[name] = by_row(loader)
    first, *others = runs.values()
    assert sorted(first) == list(range(24))
    for name, rows in zip(list(runs)[1:], others, strict=True):
        assert sorted(rows) == sorted(first)
        for row, (image, mask) in first.items():
            assert np.array_equal(rows[row][0], image), f"{name}: row {row}'s image differs"
            assert np.array_equal(rows[row][1], mask), f"{name}: row {row}'s mask differs"


# --- detection: boxes with the geometry ----------------------------------------------


def test_detection_boxes_move_with_the_crop_and_drop_with_their_categories(
    examples: Callable[[str], ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANYLOADER_CACHE", str(tmp_path))
    det = examples("detection_boxes")
    url = det.example_dataset(30)
    stored = deeplake.open_read_only(url)
    total = sum(len(stored["categories"][i]) for i in range(30))
    loader = det.make_loader(url, size=96, batch_size=8, workers=0)
    rows = kept = 0
    for batch in loader:
        assert tuple(batch["image"].shape[1:]) == (96, 96, 3)
        for boxes, categories in zip(batch["boxes"], batch["categories"], strict=True):
            boxes = np.asarray(boxes)
            assert len(boxes) == len(categories)
            if len(boxes):  # xywh inside the output, with area
                assert (boxes[:, :2] >= 0).all()
                assert (boxes[:, 2:] > 0).all()
                assert (boxes[:, :2] + boxes[:, 2:] <= 96 + 1e-4).all()
            kept += len(boxes)
        rows += len(batch["image"])
    assert rows == 30
    assert loader.stats().boxes_dropped == total - kept
    assert kept < total  # random crops leave some boxes out


# --- checkpoint and resume in a new process ------------------------------------

CHECKPOINT_ROWS = 40


def run_example(*args: str) -> str:
    cmd = [sys.executable, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def check_stop_then_resume(
    run: Callable[[list[str]], None], url: str, tmp_path: Path, loader: str, after: list[str]
) -> None:
    """Stop after 3 steps of 4 rows with 2 workers, resume with ``after``: each epoch once."""
    checkpoint, log = tmp_path / "checkpoint.pt", tmp_path / "rows.jsonl"
    common = [str(checkpoint), url, "--loader", loader, "--epochs", "2", "--log", str(log)]

    run([*common, "--workers", "2", "--batch-size", "4", "--stop-after", "3"])
    assert len(log.read_text().splitlines()) == 3, "the first run took 3 steps"
    saved = torch.load(checkpoint)
    assert set(saved) == {"model", "optimizer", "loader", "epoch"}
    assert saved["epoch"] == 0

    run([*common, *after])
    steps = [json.loads(line) for line in log.read_text().splitlines()]
    for epoch in (0, 1):
        rows = [row for step in steps if step["epoch"] == epoch for row in step["rows"]]
        assert sorted(rows) == list(range(CHECKPOINT_ROWS)), f"epoch {epoch}: not each row once"
    resumed = [row for step in steps[3:] if step["epoch"] == 0 for row in step["rows"]]
    assert len(resumed) == CHECKPOINT_ROWS - 3 * 4, "the second run finished epoch 0 only"


@pytest.mark.slow
def test_checkpoint_resumes_in_a_new_process_with_other_workers_and_batch_size(
    make_pairs: Callable[[int], str], tmp_path: Path
) -> None:
    def run(args: list[str]) -> None:
        run_example(str(EXAMPLES / "checkpoint_resume.py"), *args)

    after = ["--workers", "1", "--batch-size", "7"]
    check_stop_then_resume(run, make_pairs(CHECKPOINT_ROWS), tmp_path, "anyloader", after)


@pytest.mark.slow
def test_checkpoint_with_stateful_dataloader_resumes_on_the_same_layout(
    make_pairs: Callable[[int], str], tmp_path: Path, examples: Callable[[str], ModuleType]
) -> None:
    main = examples("checkpoint_resume").main  # in this process: fresh objects each run
    after = ["--workers", "2", "--batch-size", "4"]
    check_stop_then_resume(main, make_pairs(CHECKPOINT_ROWS), tmp_path, "stateful", after)


# --- S3 credentials, into spawn-started DataLoader workers ----------------------

S3_ROWS = 12


@pytest.fixture(scope="module")
def s3_pairs(make_pairs: Callable[[int], str]) -> Iterator[tuple[str, str]]:
    """A 12-row image/mask dataset on moto's S3 server on 127.0.0.1: (url, endpoint_url)."""
    local = make_pairs(S3_ROWS).removeprefix("file://")
    with s3_server.serve(latency_s=0.0) as endpoint_url:
        s3_server.create_bucket(endpoint_url, "anyloader-recipes")
        s3_server.upload_tree(endpoint_url, "anyloader-recipes", "pairs", local)
        yield "s3://anyloader-recipes/pairs", endpoint_url


@pytest.mark.slow
def test_explicit_s3_creds_reach_spawn_workers(
    s3_pairs: tuple[str, str], examples: Callable[[str], ModuleType]
) -> None:
    s3 = examples("s3_read")
    url, endpoint_url = s3_pairs
    creds = {**s3_server.CREDS, "endpoint_url": endpoint_url}
    data = s3.with_explicit_creds(url, creds)
    loader = anyloader.DataLoader(data, num_workers=1, multiprocessing_context="spawn")
    rows = []
    for batch in loader:  # read by a worker that got the dataset by pickling
        for image, mask in zip(batch["images"], batch["masks"], strict=True):
            rows.append(read_row_id(image.numpy()))
            assert read_row_id(mask.numpy()) == rows[-1], "each image with its own mask"
    assert sorted(rows) == list(range(S3_ROWS))


@pytest.mark.slow
def test_s3_creds_from_the_environment_reach_spawn_workers(
    s3_pairs: tuple[str, str],
    examples: Callable[[str], ModuleType],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s3 = examples("s3_read")
    url, endpoint_url = s3_pairs
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.CREDS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.CREDS["aws_secret_access_key"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint_url)  # the workers inherit the environment
    s3.main([url, "--workers", "1"])
    assert f"{S3_ROWS} rows of {S3_ROWS} read from {url}" in capsys.readouterr().out
