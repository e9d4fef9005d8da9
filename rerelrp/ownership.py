"""Ownership: a learner owns its model.

A fitted learner's units and head rows are frozen for its tasks by its own freeze masks; a second learner on the
same model would know nothing of them and would train over them, changing the first learner's answers silently.
So the learner that learns a first task on a model (or loads a state into it) holds the model, here, by weak
references both ways: a learner that is garbage-collected, or rolled back to unfitted, releases it, and a
second learner's first task on a held model, or :func:`rerelrp.load` into it, is refused
(:class:`ModelInUseError`). The model held is the module itself, not a DistributedDataParallel wrapper.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["ModelInUseError", "holder", "check", "claim", "release"]

_HOLDERS: "weakref.WeakKeyDictionary[nn.Module, weakref.ref]" = weakref.WeakKeyDictionary()
_GUARD = threading.RLock()


class ModelInUseError(RuntimeError):
    """A model another live learner holds was given to a second learner."""


def _module(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def holder(model: nn.Module) -> Any | None:
    """The live learner that holds ``model`` (or the module a DistributedDataParallel ``model`` wraps), or None."""
    with _GUARD:
        ref = _HOLDERS.get(_module(model))
        return None if ref is None else ref()


def check(model: nn.Module, learner: Any = None, doing: str = "learn a first task on it") -> None:
    """Raise :class:`ModelInUseError` if a live learner other than ``learner`` holds ``model``; ``doing``: what
    was refused, for the message."""
    other = holder(model)
    if other is not None and other is not learner:
        tasks = getattr(other, "tasks_", [])
        raise ModelInUseError(
            f"the model ({type(_module(model)).__name__}) is held by another ReReLRP learner, which has learned "
            f"{len(tasks)} task(s) {tasks} on it: its units and head rows are frozen for those tasks by that learner "
            f"alone, so a second learner may not {doing} (it would change the first learner's answers). Either go "
            "on with that learner (learner.fit_task(...), or rerelrp.fit_task(model, ...), which continues it), or "
            "give this learner a model of its own (copy.deepcopy(model) keeps the learned weights). A learner "
            "releases its model when it is garbage-collected")


def claim(model: nn.Module, learner: Any) -> None:
    """Record that ``learner`` holds ``model``; :class:`ModelInUseError` if another live learner does."""
    with _GUARD:
        check(model, learner)
        _HOLDERS[_module(model)] = weakref.ref(learner)


def release(model: nn.Module, learner: Any) -> None:
    """``learner`` no longer holds ``model`` (nothing happens if it did not hold it)."""
    with _GUARD:
        if holder(model) is learner:
            del _HOLDERS[_module(model)]
