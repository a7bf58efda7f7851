"""``anyloader.DataLoader``: a torch DataLoader whose checkpoint resumes on any cluster shape.

A torch DataLoader over an :class:`~anyloader.AsyncDataset` takes batches
from its workers in turn, each worker reading a shard the plan fixes. So the
main process can tell, from the number of batches it has handed out and the
layout (world size, workers per rank, rows per batch), exactly which rows
every worker of every rank has delivered, with no round trip to the workers
(see :class:`~anyloader._plan.Cut`). That count is the whole checkpoint, and
a checkpoint can be resumed by another layout: the rows left, in epoch
order, are dealt out afresh over the new ranks and workers.

This holds when every rank takes the same number of steps, which DDP needs
anyway (a rank with more batches waits for the others in its collectives).
The loader warns at iteration start when the ranks' step counts differ.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch.utils.data

from ._dataset import AsyncDataset
from ._options import non_negative_int, positive_int
from ._plan import Cut, Rest, rank_steps
from ._profile import TrainingClock
from ._state import StateError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._stats import EpochStats

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
    ``layout`` took ``steps`` steps from what they left. Transitions:
    :meth:`begin`, :meth:`step`, :meth:`end`.
    """

    epoch: int
    cuts: tuple[Cut, ...] = ()
    layout: Layout | None = None
    steps: int = 0

    def rest_for(self, layout: Layout) -> tuple[Rest, int]:
        """What a new iteration in ``layout`` reads, and the steps it starts counting from.

        The same layout continues each worker's own shard, in the order the
        stopped DataLoader would have used; another one deals out what is left.
        """
        if self.layout is None or self.steps == 0:
            return Rest(self.cuts), 0
        taken = Cut(
            self.layout.world_size, self.layout.num_workers, self.layout.batch_size, self.steps
        )
        if self.layout == layout:
            return Rest(self.cuts, taken), self.steps
        return Rest((*self.cuts, taken)), 0

    def begin(self, layout: Layout) -> Position:
        """An iteration of this epoch begins in ``layout``."""
        rest, steps = self.rest_for(layout)
        return Position(self.epoch, rest.cuts, layout, steps)

    def step(self) -> Position:
        """One more batch reached the training loop."""
        return Position(self.epoch, self.cuts, self.layout, self.steps + 1)

    def end(self) -> Position:
        """The epoch is over: the next one starts from its beginning."""
        return Position(self.epoch + 1)


class DataLoader(torch.utils.data.DataLoader[Any]):
    """A ``torch.utils.data.DataLoader`` for :class:`AsyncDataset`, with a checkpoint of its own.

    ``DataLoader(dataset, **kwargs)`` takes torch's keyword arguments.

    * Batch mode (the dataset's ``batch_size``): it passes ``batch_size=None``
      itself, so batches get no extra dimension. Otherwise torch batches
      samples (``batch_size``, default 1).
    * ``len(loader)`` is the number of batches this rank yields in the next
      iteration, with any ``num_workers``.
    * :meth:`state_dict` is computed in this process from the plan: the
      epoch, the layout and the steps taken. It works with persistent
      workers, and under DDP one rank's state describes every rank.
    * :meth:`load_state_dict` accepts a state from any layout (another world
      size, number of workers or batch size) and the next iteration yields
      exactly the rows of that epoch not yet yielded, over the new cluster.
      With the same layout they come in the same order as they would have.
    * Ranks whose step counts differ get an :class:`UnevenStepsWarning` at
      iteration start (use ``even=True``, or torch's ``Join``).
    * :meth:`stats` is the epoch's stats over all workers, with the share of
      the training loop's time spent waiting for data.

    Raises:
        TypeError: ``dataset`` is not an ``AsyncDataset``.
        ValueError: ``batch_size`` in batch mode, ``drop_last=True`` (rows
            would be dropped silently) or ``in_order=False`` (the state is
            computed from the order batches arrive in).
    """

    def __init__(self, dataset: AsyncDataset, **kwargs: Any) -> None:
        if not isinstance(dataset, AsyncDataset):
            raise TypeError(
                f"anyloader.DataLoader needs an anyloader.AsyncDataset, got "
                f"{type(dataset).__name__}; use torch.utils.data.DataLoader for other datasets"
            )
        dataset_batch = dataset.config.options.batch_size
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
        if kwargs.get("drop_last"):
            raise ValueError(
                "drop_last=True would drop each worker's last short batch, rows the epoch "
                "never yields; anyloader yields every row. Use even=True on the dataset "
                "for equal steps on every rank."
            )
        if kwargs.get("in_order") is False:
            raise ValueError(
                "in_order=False: anyloader.DataLoader computes its state from the order in "
                "which batches arrive; leave in_order=True"
            )
        super().__init__(dataset, **kwargs)
        self._rows_per_step: int = rows_per_step
        self._position = Position(dataset.epoch)
        self._loaded: Position | None = None
        # The schedule's count of set_epoch calls right after this loader's own
        # (at iteration start): a larger count means the user chose an epoch since.
        self._choice: int | None = None
        self._clock: TrainingClock | None = None

    @property
    def _async_dataset(self) -> AsyncDataset:
        assert isinstance(self.dataset, AsyncDataset)
        return self.dataset

    def _layout(self) -> Layout:
        _, world_size = self._async_dataset._ranks.resolve()
        return Layout(world_size, max(1, self.num_workers), self._rows_per_step)

    def _next(self) -> tuple[Position, Rest, Layout]:
        """The position the next iteration starts from, what it reads, its layout."""
        dataset, layout = self._async_dataset, self._layout()
        epoch = dataset.epoch
        loaded = self._loaded
        position = loaded if loaded is not None and loaded.epoch == epoch else Position(epoch)
        rest, _ = position.rest_for(layout)
        return position, rest, layout

    def __len__(self) -> int:
        """Batches this rank yields in the next iteration (all its workers together)."""
        _, rest, layout = self._next()
        rank, _ = self._async_dataset._ranks.resolve()
        return self._steps(rest, layout)[rank]

    def _steps(self, rest: Rest, layout: Layout) -> list[int]:
        identity = self._async_dataset._state.dataset
        return rank_steps(
            identity.num_rows,
            rest,
            layout.world_size,
            layout.num_workers,
            layout.batch_size,
            even=identity.even,
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
        # The main process decides the epoch; set_epoch carries it to the workers.
        dataset.set_epoch(position.epoch)
        self._choice = dataset._schedule.value.choices
        if position is self._loaded:
            dataset._resume_rest(position.epoch, rest)
        self._position = position.begin(layout)
        iterator = super().__iter__()
        # The iteration has taken the resume (in this process, or pickled into
        # its workers): later iterations read whole epochs.
        self._loaded = None
        dataset._forget_resume()
        return self._count(iterator)

    def _count(self, iterator: Iterator[Any]) -> Iterator[Any]:
        self._clock = clock = TrainingClock()
        for batch in clock(iterator):
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
        dataset = self._async_dataset
        epoch = dataset.epoch  # set_epoch's choice, a loaded state's epoch, or the next one
        if self._loaded is not None and self._loaded.epoch == epoch:
            return self._loaded
        schedule = dataset._schedule.value
        # Until its workers join, this loader's own set_epoch reads as "chosen":
        # only a choice made since then starts an epoch afresh.
        if schedule.chosen and schedule.choices != self._choice:
            return Position(epoch)
        if self._position.layout is None:
            return Position(epoch)  # never begun, or the last one ended
        return self._position

    def state_dict(self) -> dict[str, Any]:
        """Where this loader stands: a JSON-serialisable dict, the same on every rank.

        Taken after any batch, it resumes right after that batch, on this
        layout or any other (also after a ``break``: the state is where the
        loop stopped). Taken after the last batch of an epoch but before the
        iterator ends, it resumes that epoch with nothing left. After
        ``set_epoch(n)`` and before the next iteration, epoch ``n`` from its
        start (or a loaded state of epoch ``n``).
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
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`, saved on this layout or another.

        The next iteration yields exactly the rows of the saved epoch that were
        not yet yielded, dealt out over this loader's ranks and workers.
        Persistent workers are restarted to take the new plan.

        Raises:
            StateError: the state is not a loader state, or it was saved from
                another dataset length, seed, shuffle or ``even`` (named).
            TypeError, ValueError: a field has the wrong type or value.
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
        layout = state["layout"]
        try:
            position = Position(
                epoch=non_negative_int("epoch", state["epoch"]),
                cuts=Rest.parse({"cuts": state["cuts"], "taken": None}).cuts,
                layout=None if layout is None else Layout(**dict(layout)),
                steps=non_negative_int("steps", state["steps"]),
            )
        except (TypeError, ValueError) as exc:
            raise StateError(f"not a valid anyloader.DataLoader state: {exc}") from None
        if position.steps and position.layout is None:
            raise StateError("a state that took steps must name its layout")
        if position.layout is not None:
            lay = position.layout
            steps = rank_steps(
                identity.num_rows,
                Rest(position.cuts),
                lay.world_size,
                lay.num_workers,
                lay.batch_size,
                even=identity.even,
            )
            if position.steps > max(steps):
                raise StateError(
                    f"steps={position.steps} is past the end of epoch {position.epoch}: "
                    f"{lay} takes {max(steps)} steps there. Not a state of this dataset's epoch."
                )
        self._loaded = position
        # Until an iteration starts, the dataset reports the loaded epoch.
        dataset._resume_rest(position.epoch, Rest(position.cuts))
        if self._iterator is not None:  # persistent workers hold the old plan
            self._iterator._shutdown_workers()  # type: ignore[attr-defined]
            self._iterator = None
