"""rerelrp as an Avalanche strategy: ``ReReLRPStrategy`` (needs the ``avalanche`` extra: ``pip install
rerelrp[avalanche]``; the rest of rerelrp works without Avalanche).

Each training experience is learned as one task, in Avalanche's own training loop with its plugins, inside the
learner's :meth:`rerelrp.ReReLRP.training` context: rerelrp holds out a stratified share of the experience for
pruning, Avalanche's loop trains on the rest with the loss over the experience's head, and leaving the context
runs the other stages (relevance, pruning, freezing, memory, detectors, calibration). At evaluation, forward
returns a ``(batch, n_classes)`` score tensor of the task-agnostic prediction, without task labels: the
recognized task's head logits through its subnetwork, and ``-1e4`` for every other class, so the argmax is
exactly :meth:`rerelrp.ReReLRP.predict` and Avalanche's metrics (accuracy, forgetting, confusion matrices, loss)
and loggers work unchanged.

Save and load with :meth:`ReReLRPStrategy.save` and :meth:`ReReLRPStrategy.load` (rerelrp's safe format, no
pickles); pickling the strategy, as Avalanche's checkpoints do, is refused with a message that points at them.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

try:
    from avalanche.training.plugins.evaluation import default_evaluator
    from avalanche.training.templates import SupervisedTemplate
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("rerelrp.avalanche needs Avalanche: pip install 'rerelrp[avalanche]' (avalanche-lib>=0.6)") \
        from error

from .learner import ReReLRP
from .loading import load as load_learner

__all__ = ["ReReLRPStrategy", "OTHER_CLASSES"]

#: The score of every class outside the recognized task's head in the evaluation output.
OTHER_CLASSES = -1e4


class _Pairs(Dataset):
    """``(x, y)`` of an Avalanche dataset's ``(x, y, task label)`` items."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        x, y, *_ = self.dataset[i]
        return x, y


def _with_learner_options(init) -> inspect.Signature:
    """``init``'s signature with :class:`rerelrp.ReReLRP`'s options (but ``model``, ``epochs`` and ``device``,
    which the strategy sets) as keyword-only parameters before its ``**options``."""
    signature = inspect.signature(init)
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in own} | {"model", "epochs", "device"}
    learner = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(ReReLRP.__init__).parameters.values()
               if p.name not in taken and p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    rest = [p for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    return signature.replace(parameters=own + learner + rest)


class ReReLRPStrategy(SupervisedTemplate):
    """rerelrp in Avalanche: train experience by experience, evaluate without task labels.

    Parameters
    ----------
    model, optimizer, criterion, train_mb_size, train_epochs, eval_mb_size, device, plugins, evaluator, eval_every
        as for every Avalanche strategy. ``criterion`` scores the evaluation output (the training loss is
        the cross-entropy over the experience's head, :attr:`rerelrp.train.TaskTraining.loss`).
    learner
        a fitted :class:`rerelrp.ReReLRP` on ``model`` to go on from (see :meth:`load`); None: a new one.
    **options
        rerelrp's own options (``acc_drop``, ``n_tasks``, ``known_fraction``, ...; see
        :class:`rerelrp.ReReLRP`); ``epochs`` is ``train_epochs`` and ``device`` is ``device``.

    Attributes
    ----------
    learner
        the :class:`rerelrp.ReReLRP` that holds the masks, memory and detectors.
    """

    def __init__(self, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                 criterion: nn.Module = nn.CrossEntropyLoss(), train_mb_size: int = 64, train_epochs: int = 1,
                 eval_mb_size: Optional[int] = 256, device: str | torch.device = "cpu",
                 plugins: Optional[Sequence[Any]] = None, evaluator=default_evaluator, eval_every: int = -1,
                 learner: ReReLRP | None = None, **options: Any):
        super().__init__(model=model, optimizer=optimizer, criterion=criterion, train_mb_size=train_mb_size,
                         train_epochs=train_epochs, eval_mb_size=eval_mb_size, device=device, plugins=plugins,
                         evaluator=evaluator, eval_every=eval_every)
        if learner is not None and learner.model is not model:
            raise ValueError("learner must be a ReReLRP on the strategy's model (rerelrp.load(path, model))")
        self.learner = learner or ReReLRP(model, epochs=train_epochs, device=device,
                                          batch_size=eval_mb_size or 256, **options)
        self._task = None

    # Avalanche refuses keyword arguments that no __init__ of the class names: name rerelrp's options here too
    __init__.__signature__ = _with_learner_options(__init__)

    def _train_exp(self, experience, eval_streams=None, **kwargs) -> None:
        """One experience = one rerelrp task: Avalanche's epochs inside the learner's training context."""
        pairs = DataLoader(_Pairs(experience.dataset), batch_size=self.train_mb_size)
        with self.learner.training(pairs) as task:
            self._task = task
            try:
                self.adapted_dataset = experience.dataset.subset(task.loader.dataset.indices)  # the training share
                self.make_train_dataloader(**kwargs)
                self.make_optimizer(reset_optimizer_state=True)  # over the parameters as they are now (grow)
                super()._train_exp(experience, eval_streams, **kwargs)
            finally:
                self._task = None

    def forward(self) -> torch.Tensor:
        """Training: the model's logits. Evaluation: ``(batch, n_classes)`` scores of the task-agnostic prediction
        (the recognized task's head logits, :data:`OTHER_CLASSES` elsewhere)."""
        if self.is_training or self._task is not None or not getattr(self.learner, "tasks_", None):
            return self.model(self.mb_x)
        return self.scores(self.mb_x)

    def criterion(self) -> torch.Tensor:
        """Training: the cross-entropy over the experience's head; evaluation: ``criterion`` on the scores."""
        if self.is_training and self._task is not None:
            return self._task.loss(self.mb_output, self.mb_y)
        return self._criterion(self.mb_output, self.mb_y)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, n_classes)`` evaluation scores of inputs ``x`` whose argmax is ``learner.predict(x)``, on ``x``'s
        device."""
        learner = self.learner
        task = learner.route(x, heads=False).task  # checked and locked, as every verb of the learner
        out = torch.full((len(x), learner.units_.output.out_features), OTHER_CLASSES, device=x.device)
        for m in task.unique().tolist():
            rows = (task == m).nonzero()[:, 0].to(x.device)
            head = torch.as_tensor(learner.tasks_[m], device=x.device)
            out[rows.unsqueeze(1), head.unsqueeze(0)] = learner.task_logits(x[rows], m).to(out)
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Save the learner (rerelrp's safe format, :meth:`rerelrp.ReReLRP.save`); returns the path."""
        return self.learner.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer,
             **kwargs: Any) -> "ReReLRPStrategy":
        """A strategy that goes on from the learner saved at ``path``, around ``model`` (its original widths);
        ``kwargs``: the other strategy arguments. Build ``optimizer`` over ``model``'s parameters after the load
        when the learner grew (``grow``); the strategy rebuilds its parameter groups before each experience."""
        learner = load_learner(path, model)
        return cls(model=model, optimizer=optimizer, learner=learner, **kwargs)

    def __getstate__(self):
        raise TypeError("a ReReLRPStrategy is not pickled (Avalanche checkpoints pickle the strategy, and rerelrp's "
                        "saves never hold pickles): save it with strategy.save(path) and restore it with "
                        "ReReLRPStrategy.load(path, model=..., optimizer=...)")
