"""``AsyncDataset``: the engine as a torch ``IterableDataset``."""

from __future__ import annotations

import atexit
import contextlib
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from anyio.from_thread import start_blocking_portal
from torch.utils.data import IterableDataset, get_worker_info

from ._batching import BatchBuilder
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
    from collections.abc import Generator, Mapping, Sequence

    from ._samples import Chunk

__all__ = ["AsyncDataset"]

_Receive = Callable[[int], "list[Chunk]"]

# Iterators still open at interpreter exit are closed by an atexit hook, while
# their event loop threads (daemons) still run. Left to final garbage
# collection, closing one waits forever on a frozen loop thread (trio) or
# aborts the process (asyncio): see tests/test_exit.py.
_open_iterators: weakref.WeakSet[Generator[Any, None, None]] = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
    for iterator in list(_open_iterators):
        with contextlib.suppress(Exception):
            iterator.close()


class AsyncDataset(IterableDataset[Any]):
    """Stream a deeplake dataset (or any ``Source``) into torch, each row once per epoch.

    Each iteration runs one AnyIO task group on ``backend`` in a private event
    loop thread: ``concurrency`` fetches of ``fetch_size`` rows in flight, at
    most ``prefetch + concurrency * fetch_size`` rows fetched ahead of the
    consumer. Samples are dicts ``{column: value}`` (plus ``"index"`` with
    ``return_index``) with writable arrays, passed through ``transform``.

    With ``batch_size`` the dataset yields whole batches instead (use
    ``DataLoader(ds, batch_size=None)``): ``{column: tensor}`` for columns
    that stack, lists for ragged or text columns, each value copied once,
    straight into the batch (in shared memory inside DataLoader workers);
    ``transform`` then receives batches. A shard's last batch may be short.

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
        backoff: float = 0.05,
        max_backoff: float = 2.0,
        retry_if: Callable[[BaseException], bool] | None = None,
        batch_size: int | None = None,
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
            backoff=backoff,
            max_backoff=max_backoff,
            retry_if=retry_if,
            batch_size=batch_size,
        )
        self._rank = rank
        self._world_size = world_size
        self._epoch = 0
        # Resume point for the next iteration (rows of this shard to skip),
        # and rows the current iteration has yielded: the state of a checkpoint.
        self._resume_at = 0
        self._position = 0

    @property
    def epoch(self) -> int:
        """The epoch the next iteration reads (its shuffle depends on it)."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next iteration.

        Call it before creating the DataLoader iterator: workers receive a copy
        of the dataset when the iterator starts (with ``persistent_workers``
        they keep the copy they had).

        Choosing another epoch than a loaded checkpoint's drops its resume
        point: the new epoch starts from its first row.

        Raises:
            TypeError, ValueError: if ``epoch`` is not a non-negative int.
        """
        if non_negative_int("epoch", epoch) != self._epoch:
            self._resume_at = 0
        self._epoch = epoch

    @property
    def skipped_rows(self) -> int:
        """Rows each epoch skips over all ranks: ``num_rows % world_size`` with ``even``, else 0."""
        if not self.config.even:
            return 0
        _, world_size = resolve_rank(self._rank, self._world_size)
        return len(self.config.source) % world_size

    def state_dict(self) -> dict[str, int]:
        """Where this shard's iteration stands: ``{"seed", "epoch", "position"}``.

        ``position`` counts the samples the current (or last) iteration of
        this process has yielded, so a checkpoint taken after a batch resumes
        right after it. Inside DataLoader workers each worker has its own
        state; ``torchdata.stateful_dataloader.StatefulDataLoader`` collects
        and restores them (see docs/distributed.md). With ``num_workers=0`` a
        plain DataLoader works: it takes exactly ``batch_size`` samples a batch.
        """
        return {"seed": self.config.seed, "epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume from :meth:`state_dict`: the next iteration skips the rows already yielded.

        Guarantee: with the same seed, shard layout and ``ordered=True``, the
        resumed iteration yields exactly the rows an uninterrupted one would
        have yielded after ``position``, in the same order.

        Raises:
            ValueError: if keys are missing or the seed differs from this dataset's
                (that would reshuffle the epoch and break exactly-once).
            TypeError: if a value is not an int.
        """
        missing = {"seed", "epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}; got {dict(state)}")
        if non_negative_int("seed", state["seed"]) != self.config.seed:
            raise ValueError(
                f"state was saved with seed={state['seed']}, this dataset has "
                f"seed={self.config.seed}: resuming would not continue the same epoch"
            )
        self._epoch = non_negative_int("epoch", state["epoch"])
        self._resume_at = non_negative_int("position", state["position"])
        self._position = self._resume_at

    def __len__(self) -> int:
        """Rows this rank yields per epoch, all its DataLoader workers together."""
        rank, world_size = resolve_rank(self._rank, self._world_size)
        return rank_length(len(self.config.source), rank, world_size, even=self.config.even)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader pickles the dataset for workers started by spawn or
        # forkserver, which have no process group: pin the rank seen here,
        # or every worker would believe it is rank 0 of 1.
        state = dict(self.__dict__)
        state["_rank"], state["_world_size"] = resolve_rank(self._rank, self._world_size)
        return state

    def __iter__(self) -> Iterator[Any]:
        start, self._resume_at = self._resume_at, 0
        iterator = self._iterate(current_shard(self._rank, self._world_size), self._epoch, start)
        _open_iterators.add(iterator)
        return iterator

    def _iterate(self, shard: Shard, epoch: int, start: int = 0) -> Generator[Any, None, None]:
        self._position = start
        unpack = self._samples if self.config.batch_size is None else self._batches
        with self._engine(shard, epoch, start) as receive:
            for item, rows in unpack(receive):
                self._position += rows
                yield item

    @contextmanager
    def _engine(self, shard: Shard, epoch: int, start: int) -> Iterator[_Receive]:
        """Run the engine in a private event loop thread; yield its chunk receiver.

        The receiver takes the number of rows consumed since its last call
        (they go back to the row budget) and returns the chunks ready now,
        ``[]`` at the end of the epoch: one thread round trip per batch of
        ready chunks, not per sample.
        """
        with start_blocking_portal(self.backend, name="anyloader") as portal:
            engine = portal.wrap_async_context_manager(
                open_chunks(self.config, shard, epoch=epoch, start=start)
            )
            stream = engine.__enter__()
            failure: BaseException | None = None
            try:
                yield partial(portal.call, stream.receive_chunks)
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

    def _samples(self, receive: _Receive) -> Iterator[tuple[Any, int]]:
        transform, return_index = self.config.transform, self.config.return_index
        consumed = 0
        while chunks := receive(consumed):
            consumed = 0
            for chunk in chunks:
                consumed += len(chunk)
                for sample in chunk.samples(return_index=return_index):
                    yield (sample if transform is None else transform(sample)), 1

    def _batches(self, receive: _Receive) -> Iterator[tuple[Any, int]]:
        config, transform = self.config, self.config.transform
        assert config.batch_size is not None
        builder = BatchBuilder(
            config.batch_size,
            return_index=config.return_index,
            shared=get_worker_info() is not None,
        )
        # Rows go back to the budget once their batch is out, not when fetched:
        # the partial batch being assembled stays inside the bound.
        consumed = 0
        while chunks := receive(consumed):
            consumed = 0
            for chunk in chunks:
                for batch, rows in builder.add(chunk):
                    consumed += rows
                    yield (batch if transform is None else transform(batch)), rows
        for batch, rows in builder.finish():
            yield (batch if transform is None else transform(batch)), rows
