"""``anyloader.DataLoader``: a torch DataLoader whose checkpoint resumes on any cluster shape.

A torch DataLoader over an :class:`~anyloader.AsyncDataset` takes batches
from its workers in turn, each worker reading a shard the plan fixes. So the
main process can tell, from the number of batches it has handed out and the
layout (world size, workers per rank, rows per batch), exactly which rows
every worker of every rank has delivered, with no round trip to the workers
(see :class:`~anyloader._plan.plan.Cut`). That count is the whole checkpoint, and
a checkpoint can be resumed by another layout: the rows left, in epoch
order, are dealt out afresh over the new ranks and workers.

With ``ordered=False`` a worker's rows arrive as their fetches complete, so
the count says how many rows each worker delivered but not which. The
dataset then tags each item with its rows' positions and its worker, and the
checkpoint adds the few positions where the count's arithmetic is wrong (the
cut's holes and extras; the row budget bounds them). On several ranks those
differ per rank: ``state_dict()`` gathers them, a collective.

This holds when every rank takes the same number of steps, which DDP needs
anyway (a rank with more batches waits for the others in its collectives).
The loader warns at iteration start when the ranks' step counts differ.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch.utils.data
from torch.utils.data._utils.collate import default_convert

from ._core.checks import non_negative_int, positive_int
from ._dataset import AsyncDataset, LoaderTerms
from ._engine.iterator import Tagged
from ._plan.order import Sequential
from ._plan.plan import (
    Cut,
    Rest,
    Shard,
    out_of_order,
    rank_steps,
    rest_length,
    shard_plan,
    skipped_rows,
)
from ._plan.state import Progress, StateError
from ._stats.training_clock import TrainingClock

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from ._stats.epoch_stats import EpochStats

__all__ = ["DataLoader", "UnevenStepsWarning"]

VERSION = 1
_STATE_KEYS = frozenset({"dataset", "epoch", "cuts", "layout", "steps"})


class UnevenStepsWarning(UserWarning):
    """Ranks will take different numbers of steps this epoch (DDP would wait, then hang)."""


@dataclass(frozen=True)
class Layout:
    """How an epoch is dealt out: ranks, DataLoader workers per rank, rows per step."""

    world_size: int
    num_workers: int
    batch_size: int

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            positive_int(name, value)


@dataclass(frozen=True)
class Position:
    """Where a loader stands in its epochs, as a value.

    ``cuts`` are what earlier layouts took from ``epoch`` (an elastic resume);
    ``layout`` took ``steps`` steps from what they left. Out of plan order
    (``ordered=False``), ``holes`` and ``extras`` correct those steps'
    arithmetic over every rank (a saved or loaded position), and
    ``delivered`` records, while an iteration runs, the positions each worker
    of this rank delivered. Transitions: :meth:`begin`, :meth:`step`,
    :meth:`end`.
    """

    epoch: int
    cuts: tuple[Cut, ...] = ()
    layout: Layout | None = None
    steps: int = 0
    holes: tuple[int, ...] = ()
    extras: tuple[int, ...] = ()
    delivered: tuple[Progress, ...] = ()

    def cut(self) -> Cut | None:
        """What ``layout`` took (None: nothing yet)."""
        if self.layout is None or (self.steps == 0 and not self.holes):
            return None
        lay = self.layout
        return Cut(
            lay.world_size, lay.num_workers, lay.batch_size, self.steps, self.holes, self.extras
        )

    def rest_for(self, layout: Layout, *, ordered: bool = True) -> tuple[Rest, int]:
        """What a new iteration in ``layout`` reads, and the steps it starts counting from.

        The same layout, in plan order, continues each worker's own shard in the
        order the stopped DataLoader would have used; otherwise what is left is
        dealt out afresh.
        """
        taken = self.cut()
        if taken is None:
            return Rest(self.cuts), 0
        if ordered and self.layout == layout and not taken.holes:
            return Rest(self.cuts, taken), self.steps
        return Rest((*self.cuts, taken)), 0

    def begin(
        self, layout: Layout, *, ordered: bool = True, shard_rows: Sequence[int] = ()
    ) -> Position:
        """An iteration of this epoch begins in ``layout``.

        ``shard_rows`` (``ordered=False``): the shard length of each worker of
        this rank, whose deliveries are then recorded.
        """
        rest, steps = self.rest_for(layout, ordered=ordered)
        delivered = tuple(Progress(self.epoch, rows) for rows in shard_rows)
        return Position(self.epoch, rest.cuts, layout, steps, delivered=delivered)

    def step(self, worker: int = 0, positions: Sequence[int] | None = None) -> Position:
        """One more batch reached the training loop (from ``worker``, of these shard positions)."""
        delivered = self.delivered
        if positions is not None:
            done = delivered[worker].deliver(positions)
            delivered = (*delivered[:worker], done, *delivered[worker + 1 :])
        return replace(self, steps=self.steps + 1, delivered=delivered)

    def end(self) -> Position:
        """The epoch is over: the next one starts from its beginning."""
        return Position(self.epoch + 1)

    def local_corrections(self, rank: int) -> tuple[list[int], list[int]]:
        """This rank's holes and extras, from what its workers delivered."""
        cut = self.cut()
        if cut is None or not self.delivered:
            return [], []
        return out_of_order(cut, rank, [(p.length, p.mark, p.extra) for p in self.delivered])


class _TaggedCollate:
    """Collates the values of tagged items and keeps their positions and worker."""

    def __init__(self, collate: Callable[[Any], Any]) -> None:
        self.collate = collate

    def __call__(self, data: Any) -> Tagged:
        if isinstance(data, Tagged):  # batch mode: one item is one batch
            return Tagged(self.collate(data.value), data.positions, data.worker)
        positions = [p for item in data for p in item.positions]
        return Tagged(self.collate([item.value for item in data]), positions, data[0].worker)


class DataLoader(torch.utils.data.DataLoader[Any]):
    """A ``torch.utils.data.DataLoader`` for :class:`AsyncDataset`, with a checkpoint of its own.

    ``DataLoader(dataset, **kwargs)`` takes torch's keyword arguments.

    * Batch mode (the dataset's ``batch_size``): it passes ``batch_size=None``
      itself, so batches get no extra dimension. Otherwise torch batches
      samples (``batch_size``, default 1).
    * ``len(loader)`` is the number of batches this rank yields in the next
      iteration, with any ``num_workers``.
    * ``drop_last=True``: every worker yields whole batches only; the rows of
      its short last batch are skipped that epoch, never read (counted in
      :attr:`skipped_rows`).
    * :meth:`state_dict` is computed in this process from the plan: the
      epoch, the layout and the steps taken. It works with persistent
      workers, and under DDP one rank's state describes every rank (with
      ``ordered=False`` it gathers every rank's few out-of-order positions,
      so call it on every rank).
    * :meth:`load_state_dict` accepts a state from any layout (another world
      size, number of workers or batch size) and the next iteration yields
      exactly the rows of that epoch not yet yielded, over the new cluster.
      With the same layout and ``ordered=True`` they come in the same order
      as they would have.
    * Ranks whose step counts differ get an :class:`UnevenStepsWarning` at
      iteration start (use ``even=True``, or torch's ``Join``).
    * :meth:`stats` is the epoch's stats over all workers, with the share of
      the training loop's time spent waiting for data.

    Raises:
        TypeError: ``dataset`` is not an ``AsyncDataset``.
        ValueError: ``batch_size`` in batch mode, ``shuffle``, a ``sampler``
            or ``batch_sampler`` (the dataset shuffles and shards itself),
            ``in_order=False`` (the state is computed from the order batches
            arrive in), or spawned workers for a dataset that cannot reach them.
    """

    def __init__(self, dataset: AsyncDataset, **kwargs: Any) -> None:
        if not isinstance(dataset, AsyncDataset):
            raise TypeError(
                f"anyloader.DataLoader needs an anyloader.AsyncDataset, got "
                f"{type(dataset).__name__}; use torch.utils.data.DataLoader for other datasets"
            )
        _refuse_torch_shuffling(kwargs)
        options = dataset.config.options
        dataset_batch = options.batch_size
        drop_last = bool(kwargs.pop("drop_last", False))
        if dataset_batch is not None:
            if kwargs.get("batch_size") is not None:
                raise ValueError(
                    f"the dataset yields batches of {dataset_batch} (its batch_size); "
                    f"DataLoader batch_size={kwargs['batch_size']!r} would batch batches. "
                    "Leave it out."
                )
            kwargs["batch_size"] = None
            rows_per_step = dataset_batch
        else:
            rows_per_step = kwargs.get("batch_size", 1) or 1
            kwargs["drop_last"] = drop_last
        if kwargs.get("in_order") is False:
            raise ValueError(
                "in_order=False: anyloader.DataLoader computes its state from the order in "
                "which batches arrive; leave in_order=True"
            )
        if kwargs.get("num_workers", 0) > 0:
            _check_reaches_workers(dataset, kwargs.get("multiprocessing_context"))
        self._tagged = not options.ordered
        collate = kwargs.get("collate_fn")
        if collate is None:
            # Per-sample mode: ragged and text columns stay lists (batch mode's rule).
            collate = default_convert if dataset_batch is not None else dataset.collate
        kwargs["collate_fn"] = _TaggedCollate(collate) if self._tagged else collate
        super().__init__(dataset, **kwargs)
        self._rows_per_step: int = rows_per_step
        self._drop_last = drop_last
        self._position = Position(dataset.epoch)
        self._loaded: Position | None = None
        # The schedule's count of set_epoch calls when this loader's last iteration
        # began: a larger count means the user chose an epoch since.
        self._choice: int | None = None
        # Persistent workers: iterations since they started, and the dataset's own
        # count when they were made (their tokens count on from it).
        self._resets = self._start_count = 0
        self._clock: TrainingClock | None = None

    @property
    def _async_dataset(self) -> AsyncDataset:
        assert isinstance(self.dataset, AsyncDataset)
        return self.dataset

    def _layout(self) -> Layout:
        _, world_size = self._async_dataset._ranks.resolve()
        return Layout(world_size, max(1, self.num_workers), self._rows_per_step)

    def _user_chose(self) -> bool:
        """``set_epoch`` was called since this loader's last iteration began (or ever)."""
        schedule = self._async_dataset._schedule.value
        return schedule.chosen and schedule.choices != self._choice

    def _epoch(self) -> int:
        """The epoch the next iteration reads.

        The user's ``set_epoch`` since this loader's last iteration began; else a
        loaded state's; else the one after this loader's last iteration (even if
        its workers never started: the loader decides, not they); else the
        dataset's next.
        """
        if self._user_chose():
            return self._async_dataset._schedule.value.next_epoch
        if self._loaded is not None:
            return self._loaded.epoch
        if self._choice is not None:  # this loader began an iteration of _position.epoch
            ended = self._position.layout is None
            return self._position.epoch if ended else self._position.epoch + 1
        return self._async_dataset.epoch

    def _next(self) -> tuple[Position, Rest, Layout]:
        """The position the next iteration starts from, what it reads, its layout."""
        layout = self._layout()
        epoch = self._epoch()
        loaded = self._loaded
        position = loaded if loaded is not None and loaded.epoch == epoch else Position(epoch)
        rest, _ = position.rest_for(layout, ordered=not self._tagged)
        return position, rest, layout

    def __len__(self) -> int:
        """Batches this rank yields in the next iteration (all its workers together)."""
        _, rest, layout = self._next()
        rank, _ = self._async_dataset._ranks.resolve()
        return self._steps(rest, layout)[rank]

    @property
    def skipped_rows(self) -> int:
        """Rows the next iteration's epoch skips over all ranks: ``even``'s and ``drop_last``'s.

        ``even=True`` skips the tail of what each layout is dealt (fewer rows
        than its world size); ``drop_last=True`` every worker's short last
        batch. Every other row of the epoch is read exactly once.
        """
        _, rest, layout = self._next()
        identity = self._async_dataset._state.dataset
        skipped = skipped_rows(identity.num_rows, rest, layout.world_size, even=identity.even)
        if self._drop_last:
            skipped += sum(n % layout.batch_size for n in self._shard_rows(rest, layout))
        return skipped

    def _shard_rows(self, rest: Rest, layout: Layout, rank: int | None = None) -> list[int]:
        """Rows of each worker's shard: of every rank, or of ``rank``."""
        identity = self._async_dataset._state.dataset
        order = Sequential(identity.num_rows)
        ranks = range(layout.world_size) if rank is None else [rank]
        return [
            shard_plan(
                order, Shard(r, layout.world_size, k, layout.num_workers), rest, even=identity.even
            ).length
            for r in ranks
            for k in range(layout.num_workers)
        ]

    def _steps(self, rest: Rest, layout: Layout) -> list[int]:
        identity = self._async_dataset._state.dataset
        return rank_steps(
            identity.num_rows,
            rest,
            layout.world_size,
            layout.num_workers,
            layout.batch_size,
            even=identity.even,
            drop_last=self._drop_last,
        )

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        dataset = self._async_dataset
        position, rest, layout = self._next()
        steps = self._steps(rest, layout)
        if len(set(steps)) > 1:
            warnings.warn(
                UnevenStepsWarning(
                    f"epoch {position.epoch}: ranks will take {steps} steps. Under DDP the "
                    "ranks with more steps wait in their collectives for ranks that are done, "
                    "and training hangs. Use AsyncDataset(..., even=True) for equal steps "
                    "(it skips fewer than world_size rows an epoch), or wrap the loop in "
                    "torch.distributed.algorithms.Join for uneven inputs."
                ),
                stacklevel=2,
            )
        # The loader decides the epoch: fresh workers find it in their copy of the
        # dataset, persistent ones (which keep theirs) under their next token.
        token: tuple[int, int] | None = None
        if self.persistent_workers and self.num_workers > 0 and self._iterator is not None:
            self._resets += 1
            seed = int(self._iterator._base_seed)  # what workers see as info.seed - info.id
            token = (seed, self._start_count + self._resets)
        else:
            self._resets, self._start_count = 0, dataset._iterations
        number = dataset._schedule.begin(
            position.epoch, in_workers=self.num_workers > 0, token=token
        )
        self._choice = dataset._schedule.value.choices
        if position is self._loaded:
            dataset._resume_rest(position.epoch, rest)
        rank, _ = dataset._ranks.resolve()
        shard_rows = self._shard_rows(rest, layout, rank) if self._tagged else ()
        self._position = position.begin(layout, ordered=not self._tagged, shard_rows=shard_rows)
        terms = LoaderTerms(
            tag=self._tagged,
            step_rows=self._rows_per_step if self._drop_last else None,
            start=(position.epoch, number),
            start_count=self._start_count,
        )
        # The workers started now (or the iteration in this process) take the terms.
        dataset._terms, before = terms, dataset._terms
        try:
            iterator = super().__iter__()
        finally:
            dataset._terms = before
        # The iteration has taken the resume (in this process, or pickled into
        # its workers): later iterations read whole epochs.
        self._loaded = None
        dataset._forget_resume()
        return self._count(iterator)

    def _count(self, iterator: Iterator[Any]) -> Iterator[Any]:
        self._clock = clock = TrainingClock()
        for batch in clock(iterator):
            if self._tagged:
                value, positions, worker = batch
                self._position = self._position.step(worker, positions)
                yield value
            else:
                self._position = self._position.step()
                yield batch
        self._position = self._position.end()

    def stats(self) -> EpochStats:
        """The latest iteration's :class:`~anyloader.EpochStats`, the training loop's view.

        The dataset's stats (summed over this loader's workers, see
        ``AsyncDataset.stats``) with the consumer fields measured here: time
        the training loop spent inside ``next(loader)`` against all its time
        since the first ``next``, so ``input_bound`` is the share of training
        time spent waiting for data. Complete once the iterator is exhausted.
        """
        stats = self._async_dataset.stats()
        return stats if self._clock is None else self._clock.applied(stats)

    def _snapshot(self) -> Position:
        """What the next iteration would resume from, if this process stopped now."""
        epoch = self._epoch()
        if self._loaded is not None and self._loaded.epoch == epoch:
            return self._loaded
        # Until its workers join, this loader's own set_epoch reads as "chosen":
        # only a choice made since then starts an epoch afresh.
        if self._user_chose() or self._position.layout is None:
            return Position(epoch)  # chosen, never begun, or the last one ended
        return self._gathered(self._position)

    def _gathered(self, position: Position) -> Position:
        """``position`` with the holes and extras of every rank (a collective on several)."""
        if not position.delivered:
            return position
        rank, world_size = self._async_dataset._ranks.resolve()
        holes, extras = position.local_corrections(rank)
        if world_size > 1:
            holes, extras = _gather_ranks(holes, extras, world_size)
        return replace(position, holes=tuple(holes), extras=tuple(extras), delivered=())

    def state_dict(self) -> dict[str, Any]:
        """Where this loader stands: a JSON-serialisable dict, the same on every rank.

        Taken after any batch, it resumes right after that batch, on this
        layout or any other (also after a ``break``: the state is where the
        loop stopped). Taken after the last batch of an epoch but before the
        iterator ends, it resumes that epoch with nothing left. After
        ``set_epoch(n)`` and before the next iteration, epoch ``n`` from its
        start (or a loaded state of epoch ``n``).

        Raises:
            StateError: ``ordered=False`` on several ranks without an initialised
                ``torch.distributed`` process group to gather them with.
        """
        position = self._snapshot()
        layout = position.layout
        return {
            "anyloader.DataLoader": VERSION,
            "dataset": self._async_dataset._state.dataset.as_dict(),
            "epoch": position.epoch,
            "cuts": [cut.as_list() for cut in position.cuts],
            "layout": None if layout is None else vars(layout).copy(),
            "steps": position.steps,
            "holes": list(position.holes),
            "extras": list(position.extras),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`, saved on this layout or another.

        The next iteration yields exactly the rows of the saved epoch that were
        not yet yielded, dealt out over this loader's ranks and workers.
        Persistent workers are restarted to take the new plan.

        Raises:
            StateError: the state is not a loader state (a key is missing, or a
                value is malformed: named), it was saved from another dataset
                length, seed, shuffle or ``even`` (named), or it lies past the
                end of its epoch.
        """
        if not isinstance(state, Mapping) or state.get("anyloader.DataLoader") != VERSION:
            raise StateError(
                "not an anyloader.DataLoader state (version "
                f"{VERSION}): pass what DataLoader.state_dict() returned; a state from "
                "AsyncDataset.state_dict() goes to AsyncDataset.load_state_dict()"
            )
        missing = sorted(_STATE_KEYS - set(state))
        if missing:
            raise StateError(
                f"the state is missing {missing}; pass what DataLoader.state_dict() returned"
            )
        dataset = self._async_dataset
        identity = dataset._state.dataset
        identity.check(state["dataset"])
        position = _parse_position(state)
        cut = position.cut()
        if cut is not None:
            try:
                steps = rank_steps(
                    identity.num_rows,
                    Rest(position.cuts),
                    cut.world_size,
                    cut.num_workers,
                    cut.batch_size,
                    even=identity.even,
                )
                # The cut's own holes and extras must be rows of its epoch.
                rest_length(identity.num_rows, (*position.cuts, cut), even=identity.even)
            except ValueError as exc:
                raise StateError(f"not a state of this dataset's epoch: {exc}") from None
            if position.steps > max(steps):
                raise StateError(
                    f"steps={position.steps} is past the end of epoch {position.epoch}: "
                    f"{position.layout} takes {max(steps)} steps there. Not a state of this "
                    "dataset's epoch."
                )
        self._loaded = position
        # Until an iteration starts, the dataset reports the loaded epoch, and its
        # len() and skipped_rows what this loader's next iteration reads of it.
        rest, _ = position.rest_for(self._layout(), ordered=not self._tagged)
        dataset._resume_rest(position.epoch, rest)
        if self._iterator is not None:  # persistent workers hold the old plan
            self._iterator._shutdown_workers()  # type: ignore[attr-defined]
            self._iterator = None


def _parse_position(state: Mapping[str, Any]) -> Position:
    """The :class:`Position` a loader state describes.

    Raises:
        StateError: a value of the wrong type or range (named).
    """
    layout = state["layout"]
    try:
        position = Position(
            epoch=non_negative_int("epoch", state["epoch"]),
            cuts=Rest.parse({"cuts": state["cuts"], "taken": None}).cuts,
            layout=None if layout is None else Layout(**dict(layout)),
            steps=non_negative_int("steps", state["steps"]),
            holes=tuple(non_negative_int("holes", p) for p in state.get("holes", ())),
            extras=tuple(non_negative_int("extras", p) for p in state.get("extras", ())),
        )
        position.cut()  # holes and extras: as many of one as of the other, no repeats
    except (TypeError, ValueError) as exc:
        raise StateError(f"not a valid anyloader.DataLoader state: {exc}") from None
    if (position.steps or position.holes) and position.layout is None:
        raise StateError("a state that took steps must name its layout")
    return position


def _gather_ranks(
    holes: list[int], extras: list[int], world_size: int
) -> tuple[list[int], list[int]]:
    """Every rank's holes and extras, through ``torch.distributed`` (all ranks must call).

    Raises:
        StateError: no initialised process group of ``world_size`` ranks.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() == world_size):
        raise StateError(
            f"ordered=False on {world_size} ranks: each rank delivered its own rows out of order, "
            "and state_dict() gathers them over torch.distributed, which is not initialised "
            f"with {world_size} ranks here. Initialise the process group, or use ordered=True, "
            "whose state needs no other rank."
        )
    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, (holes, extras))
    return [p for h, _ in parts for p in h], [p for _, e in parts for p in e]


def _refuse_torch_shuffling(kwargs: Mapping[str, Any]) -> None:
    """Refuse torch's shuffle and samplers by name: the dataset orders and shards itself.

    Raises:
        ValueError: ``shuffle=True``, a ``sampler`` or a ``batch_sampler``.
    """
    if kwargs.get("shuffle"):
        raise ValueError(
            "shuffle=True: an AsyncDataset shuffles itself, with a new order every epoch and "
            "every row once across workers and ranks. Use AsyncDataset(..., shuffle=True, "
            "seed=...) and leave the DataLoader's shuffle out."
        )
    for name in ("sampler", "batch_sampler"):
        if kwargs.get(name) is not None:
            raise ValueError(
                f"{name}={type(kwargs[name]).__name__}: an AsyncDataset is an IterableDataset "
                "that shards itself per rank and DataLoader worker (a DistributedSampler is not "
                "needed) and shuffles itself: use AsyncDataset(..., shuffle=True, seed=...)."
            )


def _check_reaches_workers(dataset: AsyncDataset, context: object) -> None:
    """Refuse, now, a source that worker processes started by pickling could not read.

    Raises:
        ValueError: the reason, from the source (a ``mem://`` dataset, say).
    """
    import multiprocessing

    if context is None:
        method = multiprocessing.get_context().get_start_method()
    elif isinstance(context, str):
        method = context
    else:
        method = getattr(context, "get_start_method", lambda: "fork")()
    if method == "fork":
        return  # a forked worker has the dataset as it is in memory
    problem = getattr(dataset.config.source, "unpicklable_reason", lambda: None)()
    if problem:
        raise ValueError(f"{method} DataLoader workers cannot read this dataset: {problem}")
