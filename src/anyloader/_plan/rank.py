"""Which shard this process reads: distributed rank times DataLoader worker.

The rank is resolved when an iteration starts, in the process that iterates,
never when a dataset is built or pickled: a dataset built in a launcher and
handed to ``torch.multiprocessing.spawn`` is pickled before any process group
exists, and must still read as the rank it lands in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .._core.checks import non_negative_int, positive_int
from .plan import Shard

__all__ = ["Ranks", "check_rank", "current_shard", "resolve_rank"]


def check_rank(rank: int | None, world_size: int | None) -> None:
    """Validate an explicit ``rank``/``world_size`` pair (both or neither).

    Raises:
        TypeError: a value is not an int.
        ValueError: only one is given, or ``rank`` is not in ``[0, world_size)``.
    """
    if (rank is None) != (world_size is None):
        raise ValueError(
            f"give rank and world_size together or not at all, got rank={rank!r}, "
            f"world_size={world_size!r}"
        )
    if rank is not None and world_size is not None:
        non_negative_int("rank", rank)
        positive_int("world_size", world_size)
        if rank >= world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")


def _process_group() -> tuple[int, int] | None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def _environment() -> tuple[int, int] | None:
    env_rank, env_world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if env_rank is None or env_world is None:
        return None
    try:
        r, w = int(env_rank), int(env_world)
    except ValueError:
        raise ValueError(
            f"RANK={env_rank!r} and WORLD_SIZE={env_world!r} must be integers"
        ) from None
    check_rank(r, w)
    return r, w


def resolve_rank(
    rank: int | None = None,
    world_size: int | None = None,
    *,
    parent: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """Return ``(rank, world_size)`` for this process.

    Precedence: the explicit arguments; an initialised ``torch.distributed``
    process group; ``parent``, the rank of the process that started this
    DataLoader worker (spawned workers have no process group); the
    ``RANK``/``WORLD_SIZE`` variables ``torchrun`` sets; else ``(0, 1)``.

    Raises:
        ValueError: if the environment variables are malformed.
    """
    if rank is not None and world_size is not None:
        return rank, world_size
    return _process_group() or parent or _environment() or (0, 1)


@dataclass(frozen=True)
class Ranks:
    """How a dataset finds its rank: explicit values, or the process it runs in.

    ``parent`` is set on the copy a process pickles: its own pid and rank. Only
    a DataLoader worker whose parent process is that pid uses it.
    """

    rank: int | None = None
    world_size: int | None = None
    parent: tuple[int, tuple[int, int]] | None = None

    def resolve(self) -> tuple[int, int]:
        """``(rank, world_size)`` for the calling process (see :func:`resolve_rank`)."""
        from torch.utils.data import get_worker_info

        # A parent's rank means nothing outside a worker it started itself: not
        # in a process that torch.multiprocessing.spawn started with a pickled
        # dataset, nor in a fork-started worker of that process.
        parent = None
        if self.parent is not None and get_worker_info() is not None:
            pid, ranks = self.parent
            parent = ranks if pid == os.getppid() else None
        return resolve_rank(self.rank, self.world_size, parent=parent)

    def for_pickle(self) -> Ranks:
        """This value with the calling process's pid and rank, for a worker it may start."""
        return Ranks(self.rank, self.world_size, parent=(os.getpid(), self.resolve()))


def current_shard(ranks: Ranks | None = None) -> Shard:
    """The shard of the calling DataLoader worker (or main process) on this rank."""
    from torch.utils.data import get_worker_info

    r, w = (ranks or Ranks()).resolve()
    info = get_worker_info()
    if info is None:
        return Shard(rank=r, world_size=w)
    return Shard(rank=r, world_size=w, worker_id=info.id, num_workers=info.num_workers)
