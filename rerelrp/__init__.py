"""rerelrp: replay-free continual learning that remembers and recognizes tasks with LRP.

Quick use, with one default learner kept by the module (as ``random`` keeps
one generator)::

    import rerelrp
    rerelrp.fit_task(model, loader_task0)
    rerelrp.fit_task(model, loader_task1)
    classes = rerelrp.predict(x)          # no task id needed

Hold several learners with :class:`ReReLRP`.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from sklearn.exceptions import NotFittedError
from torch import nn
from torch.utils.data import DataLoader

from ._version import __version__
from .learner import ReReLRP, load
from .options import InvalidParameterError
from .persist import UntrustedFileError

__all__ = ["ReReLRP", "fit_task", "predict", "load", "default_learner", "NotFittedError", "UntrustedFileError",
           "InvalidParameterError", "__version__"]

_default: ReReLRP | None = None


def fit_task(model: nn.Module, loader: DataLoader, val_loader: Iterable | None = None, **options: Any) -> ReReLRP:
    """Learn one more task with the default learner bound to ``model``; returns that learner.

    A call with another model than the previous call starts a new default
    learner with ``options`` (see :class:`ReReLRP` for them); a call with the
    same model goes on with the same learner, updating any ``options`` given.
    """
    global _default
    if _default is None or _default.model is not model:
        _default = ReReLRP(model, **options)
    elif options:
        _default.set_params(**options)
    return _default.fit_task(loader, val_loader)


def predict(x: torch.Tensor) -> torch.Tensor:
    """Global class ids ``(n,)`` for ``x`` with the default learner, without a task id."""
    return default_learner().predict(x)


def default_learner() -> ReReLRP:
    """The learner the module-level ``fit_task`` keeps; NotFittedError before the first call."""
    if _default is None:
        raise NotFittedError("rerelrp has learned no task yet: call rerelrp.fit_task(model, loader) first")
    return _default
