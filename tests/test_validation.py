"""Bad inputs fail at once, with the right exception type and a message naming the argument.

One table per entry point; every shared option goes through both
``AsyncDataset`` and ``open_stream``. Each row: the keyword arguments, the
exception type, and a string the message must contain (the argument's name,
or for an unknown column the columns that do exist).
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from anyloader import AsyncDataset, MemorySource, RetryPolicy, open_stream

pytestmark = pytest.mark.anyio

BAD_BOOLS = [1, "yes", None]
BAD_POSITIVE = [(0, ValueError), (-1, ValueError), (1.5, TypeError), ("4", TypeError)]
BAD_POSITIVE += [(True, TypeError), (None, TypeError)]

# (argument, bad value, exception, text the message must contain)
SHARED: list[tuple[str, object, type[Exception], str]] = [
    ("columns", "images", TypeError, "columns"),
    ("columns", 5, TypeError, "columns"),
    ("columns", ["nope"], ValueError, "['images', 'masks']"),
    ("columns", ["images", "nope"], ValueError, "'nope'"),
    ("columns", [], ValueError, "no columns"),
    ("columns", ["images", "images"], ValueError, "columns"),
    *[(name, v, e, name) for name in ("prefetch",) for v, e in BAD_POSITIVE],
    # None is their default (the loader's choice); any other non-positive is refused.
    *[
        (name, v, e, name)
        for name in ("concurrency", "fetch_size")
        for v, e in BAD_POSITIVE
        if v is not None
    ],
    *[
        (name, v, TypeError, name)
        for name in ("shuffle", "ordered", "return_index", "even")
        for v in BAD_BOOLS
    ],
    ("seed", -1, ValueError, "seed"),
    ("seed", 1.0, TypeError, "seed"),
    ("seed", "0", TypeError, "seed"),
    ("seed", True, TypeError, "seed"),
    ("seed", None, TypeError, "seed"),
    ("transform", 3, TypeError, "transform"),
    ("transform", "upper", TypeError, "transform"),
    ("retries", -1, ValueError, "retries"),
    ("retries", 1.5, TypeError, "retries"),
    ("retries", None, TypeError, "retries"),
    ("retries", False, TypeError, "retries"),
    ("timeout", 0, ValueError, "timeout"),
    ("timeout", -1.0, ValueError, "timeout"),
    ("timeout", math.nan, ValueError, "timeout"),
    ("timeout", "1", TypeError, "timeout"),
    ("timeout", True, TypeError, "timeout"),
    ("backoff", -0.5, ValueError, "backoff"),
    ("backoff", "fast", TypeError, "backoff"),
    ("max_backoff", math.nan, ValueError, "max_backoff"),
    ("max_backoff", None, TypeError, "max_backoff"),
    ("retry_if", 3, TypeError, "retry_if"),
    ("retry_if", "ConnectionError", TypeError, "retry_if"),
    ("return_index", True, ValueError, "index"),  # with a column named "index" (see below)
]

DATASET_ONLY: list[tuple[dict[str, object], type[Exception], str]] = [
    ({"backend": "curio"}, ValueError, "backend"),
    ({"backend": "Trio"}, ValueError, "backend"),
    ({"backend": None}, TypeError, "backend"),
    ({"backend": 3}, TypeError, "backend"),
    ({"rank": 1}, ValueError, "world_size"),
    ({"world_size": 2}, ValueError, "rank"),
    ({"rank": 2, "world_size": 2}, ValueError, "rank"),
    ({"rank": -1, "world_size": 2}, ValueError, "rank"),
    ({"rank": 0, "world_size": 0}, ValueError, "world_size"),
    ({"rank": 1.0, "world_size": 2}, TypeError, "rank"),
    ({"rank": 0, "world_size": "2"}, TypeError, "world_size"),
    ({"nonsense": 1}, TypeError, "nonsense"),
]

STREAM_ONLY: list[tuple[dict[str, object], type[Exception], str]] = [
    ({"epoch": -1}, ValueError, "epoch"),
    ({"epoch": 1.5}, TypeError, "epoch"),
    ({"epoch": None}, TypeError, "epoch"),
    ({"start": -1}, ValueError, "start"),
    ({"start": "0"}, TypeError, "start"),
    ({"shard": 3}, TypeError, "shard"),
    ({"shard": (0, 1)}, TypeError, "shard"),
    ({"nonsense": 1}, TypeError, "nonsense"),
]


def _id(case: tuple[Any, ...]) -> str:
    return "-".join(str(part if not isinstance(part, type) else part.__name__) for part in case)


def _source_for(name: str, pairs_url: str) -> object:
    if name == "return_index":
        return MemorySource({"index": [1, 2, 3], "x": [4, 5, 6]})
    return pairs_url


@pytest.mark.parametrize(("name", "value", "exc", "text"), SHARED, ids=map(_id, SHARED))
def test_async_dataset_rejects(
    pairs_url: str, name: str, value: object, exc: type[Exception], text: str
) -> None:
    with pytest.raises(exc, match=re.escape(text)):
        AsyncDataset(_source_for(name, pairs_url), **{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "value", "exc", "text"), SHARED, ids=map(_id, SHARED))
async def test_open_stream_rejects(
    pairs_url: str, name: str, value: object, exc: type[Exception], text: str
) -> None:
    with pytest.raises(exc, match=re.escape(text)):
        async with open_stream(_source_for(name, pairs_url), **{name: value}):  # type: ignore[misc]
            pytest.fail("the stream must not start")


@pytest.mark.parametrize(("kwargs", "exc", "text"), DATASET_ONLY, ids=map(_id, DATASET_ONLY))
def test_async_dataset_rejects_its_own_arguments(
    pairs_url: str, kwargs: dict[str, Any], exc: type[Exception], text: str
) -> None:
    with pytest.raises(exc, match=re.escape(text)):
        AsyncDataset(pairs_url, **kwargs)


@pytest.mark.parametrize(("kwargs", "exc", "text"), STREAM_ONLY, ids=map(_id, STREAM_ONLY))
async def test_open_stream_rejects_its_own_arguments(
    pairs_url: str, kwargs: dict[str, Any], exc: type[Exception], text: str
) -> None:
    with pytest.raises(exc, match=re.escape(text)):
        async with open_stream(pairs_url, **kwargs):
            pytest.fail("the stream must not start")


@pytest.mark.parametrize(
    ("bad", "exc", "text"),
    [
        (42, TypeError, "int"),
        (None, TypeError, "NoneType"),
        (object(), TypeError, "source"),
        ({"images": [1, 2]}, TypeError, "dict"),  # a mapping is not a Source
        (b"file:///tmp/x", TypeError, "bytes"),
    ],
    ids=["int", "none", "object", "dict", "bytes"],
)
def test_a_source_of_the_wrong_type_is_a_type_error(
    bad: object, exc: type[Exception], text: str
) -> None:
    with pytest.raises(exc, match=re.escape(text)):
        AsyncDataset(bad)


def test_an_object_missing_part_of_the_source_protocol_is_rejected() -> None:
    class NoFetch:
        columns = ("x",)

        def __len__(self) -> int:
            return 1

    with pytest.raises(TypeError, match="NoFetch"):
        AsyncDataset(NoFetch())


@pytest.mark.parametrize(
    "url", ["file:///nonexistent/anyloader/dataset", "not a url at all", "file://"]
)
def test_a_url_that_does_not_open_is_a_value_error_naming_it(url: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(url))):
        AsyncDataset(url)


async def test_open_stream_with_a_bad_url_fails_before_starting() -> None:
    url = "file:///nonexistent/anyloader/dataset"
    with pytest.raises(ValueError, match=re.escape(url)):
        async with open_stream(url):
            pytest.fail("the stream must not start")


@pytest.mark.parametrize(
    ("kwargs", "exc", "text"),
    [
        ({"epoch": -1}, ValueError, "epoch"),
        ({"epoch": 2.0}, TypeError, "epoch"),
        ({"epoch": True}, TypeError, "epoch"),
    ],
)
def test_set_epoch_rejects(
    pairs_url: str, kwargs: dict[str, Any], exc: type[Exception], text: str
) -> None:
    with pytest.raises(exc, match=text):
        AsyncDataset(pairs_url).set_epoch(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "exc", "text"),
    [
        ({"retries": -1}, ValueError, "retries"),
        ({"retries": 2.0}, TypeError, "retries"),
        ({"timeout": 0.0}, ValueError, "timeout"),
        ({"timeout": math.nan}, ValueError, "timeout"),
        ({"backoff": -0.1}, ValueError, "backoff"),
        ({"backoff": math.nan}, ValueError, "backoff"),
        ({"backoff": "fast"}, TypeError, "backoff"),
        ({"max_backoff": -1}, ValueError, "max_backoff"),
        ({"max_backoff": math.nan}, ValueError, "max_backoff"),
    ],
)
def test_retry_policy_rejects(kwargs: dict[str, Any], exc: type[Exception], text: str) -> None:
    with pytest.raises(exc, match=text):
        RetryPolicy(**kwargs)


def test_good_arguments_are_accepted(pairs_url: str) -> None:
    """The table's rows fail for the bad value alone: these neighbours are all valid."""
    dataset = AsyncDataset(
        pairs_url,
        columns=["masks"],
        backend="trio",
        concurrency=1,
        prefetch=1,
        fetch_size=1,
        shuffle=True,
        seed=2**40,
        ordered=False,
        transform=lambda s: s,
        return_index=True,
        rank=1,
        world_size=2,
        even=True,
        retries=0,
        timeout=math.inf,
        retry_if=lambda e: False,
    )
    assert len(dataset) == 48
