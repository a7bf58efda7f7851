"""The checkpoint state as a value: ``Progress`` and ``IterationState`` transitions, pure."""

from __future__ import annotations

import json

import pytest
from _budget import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from anyloader import Shard, StateError
from anyloader._plan.state import Dataset, IterationState, Progress

DATASET = Dataset(num_rows=50, seed=1, shuffle=True, even=False)


@settings(max_examples=examples(300), deadline=None)
@given(data=st.data(), length=st.integers(0, 40))
def test_progress_records_exactly_what_was_delivered_and_stays_compact(
    data: st.DataObject, length: int
) -> None:
    delivered_order = data.draw(st.permutations(range(length)))
    cut = data.draw(st.integers(0, length))
    progress = Progress(epoch=0, length=length)
    # Delivered one at a time or in batches, in any order.
    rest = list(delivered_order[:cut])
    while rest:
        n = data.draw(st.integers(1, len(rest)))
        progress = progress.deliver(rest[:n])
        rest = rest[n:]
    delivered = set(delivered_order[:cut])
    assert progress.delivered == cut
    assert sorted(progress.remaining()) == sorted(set(range(length)) - delivered)
    assert list(progress.remaining()) == sorted(progress.remaining())  # plan order
    # Compact: the mark is the longest delivered prefix; only what lies beyond is listed.
    mark = next((p for p in range(length) if p not in delivered), length)
    assert progress.mark == mark
    assert progress.extra == tuple(sorted(p for p in delivered if p > mark))
    assert progress.complete == (cut == length)


def state_after(positions: list[int], shard: Shard | None = None) -> IterationState:
    state, progress, _ = IterationState(DATASET).start(shard or Shard(), epoch=2)
    assert state.latest is not None
    return state.deliver(state.latest.number, progress.deliver(positions))


def test_saved_state_round_trips_through_json_and_load() -> None:
    state = state_after([0, 1, 2, 7])
    saved = json.loads(json.dumps(state.saved(next_epoch=3, chosen=False)))
    assert (saved["epoch"], saved["position"], saved["delivered"]) == (2, 3, [7])
    loaded = IterationState(DATASET).load(saved)
    resumed, progress, _ = loaded.start(Shard(), epoch=2)
    assert list(progress.remaining()) == [3, 4, 5, 6, *range(8, 50)]
    assert resumed.resume is None  # used once


def test_an_older_iteration_does_not_move_the_state() -> None:
    state = state_after([0])
    old = state.latest
    assert old is not None
    newer, _, _ = state.start(Shard(), epoch=3)
    assert newer.deliver(old.number, Progress(2, 50, mark=40)) == newer


def test_a_chosen_epoch_saves_as_its_start() -> None:
    saved = state_after([0, 1]).saved(next_epoch=5, chosen=True)
    assert (saved["epoch"], saved["position"], saved["shard"]) == (5, 0, None)


def test_another_shard_layout_is_refused_when_the_iteration_starts() -> None:
    saved = state_after([0, 1], Shard(rank=0, world_size=2)).saved(next_epoch=3, chosen=False)
    loaded = IterationState(DATASET).load(saved)
    with pytest.raises(StateError, match=r"rank 0 of 2.*rank 1 of 2"):
        loaded.start(Shard(rank=1, world_size=2), epoch=2)
    # Another epoch means set_epoch chose anew: the checkpoint is dropped, not refused.
    _, progress, _ = loaded.start(Shard(rank=1, world_size=2), epoch=4)
    assert progress.delivered == 0
