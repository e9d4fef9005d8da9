"""Contexts that undo on exit what they set up: hooks on modules or optimizers, and torch's seeded global RNG; and
:func:`warn`, a warning shown at the user's line."""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Iterator

import torch
from zennit.core import RemovableHandleList

__all__ = ["hooks", "seeded", "warn"]

#: Frames of these files are rerelrp's own or the context managers it runs in: a warning skips them.
_INSIDE = (os.path.dirname(os.path.abspath(__file__)) + os.sep, os.path.abspath(contextlib.__file__))


def warn(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the first calling line outside rerelrp (and outside
    :mod:`contextlib`, whose ``with`` blocks rerelrp's verbs run in), as Python 3.12's ``skip_file_prefixes`` does:
    the warning names the user's ``fit_task`` or ``with learner.training(...)`` line, not one of rerelrp's."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INSIDE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)


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
