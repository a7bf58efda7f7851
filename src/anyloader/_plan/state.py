"""Checkpoint state: where an iteration stands, as a value with named transitions.

``IterationState`` changes only through its transitions: :meth:`~IterationState.start`
(an iteration begins), :meth:`~IterationState.deliver` (samples reached the
consumer), :meth:`~IterationState.load` (a checkpoint). ``set_epoch`` and the
epoch sequence live in the shared :class:`~anyloader._plan.epochs.Schedule`.
:meth:`~IterationState.saved` turns it into the JSON-serialisable dict that
``state_dict()`` returns; that dict carries everything resuming depends on
(the dataset's length, seed, shuffle, ``even`` and the shard), so
:meth:`~IterationState.load` refuses a state it cannot honour and names why.

Positions are indices into one shard's epoch order. ``Progress`` records which
were delivered exactly, as a mark (all below it) plus the positions at or
above it, so resuming is exact with ``ordered=False`` too, where rows arrive
out of plan order. The engine hands out work in plan order and bounds rows
ahead of the consumer, so those extra positions are few (at most the budget).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from .._core.checks import non_negative_int, positive_int
from .order import Order, epoch_order
from .plan import Positions, Rest, Shard, ShardPlan, shard_plan

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Dataset", "IterationState", "Progress", "StateError"]

VERSION = 3
_KEYS = frozenset(
    {"version", "dataset", "epoch", "position", "delivered", "length", "shard", "rest"}
)


class OrderOptions(Protocol):
    """The options an epoch's order depends on (``Options`` has them, among others)."""

    @property
    def seed(self) -> int: ...
    @property
    def shuffle(self) -> bool: ...
    @property
    def even(self) -> bool: ...
    @property
    def shuffle_block_size(self) -> int | None: ...
    @property
    def shuffle_window(self) -> int: ...


class StateError(ValueError):
    """A checkpoint state that this dataset cannot honour (the message says why)."""


@dataclass(frozen=True)
class Dataset:
    """What a shard's positions mean: the fields a state must share with the dataset."""

    num_rows: int
    seed: int
    shuffle: bool
    even: bool
    shuffle_block_size: int | None = None
    shuffle_window: int = 1

    @classmethod
    def of(cls, num_rows: int, options: OrderOptions) -> Dataset:
        """The identity of a dataset of ``num_rows`` read with ``options``."""
        o = options
        return cls(num_rows, o.seed, o.shuffle, o.even, o.shuffle_block_size, o.shuffle_window)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def check(self, saved: object) -> None:
        """Refuse a checkpoint of another dataset (its ``"dataset"`` entry).

        Only what the order depends on is compared: the seed only when
        shuffling, the window only with blocks. A checkpoint that differs in
        an unused option resumes the same epoch, and is accepted.

        Raises:
            StateError: naming the first field that differs and both values.
        """
        if not isinstance(saved, Mapping):
            raise StateError(f"the state's dataset must be a mapping, got {saved!r}")
        theirs, mine = _used(saved), _used(vars(self))
        # Whether the order shuffles decides what else matters: name it first.
        for name in sorted(vars(self), key=lambda n: n != "shuffle"):
            if theirs.get(name) != mine[name]:
                raise StateError(
                    f"the checkpoint was saved with {name}={saved.get(name)!r}, this dataset has "
                    f"{name}={getattr(self, name)!r}: resuming would not continue the same epoch"
                )

    def order(self, epoch: int) -> Order:
        """The epoch's order of rows."""
        return epoch_order(
            self.num_rows,
            seed=self.seed,
            epoch=epoch,
            shuffle=self.shuffle,
            block_size=self.shuffle_block_size,
            window=self.shuffle_window,
        )


def _used(identity: Mapping[str, Any]) -> dict[str, Any]:
    """``identity`` with the options the order does not use blanked out."""
    used = dict(identity)
    if not used.get("shuffle"):
        used.update(seed=None, shuffle_block_size=None, shuffle_window=None)
    elif used.get("shuffle_block_size") is None:
        used["shuffle_window"] = None
    return used


@dataclass(frozen=True)
class Progress:
    """Which positions of one shard's epoch have been delivered.

    Every position below ``mark`` was delivered, and those in ``extra`` (all
    at or above ``mark``, sorted). ``length`` is the shard's size.
    """

    epoch: int
    length: int
    mark: int = 0
    extra: tuple[int, ...] = ()

    @property
    def delivered(self) -> int:
        return self.mark + len(self.extra)

    @property
    def complete(self) -> bool:
        return self.mark >= self.length

    def deliver(self, positions: Sequence[int]) -> Progress:
        """These positions reached the consumer."""
        n, mark = len(positions), self.mark
        # Plan order (always, with ordered=True): the mark moves, nothing else.
        in_order = n == 1 or list(positions) == list(range(mark, mark + n))
        if n and not self.extra and positions[0] == mark and in_order:
            return Progress(self.epoch, self.length, mark + n)
        mark, extra = self.mark, set(self.extra)
        for p in positions:
            if p == mark:
                mark += 1
            else:
                extra.add(p)
            while mark in extra:
                extra.remove(mark)
                mark += 1
        return replace(self, mark=mark, extra=tuple(sorted(extra)))

    def remaining(self) -> range | Positions:
        """Positions not delivered yet, in plan order (lazily: nothing per row)."""
        if not self.extra:
            return range(self.mark, self.length)
        return Positions(self.mark, self.length, self.extra)


@dataclass(frozen=True)
class _Iteration:
    number: int  # tells a newer iterator from an older one still alive
    shard: Shard
    progress: Progress
    rest: Rest  # the plan's rest of the epoch, saved with the progress through it


@dataclass(frozen=True)
class _Resume:
    """A loaded checkpoint. It resumes its own epoch: one taken after the epoch's
    last item resumes it with nothing left, and the iteration after reads the next."""

    shard: Shard | None  # None: nothing delivered in a shard, any layout may resume
    progress: Progress
    rest: Rest  # what earlier layouts took from the epoch (anyloader.DataLoader)


def _shard_text(shard: Shard) -> str:
    return (
        f"rank {shard.rank} of {shard.world_size}, DataLoader worker {shard.worker_id} "
        f"of {shard.num_workers}"
    )


@dataclass(frozen=True)
class IterationState:
    """A dataset's checkpoint state in this process: a loaded resume point, the latest iteration."""

    dataset: Dataset
    resume: _Resume | None = None
    latest: _Iteration | None = None

    def start(self, shard: Shard, epoch: int) -> tuple[IterationState, Progress, ShardPlan]:
        """An iteration of ``shard`` reading ``epoch`` begins: its progress and plan.

        It resumes from the loaded checkpoint if that is of the same epoch (a
        checkpoint of another epoch means ``set_epoch`` chose anew: it is
        dropped); the checkpoint is used once.

        Raises:
            StateError: the checkpoint was saved by another shard layout.
        """
        resume = self.resume
        if resume is None or resume.progress.epoch != epoch:
            resume = None
        try:
            plan = shard_plan(
                self.dataset.order(epoch),
                shard,
                resume.rest if resume else Rest(),
                even=self.dataset.even,
            )
        except ValueError as exc:
            raise StateError(f"the checkpoint cannot resume here: {exc}") from None
        progress = Progress(epoch=epoch, length=plan.length)
        # A checkpoint that names no shard delivered nothing in one: a fresh start.
        if resume is not None and resume.shard is not None:
            if resume.shard != shard:
                raise StateError(
                    f"the checkpoint was saved by {_shard_text(resume.shard)}; this iteration is "
                    f"{_shard_text(shard)}. Resume with the same world size and num_workers, "
                    "or use anyloader.DataLoader, whose state resumes on any layout."
                )
            if resume.progress.length != plan.length:
                raise StateError(
                    f"the checkpoint's shard has {resume.progress.length} rows, this one "
                    f"{plan.length}"
                )
            progress = resume.progress
        number = self.latest.number + 1 if self.latest else 0
        rest = resume.rest if resume else Rest()
        started = IterationState(self.dataset, None, _Iteration(number, shard, progress, rest))
        return started, progress, plan

    def forget_resume(self) -> IterationState:
        """The loaded checkpoint was taken up elsewhere (by DataLoader workers' copies)."""
        return replace(self, resume=None)

    def resume_rest(self, epoch: int, rest: Rest) -> IterationState:
        """The next iteration of ``epoch`` reads only what ``rest`` leaves (for ``DataLoader``)."""
        return replace(self, resume=_Resume(None, Progress(epoch=epoch, length=0), rest))

    def deliver(self, number: int, progress: Progress) -> IterationState:
        """Iteration ``number`` has delivered ``progress``; an older iteration changes nothing."""
        latest = self.latest
        if latest is None or latest.number != number:
            return self
        # Once per sample: plain constructors, not dataclasses.replace (3x slower).
        return IterationState(
            self.dataset, self.resume, _Iteration(number, latest.shard, progress, latest.rest)
        )

    def load(self, state: Mapping[str, Any]) -> IterationState:
        """A checkpoint from :meth:`saved`: the next iteration resumes from it.

        Raises:
            StateError: keys missing, or the state describes another dataset (the
                message names the field and both values).
            TypeError: a value has the wrong type.
        """
        if not isinstance(state, Mapping):
            raise TypeError(
                f"state must be a mapping from state_dict(), got {type(state).__name__}"
            )
        missing = sorted(
            {"version", "dataset", "epoch", "position", "delivered", "shard"} - set(state)
        )
        if missing:
            raise StateError(f"state is missing {missing}; pass what state_dict() returned")
        if state["version"] != VERSION:
            raise StateError(
                f"state has version {state['version']!r}, this anyloader reads {VERSION}"
            )
        self.dataset.check(state["dataset"])
        shard = None
        if state["shard"] is not None:
            s = state["shard"]
            shard = Shard(
                rank=non_negative_int("rank", s["rank"]),
                world_size=positive_int("world_size", s["world_size"]),
                worker_id=non_negative_int("worker_id", s["worker_id"]),
                num_workers=positive_int("num_workers", s["num_workers"]),
            )
        extra = tuple(non_negative_int("delivered", p) for p in state["delivered"])
        progress = Progress(
            epoch=non_negative_int("epoch", state["epoch"]),
            length=non_negative_int("length", state["length"]),
            mark=non_negative_int("position", state["position"]),
            extra=tuple(sorted(extra)),
        )
        if shard is None and progress.delivered:
            raise StateError("a state that delivered rows must name its shard")
        if any(p < progress.mark for p in extra) or len(set(extra)) != len(extra):
            raise StateError(f"delivered positions {list(extra)} overlap position {progress.mark}")
        if progress.mark > progress.length or any(p >= progress.length for p in extra):
            raise StateError(
                f"position {progress.mark} (delivered {list(extra)}) is past the end of the "
                f"shard's {progress.length} rows: not a state of this epoch"
            )
        try:
            rest = Rest.parse(state.get("rest"))
        except ValueError as exc:
            raise StateError(str(exc)) from None
        return replace(self, resume=_Resume(shard, progress, rest))

    def saved(self, next_epoch: int, chosen: bool) -> dict[str, Any]:
        """``state_dict()``: what the next iteration would resume from if loaded now.

        With an epoch chosen by ``set_epoch`` and not started yet, that epoch
        from its start; else a loaded, unused checkpoint; else the latest
        iteration as far as it got; else ``next_epoch`` from its start.
        """
        shard: Shard | None = None
        rest = Rest()
        if chosen:
            progress = Progress(epoch=next_epoch, length=0)
        elif self.resume is not None:
            shard, progress, rest = self.resume.shard, self.resume.progress, self.resume.rest
        elif self.latest is not None:
            shard, progress, rest = self.latest.shard, self.latest.progress, self.latest.rest
        else:
            progress = Progress(epoch=next_epoch, length=0)
        return {
            "version": VERSION,
            "dataset": self.dataset.as_dict(),
            "epoch": progress.epoch,
            "position": progress.mark,
            "delivered": list(progress.extra),
            "length": progress.length,
            "shard": None if shard is None else dict(vars(shard)),
            "rest": rest.as_dict(),
        }
