"""BatchMemory: batch memory is reused only once nothing can read it any more."""

from __future__ import annotations

import gc
from typing import Any

import torch
from _budget import examples
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from anyloader._batch.memory import BatchMemory

SHAPES = [(2, 3, 4), (4, 6), (3, 8), (1,), (0, 5)]  # (2,3,4), (4,6) and (3,8) share a size
DTYPES = [torch.uint8, torch.bool, torch.float32, torch.int64]


class ReuseMachine(RuleBasedStateMachine):
    """Allocate, derive every kind of handle, drop handles in any order.

    Model: each live handle (the tensor, a view of it, a numpy array of it, a
    slice, a transpose, a tensor on its storage) must keep reading the value
    written when its tensor was allocated. If memory were handed out again
    while any handle lived, filling the new tensor would change what an older
    handle reads. Handles live in a plain list, never in Hypothesis bundles,
    which would keep them all alive.
    """

    def __init__(self) -> None:
        super().__init__()
        self.memory = BatchMemory(shared=False)
        self.live: list[tuple[Any, int]] = []  # (handle, the value it must read)
        self.value = 0

    @rule(shape=st.sampled_from(SHAPES), dtype=st.sampled_from(DTYPES))
    def allocate(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        tensor = self.memory.empty(shape, dtype)
        assert tuple(tensor.shape) == shape
        assert tensor.dtype == dtype
        self.value = self.value % 100 + 1
        value = self.value if dtype != torch.bool else 1
        tensor.fill_(value)
        self.live.append((tensor, value))

    @rule(
        pick=st.integers(0, 10**6),
        kind=st.sampled_from(["view", "numpy", "slice", "t", "storage"]),
    )
    def derive(self, pick: int, kind: str) -> None:
        if not self.live:
            return
        source, value = self.live[pick % len(self.live)]
        tensor = torch.as_tensor(source)
        if kind == "view":
            handle: Any = tensor.view(-1) if tensor.is_contiguous() else tensor.unsqueeze(0)
        elif kind == "numpy":
            handle = tensor.numpy()
        elif kind == "slice":
            handle = tensor[1:]
        elif kind == "t":
            handle = tensor.transpose(0, -1)
        else:  # shares the storage, yet is no view: it does not keep `tensor` alive
            handle = torch.empty(0, dtype=tensor.dtype).set_(tensor.untyped_storage())
        self.live.append((handle, value))

    @rule(pick=st.integers(0, 10**6))
    def drop(self, pick: int) -> None:
        if self.live:
            del self.live[pick % len(self.live)]
            gc.collect()  # not needed by refcounting; makes any cycle's release prompt too

    @invariant()
    def every_live_handle_reads_its_own_value(self) -> None:
        for handle, value in self.live:
            data = torch.as_tensor(handle)
            if data.numel():
                assert bool((data == value).all()), "a live batch's memory was handed out again"


ReuseMachine.TestCase.settings = settings(
    max_examples=examples(80), stateful_step_count=30, deadline=None
)
test_memory_is_reused_only_when_nothing_reads_it = ReuseMachine.TestCase


def test_freed_batch_memory_is_reused_and_held_memory_never() -> None:
    memory = BatchMemory(shared=False)
    first = memory.empty((32, 64, 64, 3), torch.uint8)
    kept = first[:4]  # a view keeps all of it
    ptr = first.data_ptr()
    del first
    second = memory.empty((32, 64, 64, 3), torch.uint8)
    assert second.data_ptr() != ptr  # `kept` still reads it
    del kept
    third = memory.empty((32, 64, 64, 3), torch.uint8)
    assert third.data_ptr() == ptr  # nothing reads it any more: reused, no fresh pages
    assert second.data_ptr() != third.data_ptr()
    memory.close()  # the epoch is over: nothing is kept for a next batch
    del second, third
    assert not any(memory._free.values())


def test_worker_batches_are_shared_and_never_recycled() -> None:
    memory = BatchMemory(shared=True)
    tensor = memory.empty((4, 8), torch.float32)
    assert tensor.is_shared()
    assert tuple(tensor.shape) == (4, 8)
    assert not memory._free
    del tensor
    gc.collect()
    assert not memory._free  # another process may still read a batch a worker let go of
