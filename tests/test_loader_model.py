"""``anyloader.DataLoader``'s lifecycle, model-based: epochs, breaks, set_epoch, checkpoints.

A ``RuleBasedStateMachine`` drives a real loader (0 to 3 fork workers, persistent
or not, per-sample or batch mode, ``ordered`` or not, ``drop_last`` or not)
through any sequence of: start an iteration, take some batches, break out of the
loop, ``set_epoch``, reseed torch, and checkpoint at any moment (also right after
``iter()``, before the first batch) then resume in a *new* loader on another
layout (workers, batch size, ``drop_last``). The model is a few plain values: the
epoch, the rows it has delivered, whether a checkpoint is waiting.

After every step the loader's state names the model's epoch. Every epoch that
runs to its end must have yielded each row at most once over all the loaders that
shared it, and every row but those ``drop_last`` skipped (counted by
``skipped_rows`` beforehand); ``len(loader)`` must count its batches, and
``stats().rows`` the rows its iteration delivered.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import torch
from _budget import examples
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import anyloader

layouts = st.tuples(st.integers(0, 3), st.integers(1, 4), st.booleans(), st.booleans())


class LoaderLifecycle(RuleBasedStateMachine):
    @initialize(
        rows=st.integers(0, 30),
        batch_mode=st.booleans(),
        ordered=st.booleans(),
        layout=layouts,
    )
    def build(
        self, rows: int, batch_mode: bool, ordered: bool, layout: tuple[int, int, bool, bool]
    ) -> None:
        self.rows, self.batch_mode, self.ordered = rows, batch_mode, ordered
        self.loader = self.new_loader(*layout)
        self.iterator = None
        # The model.
        self.epoch = 0  # the latest iteration's epoch (or a loaded state's)
        self.delivered: Counter[int] = Counter()  # its rows so far
        self.started = False  # an iteration of this loader has begun
        self.finished = False  # ... and ran to its end
        self.resume_pending = False  # a loaded state waits for the next iteration
        self.chosen: int | None = None  # set_epoch, not yet started
        # This iteration: the batches and rows it must yield, what it has.
        self.expected_batches = self.batches = self.rows_now = self.skipped = 0

    def new_loader(
        self, workers: int, batch: int, persistent: bool, drop_last: bool
    ) -> anyloader.DataLoader:
        ds = anyloader.AsyncDataset(
            anyloader.MemorySource({"x": np.arange(self.rows)}),
            shuffle=True,
            seed=9,
            return_index=True,
            ordered=self.ordered,
            concurrency=3,
            batch_size=batch if self.batch_mode else None,
        )
        kwargs = {} if self.batch_mode else {"batch_size": batch}
        if workers:
            kwargs.update(multiprocessing_context="fork", persistent_workers=persistent)
        return anyloader.DataLoader(ds, num_workers=workers, drop_last=drop_last, **kwargs)

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

    @precondition(lambda self: self.iterator is None)
    @rule()
    def start(self) -> None:
        if self.chosen is not None:
            if not (self.resume_pending and self.chosen == self.epoch):
                self.epoch, self.delivered = self.chosen, Counter()
        elif not self.resume_pending and self.started:
            self.epoch, self.delivered = self.epoch + 1, Counter()
        self.chosen, self.resume_pending = None, False
        self.started, self.finished = True, False
        self.expected_batches = len(self.loader)
        self.skipped = self.loader.skipped_rows
        self.batches = self.rows_now = 0
        self.iterator = iter(self.loader)

    @rule(k=st.integers(1, 6))
    def take(self, k: int) -> None:
        if self.iterator is None:
            self.start()
        assert self.iterator is not None
        for _ in range(k):
            batch = next(self.iterator, None)
            if batch is None:
                # The epoch ended normally: each row at most once over every loader
                # that shared it, all but what drop_last skipped; len(loader) counted
                # this loader's batches, its stats the rows it delivered.
                assert len(self.delivered) + self.skipped == self.rows, self.epoch
                assert self.batches == self.expected_batches
                assert self.loader.stats().rows == self.rows_now
                self.iterator, self.finished = None, True
                return
            rows = np.asarray(batch["index"]).reshape(-1).tolist()
            self.batches += 1
            self.rows_now += len(rows)
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

    @rule(seed=st.integers(0, 2))
    def reseed_torch(self, seed: int) -> None:
        # Workers' base seeds repeat: nothing of anyloader's may depend on them.
        torch.manual_seed(seed)

    @rule(layout=layouts)
    def checkpoint_and_resume_elsewhere(self, layout: tuple[int, int, bool, bool]) -> None:
        state = json.loads(json.dumps(self.loader.state_dict()))
        epoch, delivered = self.snapshot()
        assert state["epoch"] == epoch
        self.retire()
        self.loader = self.new_loader(*layout)  # a new process, another layout
        self.loader.load_state_dict(state)
        self.epoch, self.delivered = epoch, Counter(delivered)
        self.resume_pending, self.chosen = True, None
        self.started, self.finished = False, False

    def retire(self) -> None:
        """Stop this loader's workers now, as the end of its process would.

        Left to the garbage collector, a replaced loader's persistent workers
        would be shut down at whatever allocation triggers it, often inside
        the next loader's worker start-up, whose forks then wait on them.
        """
        self.iterator = None
        if self.loader._iterator is not None:
            self.loader._iterator._shutdown_workers()
            self.loader._iterator = None

    def teardown(self) -> None:
        if hasattr(self, "loader"):
            self.retire()

    @invariant()
    def the_loaders_epoch_is_the_models(self) -> None:
        if hasattr(self, "loader"):
            assert self.loader.state_dict()["epoch"] == self.snapshot()[0]


LoaderLifecycle.TestCase.settings = settings(
    max_examples=examples(40), stateful_step_count=14, deadline=None
)
test_loader_lifecycle = LoaderLifecycle.TestCase
