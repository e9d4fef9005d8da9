"""Concurrency: the locks through which rerelrp's calls from several threads take turns.

:func:`model_lock` is one re-entrant lock per model, held while rerelrp's hooks are on its modules;
:data:`TRACE_LOCK` lets a ``torch.fx`` trace run alone while rerelrp's own forwards share their turns. A process
forked while another thread holds one of them starts with new ones (:func:`os.register_at_fork`).
"""
from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Iterator

from torch import nn

__all__ = ["model_lock", "TRACE_LOCK"]

_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock of ``model``: held while rerelrp's hooks (masks, captures, modes) are on its modules,
    so that calls from several threads, which would see each other's hooks, take turns (one lock per model, so
    two learners on one model take turns too)."""
    with _LOCKS_GUARD:
        if model not in _LOCKS:
            _LOCKS[model] = threading.RLock()
        return _LOCKS[model]


class _TraceLock:
    """torch.fx's symbolic tracing patches ``nn.Module.__call__`` for the whole process while it runs: two traces
    at once (two learners' first tasks in two threads) left torch patched for good, and a forward in another
    thread during a trace lands in the tracer. So a trace runs alone (:meth:`exclusive`) and rerelrp's own
    forwards (a task's training, predictions) hold a :meth:`shared` turn, which any number of threads may hold
    together."""

    def __init__(self):
        self._condition = threading.Condition()
        self._readers = 0
        self._tracing = False
        self._mine = threading.local()

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            while self._tracing:
                self._condition.wait()
            self._readers += 1
        self._mine.count = getattr(self._mine, "count", 0) + 1
        try:
            yield
        finally:
            self._mine.count -= 1
            with self._condition:
                self._readers -= 1
                self._condition.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        if getattr(self._mine, "count", 0):
            raise RuntimeError("a torch.fx trace was started while this thread runs rerelrp forwards (it would wait "
                               "for itself); trace before the task or prediction")
        with self._condition:
            while self._tracing or self._readers:
                self._condition.wait()
            self._tracing = True
        try:
            yield
        finally:
            with self._condition:
                self._tracing = False
                self._condition.notify_all()


#: Traces and rerelrp's forwards take turns through this lock (see :class:`_TraceLock`).
TRACE_LOCK = _TraceLock()


def _after_fork_in_child() -> None:
    """A forked child runs only the thread that forked: a lock another thread of the parent held stays held in the
    child for ever (a predict there would wait for it), so the child starts with new locks."""
    global _LOCKS, _LOCKS_GUARD
    _LOCKS, _LOCKS_GUARD = weakref.WeakKeyDictionary(), threading.Lock()
    TRACE_LOCK.__init__()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
