"""rerelrp: replay-free continual learning that remembers and recognizes tasks with LRP.

Quick use, with one default learner per model kept by the module (as ``random`` keeps
one generator)::

    import rerelrp
    rerelrp.fit_task(model, loader_task0)
    rerelrp.fit_task(model, loader_task1)
    classes = rerelrp.predict(x)          # no task id needed

Hold several learners with :class:`ReReLRP`. A learner owns its model
(:mod:`rerelrp.ownership`): a second learner on a model another one holds is
refused with :class:`ModelInUseError`.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from sklearn.exceptions import NotFittedError
from torch import nn
from torch.utils.data import DataLoader

from ._version import __version__
from .learner import ReReLRP
from .loading import load
from .options import InvalidParameterError
from .ownership import ModelInUseError, holder
from .persist import UntrustedFileError

__all__ = ["ReReLRP", "fit_task", "predict", "load", "default_learner", "NotFittedError", "UntrustedFileError",
           "InvalidParameterError", "ModelInUseError", "__version__"]

#: The learner of the latest module-level fit_task: the one rerelrp.predict asks.
_default: ReReLRP | None = None
#: Attribute of a model through which the module keeps the learner it started on it alive (see :class:`_Kept`).
_KEPT = "_rerelrp_default_learner"


class _Kept:
    """The learner the module started on a model, kept alive by the model itself (an attribute of it) for as long
    as the model lives: a dictionary keyed by the model would keep every model alive through its learner. A copy or
    a pickle of the model keeps no learner (it is another model, which no learner holds)."""

    def __init__(self, learner: ReReLRP | None = None):
        self.learner = learner

    def __deepcopy__(self, memo) -> "_Kept":
        return _Kept()

    def __reduce__(self):
        return _Kept, ()


def fit_task(model: nn.Module, loader: DataLoader, val_loader: Iterable | None = None, **options: Any) -> ReReLRP:
    """Learn one more task with the learner that holds ``model``.

    The learner that holds ``model`` (:func:`rerelrp.ownership.holder`: the one that learned its tasks, whether this
    function started it or you did with :class:`ReReLRP`) goes on, updating any ``options`` given; a model no learner
    holds gets a new learner with ``options``, which the model keeps alive. So ``fit_task(A, ...)``,
    ``fit_task(B, ...)``, ``fit_task(A, ...)`` learns A's second task with A's learner.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier (see :class:`ReReLRP`); trained in place.
    loader : torch.utils.data.DataLoader
        The task's batches ``(x, y)``, ``y`` global class ids no earlier task used.
    val_loader : iterable of (x, y) batches, optional
        The task's validation data; None holds out a stratified 10 %.
    **options
        Options of :class:`ReReLRP`.

    Returns
    -------
    ReReLRP
        The learner, fitted on one more task; ``rerelrp.predict`` asks it from now on.
    """
    global _default
    learner = holder(model)
    if learner is None:
        learner = ReReLRP(model, **options)
        object.__setattr__(model, _KEPT, _Kept(learner))  # not nn.Module's: it is no parameter, buffer or module
    elif options:
        learner.set_params(**options)
    _default = learner
    return learner.fit_task(loader, val_loader)


def predict(x: torch.Tensor) -> torch.Tensor:
    """Global class ids with the default learner (the one of the latest module-level :func:`fit_task`),
    without a task id.

    Parameters
    ----------
    x : torch.Tensor or iterable of batches
        Inputs ``(n, *input_shape)`` (see :meth:`ReReLRP.predict`).

    Returns
    -------
    torch.Tensor
        ``(n,)`` int64 global class ids, on the CPU.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        Before the first :func:`fit_task`.
    """
    return default_learner().predict(x)


def default_learner() -> ReReLRP:
    """The learner the module-level :func:`fit_task` keeps (of its latest call).

    Returns
    -------
    ReReLRP
        That learner.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        Before the first call of :func:`fit_task`.
    """
    if _default is None:
        raise NotFittedError("rerelrp has learned no task yet: call rerelrp.fit_task(model, loader) first")
    return _default
