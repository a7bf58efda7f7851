"""``AsyncDataset``: the engine as a torch ``IterableDataset``."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch.utils.data import IterableDataset, get_worker_info

from ._batch.builder import Collate
from ._core.checks import non_negative_int
from ._engine.config import LoaderConfig
from ._engine.handout import batch_stacks
from ._engine.iterator import EpochIterator
from ._engine.loop_thread import load_backend
from ._options import Options, check_backend
from ._plan.epochs import SharedSchedule
from ._plan.order import Sequential
from ._plan.plan import Rest, Shard, plan_groups, shard_plan, skipped_rows, truncated
from ._plan.rank import Ranks, check_rank, current_shard
from ._plan.state import Dataset, IterationState
from ._stats.worker_channel import SharedStats

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import FrameType
    from typing import Unpack  # annotations only: never imported at run time

    from ._options import LoaderOptions
    from ._plan.state import Progress
    from ._stats.epoch_stats import EpochStats

__all__ = ["AsyncDataset", "LoaderTerms"]


@dataclass(frozen=True)
class LoaderTerms:
    """What an ``anyloader.DataLoader`` asks of the iterations it starts.

    Set on the dataset while the loader starts an iteration, so its worker
    processes (forked or pickled then) and an iteration in the main process
    take them; plain iteration uses the defaults.
    """

    #: Yield :class:`~anyloader._engine.iterator.Tagged` items, so the loader knows which
    #: rows each worker delivered (its checkpoint with ``ordered=False``).
    tag: bool = False
    #: ``drop_last``: each worker reads whole steps of this many rows, no short last one.
    step_rows: int | None = None
    #: ``(epoch, number)`` of the iteration the loader began, for the first iteration
    #: of a copy made now (a worker's, or this process's own iteration).
    start: tuple[int, int] | None = None
    #: The copy's count of iterations when it was made (see ``AsyncDataset._iterations``).
    start_count: int = 0


class AsyncDataset(IterableDataset[Any]):
    """Stream a deeplake dataset (or any ``Source``) into torch, each row once per epoch.

    Each iteration runs one AnyIO task group on ``backend`` in a private event
    loop thread: ``concurrency`` fetches of ``fetch_size`` rows in flight, at
    most ``prefetch + concurrency * fetch_size`` rows fetched ahead of the
    consumer. Samples are dicts ``{column: value}`` (plus ``"index"`` with
    ``return_index``) with writable arrays, passed through ``transform``. The
    options are listed, with defaults, in docs/guide.md.

    With ``batch_size`` the dataset yields whole batches instead (use
    ``DataLoader(ds, batch_size=None)``): ``{column: tensor}`` for columns
    that stack, lists for ragged or text columns, each value copied once,
    straight into the batch (in shared memory inside DataLoader workers);
    ``transform`` then receives batches. A shard's last batch may be short.

    Epochs: each new iteration reads the next epoch (0, 1, 2, ...) unless
    :meth:`set_epoch` chose one, in the main process and in DataLoader
    workers alike, persistent or not.

    Guarantees:
        * Over all DataLoader workers of all ranks, an epoch yields every row
          exactly once (``even=True``: every rank yields the same count and
          the at most ``world_size - 1`` rows of the global tail are skipped).
        * An iteration ends normally only after every row of its shard was
          yielded; otherwise it raises.
        * ``ordered=True``: each shard's order depends only on
          ``(seed, epoch, shuffle, rank, world_size, worker, num_workers)``.
        * :meth:`state_dict` after any item, loaded into a fresh dataset,
          yields exactly the rows not yet yielded (in the same order with
          ``ordered=True``).
        * Leaving the loop (end, ``break``, exception, garbage collection,
          Ctrl-C, interpreter exit) cancels every fetch and ends the loop thread.

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
        *,
        rank: int | None = None,
        world_size: int | None = None,
        **options: Unpack[LoaderOptions],
    ) -> None:
        super().__init__()
        self.backend = check_backend(backend)
        load_backend(self.backend)
        check_rank(rank, world_size)
        self.config = LoaderConfig.build(source, Options.validate(columns=columns, **options))
        self._ranks = Ranks(rank, world_size)
        self._schedule = SharedSchedule()
        self._state = IterationState(Dataset.of(len(self.config.source), self.config.options))
        # Iterations of this copy: a persistent DataLoader worker's tell its
        # DataLoader iterations apart (see anyloader._plan.epochs).
        self._iterations = 0
        self._stats = SharedStats()
        self._terms = LoaderTerms()

    @property
    def epoch(self) -> int:
        """The epoch the next iteration reads, as far as this process knows."""
        schedule, resume = self._schedule.value, self._state.resume
        if resume is not None and not schedule.chosen:
            return resume.progress.epoch
        return schedule.next_epoch

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next iteration (its shuffle depends on it).

        It reaches DataLoader workers, persistent ones included, as long as it
        is called before the DataLoader iterator starts (``iter(loader)``).
        Without it, each iteration reads the epoch after the last one.
        A loaded checkpoint of another epoch is dropped; one of this epoch
        resumes where it stopped.

        Raises:
            TypeError, ValueError: if ``epoch`` is not a non-negative int.
        """
        self._schedule.choose(non_negative_int("epoch", epoch))

    @property
    def skipped_rows(self) -> int:
        """Rows the next epoch skips over all ranks with ``even=True`` (else 0).

        ``num_rows % world_size``; after an elastic resume (a loaded
        ``anyloader.DataLoader`` state) also what each earlier layout skipped
        of the part of the epoch it was dealt.
        """
        if not self.config.options.even:
            return 0
        _, world_size = self._ranks.resolve()
        rest = self._pending_rest()
        return skipped_rows(len(self.config.source), rest, world_size, even=True)

    def _pending_rest(self) -> Rest:
        """What the next iteration reads of its epoch: all of it, or a loaded rest."""
        resume = self._state.resume
        if resume is None or resume.progress.epoch != self.epoch:
            return Rest()
        return resume.rest

    @property
    def collate(self) -> Collate:
        """The ``collate_fn`` for per-sample mode: stacks what stacks, lists the rest.

        ``torch.utils.data.DataLoader(ds, batch_size=32, collate_fn=ds.collate)``:
        like ``default_collate``, but a ragged or text column (boxes, captions,
        variable-size images without a geometry) is a list in every batch instead
        of failing in ``torch.stack``. With a ``transform``, whatever it returns
        stacks when a batch's values share one numeric shape (see
        :class:`~anyloader.Collate`). ``anyloader.DataLoader`` uses it by default.
        """
        transformed = self.config.options.transform is not None
        return Collate(batch_stacks(self.config), transformed=transformed)

    def stats(self) -> EpochStats:
        """The latest epoch's :class:`~anyloader.EpochStats` (see docs/stats.md).

        In the process that iterates, its latest iteration (so far, while it
        runs). In a process whose latest iteration ran in DataLoader workers,
        the sum over those workers of that iteration (one ``iter(loader)``;
        with persistent workers, each ``iter(loader)`` is a new one), as far as
        they have reported: workers report every half second while they wait
        for data and at their end, so it is complete once the DataLoader
        iterator is exhausted. Inside a worker, the consumer is the worker's
        own loop, not the training loop. All zero before the first iteration.
        """
        return self._stats.latest()

    def state_dict(self) -> dict[str, Any]:
        """Where this process's iteration stands, as a JSON-serialisable dict.

        It holds the epoch, the positions of this shard delivered so far, the
        shard and what the order depends on (rows, seed, shuffle, ``even``).
        Taken after any item, it resumes right after that item. Before the
        first item of an iteration, or after ``set_epoch``, it resumes that
        epoch from its start. Inside DataLoader workers each worker has its
        own state; ``torchdata``'s ``StatefulDataLoader`` collects and
        restores them (see docs/distributed.md).

        Raises:
            RuntimeError: in a process whose latest iteration ran in DataLoader
                workers: it cannot know where they got to.
        """
        schedule = self._schedule.value
        unseen = schedule.in_workers and not schedule.chosen and self._state.resume is None
        if unseen and get_worker_info() is None:
            raise RuntimeError(
                "state_dict(): this dataset's latest iteration ran in DataLoader workers, "
                "and this process cannot see how far they got. Use "
                "torchdata.stateful_dataloader.StatefulDataLoader, whose state_dict() "
                "collects every worker's state, or iterate with num_workers=0."
            )
        return self._state.saved(schedule.next_epoch, schedule.chosen)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next iteration yields only the rows not yet yielded.

        Raises:
            ValueError: keys are missing, or the state was saved from another
                dataset length, seed, shuffle or ``even`` (named in the message);
                at the next iteration, if it was saved by another shard layout.
            TypeError: a value has the wrong type.
        """
        self._state = self._state.load(state)

    def _resume_rest(self, epoch: int, rest: Rest) -> None:
        # anyloader.DataLoader's resume: the next iteration of `epoch` reads what `rest` leaves.
        self._state = self._state.resume_rest(epoch, rest)

    def _forget_resume(self) -> None:
        # anyloader.DataLoader: an iteration (here or in worker copies) took the resume.
        self._state = self._state.forget_resume()

    def __len__(self) -> int:
        """Rows this rank yields in its next iteration, all its DataLoader workers together.

        A whole epoch's share, or after a loaded state what is left of it:
        what ``len(anyloader.DataLoader)`` counts in batches.
        """
        rank, world_size = self._ranks.resolve()
        rest, resume = self._pending_rest(), self._state.resume
        workers = 1 if rest.taken is None else rest.taken.num_workers
        order = Sequential(len(self.config.source))
        rows = sum(
            shard_plan(
                order, Shard(rank, world_size, k, workers), rest, even=self.config.options.even
            ).length
            for k in range(workers)
        )
        # A loaded state of this process's shard: what it delivered is not read again.
        mine = Shard(rank=rank, world_size=world_size)
        if resume is not None and resume.progress.epoch == self.epoch and resume.shard == mine:
            rows -= resume.progress.delivered
        return rows

    def __getstate__(self) -> dict[str, Any]:
        # A spawn-started DataLoader worker has no process group: tell it this
        # process's rank (used only if it is a worker of this process).
        state = dict(self.__dict__)
        state["_ranks"] = self._ranks.for_pickle()
        return state

    def __iter__(self) -> EpochIterator:
        shard = current_shard(self._ranks)
        info = get_worker_info()
        if info is None or info.id == 0:
            self._warn_about_the_loader(shard)
        o, terms = self.config.options, self._terms
        token = None if info is None else (info.seed - info.id, self._iterations)
        first_of_copy = info is None or self._iterations == terms.start_count
        self._iterations += 1
        resume = self._state.resume
        if terms.start is not None and first_of_copy:
            epoch, number = terms.start  # the loader began this iteration
        else:
            epoch, number = self._schedule.start(
                token=token,
                num_workers=shard.num_workers,
                resume_epoch=None if resume is None else resume.progress.epoch,
            )
        self._state, progress, plan = self._state.start(shard, epoch)
        assert self._state.latest is not None
        latest = self._state.latest.number

        def report(progress: Progress) -> None:
            self._state = self._state.deliver(latest, progress)

        remaining = progress.remaining()
        if terms.step_rows is not None:
            whole = plan.first + plan.length
            remaining = truncated(remaining, whole - whole % terms.step_rows - plan.first)
        return EpochIterator(
            self.backend,
            self.config,
            plan_groups(plan, remaining, self.config.fetch_size),
            progress,
            report,
            planned=len(remaining),
            shared=info is not None,
            seed=hash((o.seed, epoch, shard)),
            stats=self._stats.start(number),
            tag=shard.worker_id if terms.tag else None,
        )

    def _warn_about_the_loader(self, shard: Shard) -> None:
        """Warn at iteration start of a loader that would reshape or reorder the epoch silently."""
        if self.config.options.batch_size is not None and _batched_by_torch():
            warnings.warn(
                f"this AsyncDataset yields whole batches (batch_size="
                f"{self.config.options.batch_size}), and the DataLoader batches them again: "
                "each batch gets an extra leading dimension. Pass batch_size=None to the "
                "DataLoader, or use anyloader.DataLoader, which does.",
                UserWarning,
                stacklevel=3,
            )
        ordering = getattr(self.config.source, "query_order", None)
        if shard.num_workers > 1 and not self.config.options.shuffle and ordering:
            warnings.warn(
                f"the view orders its rows ({ordering}), but each of {shard.num_workers} "
                f"DataLoader workers reads one row in {shard.num_workers} and the DataLoader "
                "interleaves their batches: the order is not the view's. Use num_workers=0 "
                "(batch mode keeps it fast) if the order matters.",
                UserWarning,
                stacklevel=3,
            )


def _batched_by_torch() -> bool:
    """Whether torch's fetcher, iterating this dataset, batches what it yields (batch_size set)."""
    from torch.utils.data._utils.fetch import _IterableDatasetFetcher

    # torch's fetcher calls iter(dataset) in its __init__, after it set auto_collation;
    # a frame or two up (AsyncDataset.__iter__ is the first). Not found: no warning.
    frame: FrameType | None = sys._getframe(2)
    for _ in range(3):
        if frame is None:
            return False
        caller = frame.f_locals.get("self")
        if isinstance(caller, _IterableDatasetFetcher):
            return bool(caller.auto_collation)
        frame = frame.f_back
    return False
