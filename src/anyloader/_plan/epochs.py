"""Which epoch an iteration reads, agreed between a process and its DataLoader workers.

Each new iteration reads the next epoch unless ``set_epoch`` chose one, so a
loop that never calls ``set_epoch`` (Lightning, most plain loops) still gets a
new shuffle every epoch. With ``num_workers=0`` the process iterating decides
alone. DataLoader workers cannot: they hold copies of the dataset, persistent
workers keep theirs for good, and the process that calls ``set_epoch`` never
iterates. So the schedule lives in a few shared integers (a lock-protected
``multiprocessing`` array) that the process and the workers it starts read
and write; ``Schedule`` is its value and the transitions are pure functions.

The workers of one DataLoader iteration must all read the same epoch. Each
calls ``iter(dataset)`` once per iteration, so the first to arrive opens the
iteration and the others join it; an iteration is recognised by its token
(the DataLoader's per-iterator base seed and the worker's own iteration
count) and closes when ``num_workers`` workers have joined.

Every iteration gets a number from the schedule, shared by all the workers of
one DataLoader iteration and larger than any before it: that number, not the
token (which repeats when torch is reseeded between epochs), is what the
stats channel files an epoch's stats under.

An ``anyloader.DataLoader`` does not leave the epoch to its workers: it
begins each iteration itself (:meth:`Schedule.begin`), handing fresh workers
the epoch and number in their copy of the dataset, and assigning them to the
token of its persistent workers' next iteration. A late worker of an
iteration the loop abandoned (it broke out before that worker started) then
cannot take the epoch meant for the next one.
"""

from __future__ import annotations

import multiprocessing
import os
import weakref
from dataclasses import astuple, dataclass, fields, replace
from typing import Any

__all__ = ["Schedule", "SharedSchedule"]


@dataclass(frozen=True)
class Schedule:
    """The epoch state shared by a process and its DataLoader workers.

    Attributes:
        next_epoch: the epoch the next iteration reads.
        chosen: ``next_epoch`` was chosen by ``set_epoch`` and no iteration
            has read it yet (it then wins over a loaded checkpoint's epoch).
        open_epoch: the epoch of the iteration that workers are joining.
        token_seed, token_count: which DataLoader iteration that is.
        arrivals: workers that have joined it.
        in_workers: the latest iteration ran in DataLoader workers, so this
            process does not know how far it got.
        iterations: iterations started so far; the latest one's number.
        open_number: the number of the iteration workers are joining.
        choices: ``set_epoch`` calls so far (tells a loader whether the user
            chose an epoch since its iteration began).
        assigned_seed, assigned_count: the token of the iteration a loader
            assigned ``assigned_epoch`` and ``assigned_number`` to.
    """

    next_epoch: int = 0
    chosen: bool = False
    open_epoch: int = -1
    token_seed: int = -1
    token_count: int = -1
    arrivals: int = 0
    in_workers: bool = False
    iterations: int = 0
    open_number: int = 0
    choices: int = 0
    assigned_seed: int = -1
    assigned_count: int = -1
    assigned_epoch: int = -1
    assigned_number: int = 0

    def choose(self, epoch: int) -> Schedule:
        """``set_epoch(epoch)``: the next iteration reads ``epoch``."""
        return replace(
            self,
            next_epoch=epoch,
            chosen=True,
            arrivals=0,
            token_seed=-1,
            choices=self.choices + 1,
        )

    def _epoch_for(self, resume_epoch: int | None) -> int:
        # A chosen epoch wins; else a checkpoint's; else the next in line.
        if self.chosen or resume_epoch is None:
            return self.next_epoch
        return resume_epoch

    def start_here(self, resume_epoch: int | None) -> tuple[Schedule, int, int]:
        """An iteration in this process (no DataLoader workers): return it, its epoch, number."""
        epoch = self._epoch_for(resume_epoch)
        number = self.iterations + 1
        started = Schedule(next_epoch=epoch + 1, iterations=number, choices=self.choices)
        return started, epoch, number

    def begin(
        self, epoch: int, *, in_workers: bool, token: tuple[int, int] | None
    ) -> tuple[Schedule, int]:
        """A loader begins an iteration of ``epoch``: return the schedule and its number.

        With ``token`` (its persistent workers' next iteration), workers that
        join with that token read ``epoch`` under that number, whatever else joined.
        """
        number = self.iterations + 1
        seed, count = token if token is not None else (-1, -1)
        begun = Schedule(
            next_epoch=epoch + 1,
            in_workers=in_workers,
            iterations=number,
            choices=self.choices,
            assigned_seed=seed,
            assigned_count=count,
            assigned_epoch=epoch,
            assigned_number=number,
        )
        return begun, number

    def join(
        self, token: tuple[int, int], num_workers: int, resume_epoch: int | None
    ) -> tuple[Schedule, int, int]:
        """A DataLoader worker starts iterating: open or join its iteration; return it, its
        epoch and number."""
        if token == (self.assigned_seed, self.assigned_count):
            return self, self.assigned_epoch, self.assigned_number
        joining = (self.token_seed, self.token_count) == token and 0 < self.arrivals < num_workers
        if joining:
            return replace(self, arrivals=self.arrivals + 1), self.open_epoch, self.open_number
        epoch = self._epoch_for(resume_epoch)
        number = self.iterations + 1
        opened = Schedule(
            next_epoch=epoch + 1,
            open_epoch=epoch,
            token_seed=token[0],
            token_count=token[1],
            arrivals=1,
            in_workers=True,
            iterations=number,
            open_number=number,
            choices=self.choices,
        )
        return opened, epoch, number


_FIELDS = len(astuple(Schedule()))

# Schedules owned by this process: before a fork, the ones this process did
# not create are made its own (see SharedSchedule._own).
_live: weakref.WeakSet[SharedSchedule] = weakref.WeakSet()


class SharedSchedule:
    """A :class:`Schedule` in shared memory, shared with the DataLoader workers of its owner.

    Guarantee: the owner process and the workers it starts (fork, spawn or
    forkserver, persistent or not) see one schedule. Any other process that
    gets a copy (``torch.multiprocessing.spawn`` ranks, an ``os.fork()``
    child, a plain ``pickle`` round trip) gets its own, starting from the
    value at the time of the copy.
    """

    def __init__(self, value: Schedule | None = None) -> None:
        self._create(value or Schedule())

    def _create(self, value: Schedule) -> None:
        self._owner = os.getpid()
        self._cells: Any = multiprocessing.get_context("spawn").Array("q", _FIELDS)
        self._write(value)
        _live.add(self)

    def _read(self) -> Schedule:
        values: dict[str, Any] = {
            f.name: bool(v) if f.type == "bool" else int(v)
            for f, v in zip(fields(Schedule), list(self._cells), strict=True)
        }
        return Schedule(**values)

    def _write(self, value: Schedule) -> None:
        self._cells[:] = [int(v) for v in astuple(value)]

    def _own(self) -> None:
        """Outside a worker of the owner, detach: this process's schedule is its own."""
        from torch.utils.data import get_worker_info

        if os.getpid() == self._owner:
            return
        if get_worker_info() is not None and os.getppid() == self._owner:
            return
        with self._cells.get_lock():
            value = self._read()
        self._create(value)

    @property
    def value(self) -> Schedule:
        """The schedule as this process sees it now."""
        self._own()
        with self._cells.get_lock():
            return self._read()

    def choose(self, epoch: int) -> None:
        """Apply :meth:`Schedule.choose`."""
        self._own()
        with self._cells.get_lock():
            self._write(self._read().choose(epoch))

    def begin(self, epoch: int, *, in_workers: bool, token: tuple[int, int] | None) -> int:
        """Apply :meth:`Schedule.begin`; return the iteration's number."""
        self._own()
        with self._cells.get_lock():
            value, number = self._read().begin(epoch, in_workers=in_workers, token=token)
            self._write(value)
        return number

    def start(
        self, *, token: tuple[int, int] | None, num_workers: int, resume_epoch: int | None
    ) -> tuple[int, int]:
        """Start an iteration (``token`` is None outside DataLoader workers): its epoch and number.

        Every worker of one DataLoader iteration gets the same number; a later
        iteration, in this process or in workers, a larger one.
        """
        self._own()
        with self._cells.get_lock():
            current = self._read()
            if token is None:
                value, epoch, number = current.start_here(resume_epoch)
            else:
                value, epoch, number = current.join(token, num_workers, resume_epoch)
            self._write(value)
        return epoch, number

    def __getstate__(self) -> dict[str, Any]:
        from multiprocessing.context import get_spawning_popen

        self._own()
        if get_spawning_popen() is not None:
            # A process being started (a DataLoader worker among them) shares it.
            return {"owner": self._owner, "cells": self._cells}
        return {"value": self.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "cells" in state:
            self._owner, self._cells = state["owner"], state["cells"]
            _live.add(self)
        else:
            self._create(state["value"])


def _own_before_fork() -> None:
    # A process that received a schedule (a rank started by
    # torch.multiprocessing.spawn) and forks DataLoader workers without having
    # touched it must own it first, or its workers would share the launcher's.
    for schedule in list(_live):
        schedule._own()


os.register_at_fork(before=_own_before_fork)
