"""``anyloader.DataLoader``'s lifecycle, model-based: epochs, breaks, set_epoch, checkpoints.

A ``RuleBasedStateMachine`` drives a real loader (0, 1 or 2 fork workers,
per-sample or batch mode) through any sequence of: take some batches, break
out of the loop, ``set_epoch``, and checkpoint then resume in a *new* loader
on another layout (workers and batch size). The model is a few plain values:
the epoch, the rows it has delivered, whether a checkpoint is waiting. Every
epoch that runs to its end must have yielded each row exactly once over all
the loaders that shared it, and ``len(loader)`` must count its batches.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import anyloader


class LoaderLifecycle(RuleBasedStateMachine):
    @initialize(
        rows=st.integers(0, 30),
        batch_mode=st.booleans(),
        workers=st.integers(0, 2),
        batch=st.integers(1, 4),
    )
    def build(self, rows: int, batch_mode: bool, workers: int, batch: int) -> None:
        self.rows, self.batch_mode = rows, batch_mode
        self.loader = self.new_loader(workers, batch)
        self.iterator = None
        # The model.
        self.epoch = 0  # the latest iteration's epoch (or a loaded state's)
        self.delivered: Counter[int] = Counter()  # its rows so far
        self.started = False  # an iteration of this loader has begun
        self.finished = False  # ... and ran to its end
        self.resume_pending = False  # a loaded state waits for the next iteration
        self.chosen: int | None = None  # set_epoch, not yet started
        self.expected_batches = 0
        self.batches = 0

    def new_loader(self, workers: int, batch: int) -> anyloader.DataLoader:
        ds = anyloader.AsyncDataset(
            anyloader.MemorySource({"x": np.arange(self.rows)}),
            shuffle=True,
            seed=9,
            return_index=True,
            batch_size=batch if self.batch_mode else None,
        )
        kwargs = {} if self.batch_mode else {"batch_size": batch}
        return anyloader.DataLoader(ds, num_workers=workers, **kwargs)

    def snapshot(self) -> tuple[int, Counter[int]]:
        """What a checkpoint taken now resumes: (epoch, rows already delivered)."""
        if self.chosen is not None:
            if self.resume_pending and self.chosen == self.epoch:
                return self.epoch, self.delivered
            return self.chosen, Counter()
        if self.resume_pending:
            return self.epoch, self.delivered
        if self.finished:
            return self.epoch + 1, Counter()
        if not self.started:
            return self.epoch, Counter()
        return self.epoch, self.delivered

    def start(self) -> None:
        if self.chosen is not None:
            if not (self.resume_pending and self.chosen == self.epoch):
                self.epoch, self.delivered = self.chosen, Counter()
        elif not self.resume_pending and self.started:
            self.epoch, self.delivered = self.epoch + 1, Counter()
        self.chosen, self.resume_pending = None, False
        self.started, self.finished = True, False
        self.expected_batches = len(self.loader)
        self.batches = 0
        self.iterator = iter(self.loader)

    @rule(k=st.integers(1, 6))
    def take(self, k: int) -> None:
        if self.iterator is None:
            self.start()
        assert self.iterator is not None
        for _ in range(k):
            batch = next(self.iterator, None)
            if batch is None:
                # The epoch ended normally: every row exactly once, over every
                # loader that shared it; len(loader) counted this loader's batches.
                assert self.delivered == Counter(range(self.rows)), self.epoch
                assert self.batches == self.expected_batches
                self.iterator, self.finished = None, True
                return
            rows = np.asarray(batch["index"]).reshape(-1).tolist()
            self.batches += 1
            self.delivered.update(rows)
            assert max(self.delivered.values()) == 1, "a row twice in one epoch"

    @precondition(lambda self: self.iterator is not None)
    @rule()
    def break_out(self) -> None:
        # Leaving the loop mid-epoch: the next iteration here reads the next epoch,
        # but a checkpoint taken now resumes this one where it stopped.
        self.iterator = None
        self.finished = False

    @precondition(lambda self: self.iterator is None)
    @rule(epoch=st.integers(0, 3))
    def set_epoch(self, epoch: int) -> None:
        self.loader.dataset.set_epoch(epoch)
        self.chosen = epoch

    @rule(workers=st.integers(0, 2), batch=st.integers(1, 4))
    def checkpoint_and_resume_elsewhere(self, workers: int, batch: int) -> None:
        state = json.loads(json.dumps(self.loader.state_dict()))
        epoch, delivered = self.snapshot()
        assert state["epoch"] == epoch
        self.iterator = None
        self.loader = self.new_loader(workers, batch)  # a new process, another layout
        self.loader.load_state_dict(state)
        self.epoch, self.delivered = epoch, Counter(delivered)
        self.resume_pending, self.chosen = True, None
        self.started, self.finished = False, False

    @invariant()
    def the_loaders_epoch_is_the_models(self) -> None:
        if self.iterator is None and hasattr(self, "loader"):
            assert self.loader.state_dict()["epoch"] == self.snapshot()[0]


LoaderLifecycle.TestCase.settings = settings(max_examples=25, stateful_step_count=12, deadline=None)
test_loader_lifecycle = LoaderLifecycle.TestCase
