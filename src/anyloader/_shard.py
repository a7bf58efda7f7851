"""Which shard this process reads: distributed rank times DataLoader worker."""

from __future__ import annotations

import os

from ._config import non_negative_int, positive_int
from ._plan import Shard

__all__ = ["check_rank", "current_shard", "resolve_rank"]


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


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Return ``(rank, world_size)`` for this process.

    Precedence: the explicit arguments, then an initialised
    ``torch.distributed`` process group, then the ``RANK``/``WORLD_SIZE``
    environment variables that ``torchrun`` sets, then ``(0, 1)``.

    Raises:
        ValueError: if the environment variables are malformed.
    """
    if rank is not None and world_size is not None:
        return rank, world_size
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    env_rank, env_world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if env_rank is not None and env_world is not None:
        try:
            r, w = int(env_rank), int(env_world)
        except ValueError:
            raise ValueError(
                f"RANK={env_rank!r} and WORLD_SIZE={env_world!r} must be integers"
            ) from None
        check_rank(r, w)
        return r, w
    return 0, 1


def current_shard(rank: int | None = None, world_size: int | None = None) -> Shard:
    """The shard of the calling DataLoader worker (or main process) on this rank."""
    from torch.utils.data import get_worker_info

    r, w = resolve_rank(rank, world_size)
    info = get_worker_info()
    if info is None:
        return Shard(rank=r, world_size=w)
    return Shard(rank=r, world_size=w, worker_id=info.id, num_workers=info.num_workers)
