"""Contexts that undo on exit what they set up: hooks on modules or optimizers, and torch's seeded global RNG."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from zennit.core import RemovableHandleList

__all__ = ["hooks", "seeded"]


@contextlib.contextmanager
def hooks(*handles) -> Iterator[RemovableHandleList]:
    """Within the context, the hooks of ``handles`` (anything with ``remove()``: a module's or an optimizer's hook
    handle) stay registered; on exit, whatever happens, every one is removed, in order. Yields zennit's
    :class:`~zennit.core.RemovableHandleList` of them: a handle appended to it inside the context is removed too."""
    held = RemovableHandleList(handles)
    try:
        yield held
    finally:
        held.remove()


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Within the context, torch's global RNG starts from ``seed`` (``torch.manual_seed``); on exit the state of the
    CPU's generator and, for a CUDA ``device``, that device's is restored (None: the CPU's only)."""
    device = torch.device("cpu" if device is None else device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
