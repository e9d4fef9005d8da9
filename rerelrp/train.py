"""Train: fit the network on one task without moving a frozen parameter.

The loss is cross-entropy over the task's own classes (its head): logits of
other classes are left out, so a task never pushes down the logits of earlier
or later tasks. Frozen entries are restored after every optimizer step by
:class:`rerelrp.freeze.FrozenParameters`. Once a task has been learned,
BatchNorm statistics stay as they were (BatchNorm modules run in eval mode).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .freeze import FrozenParameters
from .network import _BATCHNORMS

__all__ = ["train_task", "OptimizerFactory"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
"""A callable ``(params, lr=...) -> Optimizer``, e.g. ``torch.optim.Adam`` or
``functools.partial(torch.optim.SGD, momentum=0.9)``."""


def train_task(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    classes: Sequence[int],
    *,
    epochs: int,
    lr: float,
    optimizer: OptimizerFactory = torch.optim.Adam,
    frozen: FrozenParameters | None = None,
    freeze_batchnorm_stats: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = False,
    description: str = "train",
) -> list[float]:
    """Train ``model`` in place on batches ``(x, y)`` of global class ids ``y`` in ``classes``.

    Parameters
    ----------
    model: the classifier; its output has one logit per global class id.
    loader: yields ``x`` of shape ``(batch, *input_shape)`` and ``y`` of shape ``(batch,)``.
    classes: the head: global class ids the cross-entropy runs over.
    epochs: passes over ``loader``.
    lr: learning rate handed to ``optimizer``.
    optimizer: factory ``(params, lr=lr) -> torch.optim.Optimizer``.
    frozen: entries that must stay bit-identical (None: nothing frozen).
    freeze_batchnorm_stats: keep BatchNorm running statistics unchanged.
    device: where the batches go (the model must already be there).
    progress: show a tqdm bar over batches.

    Returns
    -------
    The mean training loss of each epoch.
    """
    head = torch.as_tensor(list(classes), dtype=torch.long, device=device)
    # label -> position in the head, for cross-entropy over the head's logits
    position = torch.full((int(head.max()) + 1,), -1, dtype=torch.long, device=device)
    position[head] = torch.arange(len(head), device=device)
    opt = optimizer([p for p in model.parameters() if p.requires_grad], lr=lr)
    enforced = frozen.enforced(opt) if frozen is not None else contextlib.nullcontext()
    losses = []
    was_training = model.training
    model.train()
    if freeze_batchnorm_stats:
        for module in model.modules():
            if isinstance(module, _BATCHNORMS):
                module.eval()
    try:
        n_batches = _len_or_none(loader)
        total = None if n_batches is None else epochs * n_batches
        with enforced, tqdm(total=total, desc=description, disable=not progress, leave=False) as bar:
            for _ in range(epochs):
                total, count = 0.0, 0
                for x, y in loader:
                    x, y = x.to(device), y.to(device)
                    opt.zero_grad(set_to_none=True)
                    loss = nn.functional.cross_entropy(model(x)[:, head], position[y])
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(y)
                    count += len(y)
                    bar.update()
                losses.append(total / max(count, 1))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        model.train(was_training)
    return losses


def _len_or_none(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None
