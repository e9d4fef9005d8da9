"""Distributed: one learner on every process of a torch.distributed group (DistributedDataParallel).

Training runs on every rank, each over its own shard (the caller's ``DistributedSampler``) with gradients
averaged by DDP, so the weights agree. The stages after training read the whole task and would give every
rank the same answer; they run once, on rank 0, and :func:`from_rank0` hands the result to the others
(``torch.distributed.broadcast_object_list``), so every rank holds the same learner. Outside a process
group, or in a group of one, every function here is a plain call.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch.distributed as dist

__all__ = ["is_distributed", "is_rank0", "from_rank0", "agree"]

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether this process belongs to an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_rank0() -> bool:
    """Whether this process is rank 0 (or the only process)."""
    return not is_distributed() or dist.get_rank() == 0


def from_rank0(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0, its result on every rank. If rank 0 raises, every other rank raises a
    ``RuntimeError`` quoting it (instead of waiting for a result that never comes)."""
    if not is_distributed():
        return compute()
    box: list[Any] = [None]
    error = None
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", compute())
        except BaseException as caught:  # the others must hear of it before rank 0 re-raises
            error, box[0] = caught, ("error", f"{type(caught).__name__}: {caught}")
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    status, value = box[0]
    if status == "error":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


def agree(value: Any, what: str) -> None:
    """Raise ``ValueError`` on every rank unless all ranks hold the same ``value`` (a picklable object);
    ``what`` names it in the message."""
    if not is_distributed():
        return
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise ValueError(f"the ranks disagree on {what}: " + "; ".join(f"rank {r}: {v}" for r, v in enumerate(values)))

