"""Train: fit the network on one task, in rerelrp's loop or the caller's, without moving a frozen parameter.

:class:`TaskTraining` is what a training loop inside :meth:`rerelrp.ReReLRP.training` holds: the task's
classes, the loader to train on, and the loss over the task's own classes (its head): logits of other classes
are left out, so a task never pushes down the logits of earlier or later tasks. Frozen entries are restored
after every optimizer step by :meth:`rerelrp.freeze.FrozenParameters.enforced`; once a task has been learned,
BatchNorm statistics stay as they were (:func:`batchnorm_frozen`). :func:`train_task` is rerelrp's own loop,
the one ``fit_task`` runs inside that context.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .contexts import hooks

__all__ = ["TaskTraining", "batchnorm_frozen", "HeadLoss", "train_task", "OptimizerFactory"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
"""A callable ``(params, lr=...) -> Optimizer``, e.g. ``torch.optim.Adam`` or
``functools.partial(torch.optim.SGD, momentum=0.9)``."""


@dataclass(frozen=True)
class TaskTraining:
    """The task a training loop learns inside :meth:`rerelrp.ReReLRP.training`.

    Attributes
    ----------
    index
        the task's position in the learner's sequence (0 for the first task).
    classes
        sorted global class ids of the task: its head.
    loader
        what to train on: the caller's loader as given when a ``val_loader`` was passed, else the loader of
        the training share (the held-out validation share left out).
    seed
        the seed rerelrp's own loop trains with (``random_state + 1000 * index``).
    """

    index: int
    classes: tuple[int, ...]
    loader: Iterable
    seed: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "_loss", HeadLoss(self.classes))

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the task's head: ``logits`` ``(batch, n_outputs)``, ``y`` ``(batch,)`` global
        class ids of the task; a scalar tensor (see :class:`HeadLoss`)."""
        return self._loss(logits, y)


class HeadLoss:
    """Mean cross-entropy of ``logits[:, classes]`` for labels ``y`` (global class ids, each one of ``classes``).

    The head's index tables are built once per device; a call checks its labels with one reduction and raises
    ``ValueError`` naming any label that is not one of ``classes``.
    """

    def __init__(self, classes: Sequence[int]):
        self.classes = tuple(int(c) for c in classes)
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._tables:
            head = torch.as_tensor(self.classes, dtype=torch.long, device=device)
            position = torch.full((max(self.classes) + 1,), -1, dtype=torch.long, device=device)
            position[head] = torch.arange(len(head), device=device)  # label -> its column in the head
            self._tables[device] = head, position
        return self._tables[device]

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        head, position = self._table(logits.device)
        y = y.to(logits.device)
        if y.dim() == 2 and y.shape[1] == 1:  # MedMNIST's own (n, 1) labels, as the data check accepts them
            y = y[:, 0]
        target = position[y.clamp(0, len(position) - 1)]
        if ((y < 0) | (y >= len(position)) | (target < 0)).any():
            raise ValueError(f"labels {sorted(set(y.tolist()) - set(self.classes))} are not classes of the task "
                             f"({list(self.classes)})")
        return nn.functional.cross_entropy(logits[:, head], target)


@contextlib.contextmanager
def batchnorm_frozen(norms: Sequence[nn.Module]) -> Iterator[None]:
    """Within the context, the BatchNorm modules ``norms`` normalise with their running statistics and leave them
    unchanged, even if the loop calls ``model.train()`` (a forward pre-hook puts each in eval mode before it runs);
    their modes are restored on exit."""
    modes = [norm.training for norm in norms]

    def to_eval(module, args) -> None:
        module.training = False

    try:
        with hooks(*(norm.register_forward_pre_hook(to_eval) for norm in norms)):
            yield
    finally:
        for norm, mode in zip(norms, modes):
            norm.train(mode)


def train_task(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    classes: Sequence[int],
    *,
    epochs: int,
    lr: float,
    optimizer: OptimizerFactory = torch.optim.Adam,
    device: torch.device | str = "cpu",
    progress: bool = False,
    description: str = "train",
) -> list[float]:
    """Train ``model`` in place on batches ``(x, y)`` of global class ids ``y`` in ``classes``.

    Parameters
    ----------
    model
        the classifier; its output has one logit per global class id.
    loader
        yields ``x`` of shape ``(batch, *input_shape)`` and ``y`` of shape ``(batch,)``.
    classes
        the head: global class ids the cross-entropy runs over.
    epochs
        passes over ``loader``.
    lr
        learning rate handed to ``optimizer``.
    optimizer
        factory ``(params, lr=lr) -> torch.optim.Optimizer``.
    device
        where the batches go (the model must already be there).
    progress
        show a tqdm bar over batches.

    Returns
    -------
    The mean training loss of each epoch.
    """
    opt = optimizer([p for p in model.parameters() if p.requires_grad], lr=lr)
    head_loss = HeadLoss(classes)
    losses = []
    was_training = model.training
    model.train()
    try:
        n_batches = _len_or_none(loader)
        total = None if n_batches is None else epochs * n_batches
        with tqdm(total=total, desc=description, disable=not progress, leave=False) as bar:
            for _ in range(epochs):
                losses.append(_train_epoch(model, loader, opt, head_loss, device, bar))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        model.train(was_training)
    return losses


def _train_epoch(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], opt: torch.optim.Optimizer,
                 head_loss: HeadLoss, device: torch.device | str, bar) -> float:
    """One pass over ``loader``, one optimizer step per batch, ticking ``bar``; the mean loss per sample."""
    total, count = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        opt.zero_grad(set_to_none=True)
        loss = head_loss(model(x), y)
        loss.backward()
        opt.step()
        total += loss.item() * len(y)
        count += len(y)
        bar.update()
    return total / max(count, 1)


def _len_or_none(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None
