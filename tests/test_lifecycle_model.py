"""The dataset's whole lifecycle against a plain reference model (``hypothesis.stateful``).

The rules are a user's moves: ``set_epoch``, ``iter``, ``next`` k times,
``close``/``break``, ``state_dict``, loading a state into a fresh dataset (a
new process), a pickle round trip, and whole epochs through DataLoader worker
processes, persistent or not. The model is a few plain values: the next epoch,
whether ``set_epoch`` chose it, a loaded resume point, and the current
iteration's epoch with the list of rows delivered so far.

After every step: ``state_dict()`` names the epoch the model expects, and a
fresh dataset loaded with it delivers exactly the rows of that epoch not yet
delivered (in plan order with ``ordered=True``): delivered + resumed = the
epoch, exactly once.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
import pytest
from _budget import examples
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from torch.utils.data import DataLoader

from anyloader import AsyncDataset, MemorySource, Shard, shard_rows
from anyloader._sources.source import Columns

ROWS = 17
SEED = 3


class OutOfOrderSource:
    """Rows complete out of order (a row-dependent number of scheduler turns), without sleeping."""

    def __init__(self, n: int) -> None:
        self._inner = MemorySource({"row": np.arange(n)})

    @property
    def columns(self) -> tuple[str, ...]:
        return ("row",)

    def __len__(self) -> int:
        return len(self._inner)

    async def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> Columns:
        for _ in range(int(indices[0]) * 7919 % 5):
            await anyio.lowlevel.checkpoint()
        return await self._inner.fetch(indices, columns)


def epoch_order(epoch: int) -> list[int]:
    """The reference: the epoch's rows in plan order (the plan is proven in test_plan.py)."""
    return shard_rows(ROWS, Shard(), seed=SEED, epoch=epoch, shuffle=True).tolist()


@dataclass
class Iteration:
    epoch: int
    delivered: list[int] = field(default_factory=list)


class Lifecycle(RuleBasedStateMachine):
    backend = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self.ordered = True
        self.ds = self.fresh()
        self.it: Any = None
        # The model.
        self.next_epoch = 0
        self.chosen = False
        self.resume: Iteration | None = None
        self.current: Iteration | None = None
        self.in_workers = False
        self.saved: list[tuple[dict[str, Any], Iteration]] = []

    def fresh(self) -> AsyncDataset:
        return AsyncDataset(
            OutOfOrderSource(ROWS), backend=self.backend, shuffle=True, seed=SEED,
            ordered=self.ordered, concurrency=4, fetch_size=2,
        )  # fmt: skip

    @rule(ordered=st.booleans())
    def start_over(self, ordered: bool) -> None:
        """A new training run: a fresh dataset, ordered or not."""
        self.close()
        self.ordered = ordered
        self.ds = self.fresh()
        self.next_epoch, self.chosen, self.resume, self.current = 0, False, None, None
        self.in_workers = False

    # --- the model's view -------------------------------------------------------

    def expected_state(self) -> Iteration:
        """The iteration ``state_dict()`` must describe."""
        if self.chosen:
            return Iteration(self.next_epoch)
        if self.resume is not None:
            return self.resume
        if self.current is not None:
            return self.current
        return Iteration(self.next_epoch)

    def start_epoch(self) -> Iteration:
        """What the model says the next iteration reads, from where."""
        resume = self.resume
        epoch = self.next_epoch if self.chosen or resume is None else resume.epoch
        delivered = list(resume.delivered) if resume and resume.epoch == epoch else []
        self.next_epoch, self.chosen, self.resume = epoch + 1, False, None
        return Iteration(epoch, delivered)

    # --- the user's moves -------------------------------------------------------

    @rule(epoch=st.integers(0, 4))
    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)
        self.next_epoch, self.chosen = epoch, True

    @precondition(lambda self: self.it is None)
    @rule()
    def start(self) -> None:
        self.it = iter(self.ds)
        self.current = self.start_epoch()
        self.in_workers = False

    @precondition(lambda self: self.it is not None)
    @rule(k=st.integers(1, 8))
    def take(self, k: int) -> None:
        assert self.current is not None
        order = epoch_order(self.current.epoch)
        for _ in range(k):
            remaining = [r for r in order if r not in self.current.delivered]
            try:
                row = int(next(self.it)["row"])
            except StopIteration:
                assert remaining == [], f"the iteration ended with {remaining} undelivered"
                self.close()
                return
            assert row in remaining, f"row {row} twice, or not of epoch {self.current.epoch}"
            if self.ordered:
                assert row == remaining[0]
            self.current.delivered.append(row)

    @precondition(lambda self: self.it is not None)
    @rule()
    def close(self) -> None:
        if self.it is not None:
            self.it.close()
            self.it = None

    @rule()
    def save(self) -> None:
        if self.in_workers and not self.chosen:
            with pytest.raises(RuntimeError, match="StatefulDataLoader"):
                self.ds.state_dict()  # it cannot see how far the workers got
            return
        self.saved.append((self.ds.state_dict(), self.copy(self.expected_state())))

    @precondition(lambda self: self.saved)
    @rule(data=st.data())
    def load_into_a_new_process(self, data: st.DataObject) -> None:
        state, view = data.draw(st.sampled_from(self.saved))
        self.close()
        self.ds = self.fresh()
        self.ds.load_state_dict(state)
        self.next_epoch, self.chosen, self.current = 0, False, None
        self.resume, self.in_workers = self.copy(view), False

    @precondition(lambda self: self.it is None)
    @rule()
    def pickle_round_trip(self) -> None:
        self.ds = pickle.loads(pickle.dumps(self.ds))

    @precondition(lambda self: self.it is None and self.resume is None)
    @rule(persistent=st.booleans())
    def epoch_in_workers(self, persistent: bool) -> None:
        loader = DataLoader(
            self.ds, batch_size=None, num_workers=2, persistent_workers=persistent,
            multiprocessing_context="fork",
        )  # fmt: skip
        got = [int(s["row"]) for s in loader]
        epoch = self.start_epoch().epoch
        assert sorted(got) == list(range(ROWS)), "an epoch through workers is exactly once"
        assert sorted(got) == sorted(epoch_order(epoch))
        self.in_workers, self.current = True, None

    # --- what must hold after every step ---------------------------------------

    @staticmethod
    def copy(it: Iteration) -> Iteration:
        return Iteration(it.epoch, list(it.delivered))

    @invariant()
    def resuming_now_completes_the_epoch_exactly_once(self) -> None:
        if self.in_workers and not self.chosen:
            return  # this process cannot know, and state_dict refuses (see save)
        state = self.ds.state_dict()
        view = self.expected_state()
        assert state["epoch"] == view.epoch
        assert state["position"] + len(state["delivered"]) == len(view.delivered)
        resumed = self.fresh()
        resumed.load_state_dict(state)
        rest = [int(s["row"]) for s in resumed]
        order = epoch_order(view.epoch)
        if self.ordered:
            assert view.delivered + rest == order
        else:
            assert sorted(view.delivered + rest) == sorted(order)
        assert resumed.epoch == view.epoch + 1

    def teardown(self) -> None:
        self.close()


SETTINGS = settings(max_examples=examples(60), stateful_step_count=20, deadline=None)


@SETTINGS
class AsyncioLifecycle(Lifecycle):
    backend = "asyncio"


@SETTINGS
class TrioLifecycle(Lifecycle):
    backend = "trio"


TestAsyncioLifecycle = AsyncioLifecycle.TestCase
TestTrioLifecycle = TrioLifecycle.TestCase
