"""Subnetworks: the learned tasks' subnetworks S_0..S_T-1 of one network, bound once and read many times.

Task t's subnetwork S_t is the network with only the units task t kept switched on (``masks[t]``, one bool tensor
per unit layer) and its head, the output rows of its classes. Every later subnetwork keeps every unit of the earlier
ones (they are frozen), so the union of S_0..S_m never changes once task m is learned: the detectors and the unknown
answer read through it (see ``docs/method.md``, sections Remember and Recognize). A :class:`Subnetworks` is what
the recognizers and the novelty measures see of a learner: a view, like zennit's ``Attributor`` bound to a model,
that owns nothing and is rebuilt when the learner's masks change.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .capacity import kept_by
from .network import Units, eval_mode, layer_outputs, masked
from .relevance import lrp, normalize_units

__all__ = ["Subnetworks"]


class Subnetworks:
    """The subnetworks of ``net`` for the tasks learned so far.

    Parameters
    ----------
    net
        the network (the module a DistributedDataParallel wraps, not the wrapper).
    units
        its unit layers (:func:`rerelrp.network.find_units`).
    masks
        per task, one bool tensor ``(n_units,)`` per unit layer: the units of S_t.
    tasks
        per task, its global class ids.
    batch_size
        samples per forward pass.
    composite
        zennit composite for :meth:`relevance` (None: rerelrp's default).
    """

    def __init__(self, net: nn.Module, units: Units, masks: Sequence[Sequence[torch.Tensor]],
                 tasks: Sequence[Sequence[int]], batch_size: int, composite=None):
        self.net, self.units, self.masks, self.tasks = net, units, masks, tasks
        self.batch_size, self.composite = batch_size, composite

    def __len__(self) -> int:
        return len(self.tasks)

    def union(self, m: int, device: torch.device | None = None) -> list[torch.Tensor]:
        """Bool masks ``(n_units,)`` per unit layer of the units kept by any of the tasks 0..m."""
        return [u.to(device) for u in kept_by(self.masks, self.units.sizes, m + 1)]

    def outputs(self, x: torch.Tensor, m: int, reduce: dict[int, Callable[[torch.Tensor], torch.Tensor]],
                logits: bool = False, head_input: bool = False) -> list[torch.Tensor]:
        """:func:`rerelrp.network.layer_outputs` of inputs ``x`` ``(n, *input_shape)`` through S_0..S_m together,
        in one pass; with ``logits``, the logits ``(n, len(tasks[m]))`` of task m's classes last."""
        return layer_outputs(self.net, self.units, x, self.union(m, x.device), reduce, self.batch_size,
                             logits=self.tasks[m] if logits else None, head_input=head_input)

    def logits(self, x: torch.Tensor, classes: Sequence[int], keep: Sequence[torch.Tensor] | None) -> torch.Tensor:
        """Logits ``(n, len(classes))`` of ``classes`` through the subnetwork ``keep`` (None: every unit)."""
        head = torch.as_tensor(list(classes), device=x.device)
        with torch.no_grad(), eval_mode(self.net), masked(self.units, keep):
            return torch.cat([self.net(x[i:i + self.batch_size])[:, head] for i in range(0, len(x), self.batch_size)])

    def classes(self, logits: torch.Tensor, m: int) -> torch.Tensor:
        """Global class ids ``(n,)`` of the top columns of task m's ``(n, len(tasks[m]))`` logits."""
        return torch.as_tensor(self.tasks[m], device=logits.device)[logits.argmax(1)]

    def predict(self, x: torch.Tensor, m: int) -> torch.Tensor:
        """Task-aware answers ``(n,)`` of S_m: global class ids, the argmax within task m's classes."""
        return self.classes(self.logits(x, self.tasks[m], self.masks[m]), m)

    def relevance(self, x: torch.Tensor, m: int) -> torch.Tensor:
        """Normalised unit relevance ``(n, total_units)`` of S_m, from its predicted classes
        (:func:`rerelrp.relevance.normalize_units`)."""
        rel = lrp(self.net, self.units, x, self.tasks[m], keep=self.masks[m], composite=self.composite,
                  batch_size=self.batch_size)
        return normalize_units(rel.units)
