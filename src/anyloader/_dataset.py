"""``AsyncDataset``: the engine as a torch ``IterableDataset``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anyio.from_thread import start_blocking_portal
from torch.utils.data import IterableDataset

from ._config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_FETCH_SIZE,
    DEFAULT_PREFETCH,
    LoaderConfig,
    check_backend,
    non_negative_int,
)
from ._pipeline import open_chunks
from ._plan import Shard, rank_length
from ._shard import check_rank, current_shard, resolve_rank

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

__all__ = ["AsyncDataset"]


class AsyncDataset(IterableDataset[Any]):
    """Stream a deeplake dataset (or any ``Source``) into torch, each row once per epoch.

    Each iteration runs one AnyIO task group on ``backend`` in a private event
    loop thread: ``concurrency`` fetches of ``fetch_size`` rows in flight, at
    most ``prefetch + concurrency * fetch_size`` rows fetched ahead of the
    consumer. Samples are dicts ``{column: value}`` (plus ``"index"`` with
    ``return_index``) with writable arrays, passed through ``transform``.

    Guarantees:
        * Over all DataLoader workers of all ranks, an epoch yields every row
          exactly once (``even=True``: every rank yields the same count and
          the at most ``world_size - 1`` rows of the global tail are skipped).
        * ``ordered=True``: each shard's order depends only on
          ``(seed, epoch, shuffle, rank, world_size, worker, num_workers)``.
        * Leaving the loop (end, ``break``, exception, garbage collection,
          Ctrl-C) cancels every fetch and joins the loop thread.

    Raises:
        TypeError, ValueError: at construction, for any bad argument; the
            message names the argument and what is valid.
        Exception: during iteration, the first fetch error that retries did
            not cure, as the source raised it.
    """

    def __init__(
        self,
        source: object,
        columns: Sequence[str] | None = None,
        backend: str = "asyncio",
        concurrency: int = DEFAULT_CONCURRENCY,
        prefetch: int = DEFAULT_PREFETCH,
        fetch_size: int = DEFAULT_FETCH_SIZE,
        shuffle: bool = False,
        seed: int = 0,
        ordered: bool = True,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        return_index: bool = False,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        even: bool = False,
        retries: int = 3,
        timeout: float | None = None,
        retry_if: Callable[[BaseException], bool] | None = None,
    ) -> None:
        super().__init__()
        self.backend = check_backend(backend)
        check_rank(rank, world_size)
        self.config = LoaderConfig.build(
            source,
            columns=columns,
            concurrency=concurrency,
            prefetch=prefetch,
            fetch_size=fetch_size,
            shuffle=shuffle,
            seed=seed,
            ordered=ordered,
            transform=transform,
            return_index=return_index,
            even=even,
            retries=retries,
            timeout=timeout,
            retry_if=retry_if,
        )
        self._rank = rank
        self._world_size = world_size
        self._epoch = 0

    @property
    def epoch(self) -> int:
        """The epoch the next iteration reads (its shuffle depends on it)."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next iteration.

        Call it before creating the DataLoader iterator: workers receive a copy
        of the dataset when the iterator starts (with ``persistent_workers``
        they keep the copy they had).

        Raises:
            TypeError, ValueError: if ``epoch`` is not a non-negative int.
        """
        self._epoch = non_negative_int("epoch", epoch)

    def __len__(self) -> int:
        """Rows this rank yields per epoch, all its DataLoader workers together."""
        rank, world_size = resolve_rank(self._rank, self._world_size)
        return rank_length(len(self.config.source), rank, world_size, even=self.config.even)

    def __iter__(self) -> Iterator[Any]:
        return self._iterate(current_shard(self._rank, self._world_size), self._epoch)

    def _iterate(self, shard: Shard, epoch: int, start: int = 0) -> Iterator[Any]:
        config = self.config
        transform, return_index = config.transform, config.return_index
        with start_blocking_portal(self.backend, name="anyloader") as portal:
            engine = portal.wrap_async_context_manager(
                open_chunks(config, shard, epoch=epoch, start=start)
            )
            stream = engine.__enter__()
            failure: BaseException | None = None
            try:
                consumed = 0
                # One thread round trip per batch of ready chunks, not per sample;
                # the rows of the previous batch go back to the budget with it.
                while chunks := portal.call(stream.receive_chunks, consumed):
                    consumed = 0
                    for chunk in chunks:
                        consumed += len(chunk)
                        for sample in chunk.samples(return_index=return_index):
                            yield sample if transform is None else transform(sample)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                try:
                    engine.__exit__(None, None, None)
                except BaseException as exc:
                    # The engine re-raises the failure the stream already raised.
                    if exc is not failure:
                        raise
