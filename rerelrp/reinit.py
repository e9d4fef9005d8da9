"""Reinit: a fresh start for the free units of every task after the first (the units kept by no task so far).

A unit that an earlier task trained and then pruned keeps weights fitted to that task, and a network of such units
learned RetinaMNIST, the third task of the medical stream, no better than its majority class, where freshly
initialised free units learned it (docs: User guide, Capacity): :func:`reset_free_units` draws their weights anew. Where a
BatchNorm closes a unit layer, the statistics of its free channels are measured on the new task's inputs
(:func:`refresh_free_statistics`: BatchNorm is frozen after the first task, and statistics of other weights
normalised the new units to the wrong scale).

Both write the model's weights or statistics, of free units only: every old subnetwork masks these units to zero,
so none changes. Which units are free is :func:`rerelrp.capacity.kept_by`'s accounting.
"""
from __future__ import annotations

import copy

import torch

from .capacity import Masks, kept_by
from .contexts import hooks, seeded
from .distributed import from_rank0
from .network import Units, eval_mode

__all__ = ["reset_free_units", "refresh_free_statistics", "fresh_start"]


def reset_free_units(units: Units, masks: Masks, seed: int) -> None:
    """Re-initialise the incoming weights and bias of every unit kept by no task in ``masks``, with the layer's
    own ``reset_parameters`` drawn from ``seed`` (the global RNG is left as it was).

    Every old subnetwork masks these units to zero, so no old subnetwork changes; frozen entries are untouched.
    """
    used = kept_by(masks, units.sizes)
    with seeded(seed), torch.no_grad():
        for layer, kept in zip(units.layers, used):
            module = layer.module
            fresh = copy.deepcopy(module)
            fresh.reset_parameters()
            free = ~kept.to(module.weight.device)
            for name in ("weight", "bias"):
                param = getattr(module, name)
                if param is not None:
                    param[free] = getattr(fresh, name)[free]


def refresh_free_statistics(model: torch.nn.Module, units: Units, masks: Masks, x: torch.Tensor) -> None:
    """Set the running mean and variance of the free channels of every BatchNorm that closes a unit layer to their
    statistics on the inputs ``x`` ``(n, *input_shape)``, in one forward pass of the whole network in eval mode
    (a layer's statistics are set before its BatchNorm normalises, so every later layer sees the new ones).

    After the first task BatchNorm normalises with frozen statistics; those of a free channel were measured on
    other weights (an earlier task's, or none for a grown unit), so a freshly initialised unit came out at an
    arbitrary scale. Every old subnetwork masks a free channel after its BatchNorm, so none changes; the channels
    of kept units and every other BatchNorm are untouched.
    """
    used = kept_by(masks, units.sizes)
    handles = []

    def measure(free: torch.Tensor):
        def hook(norm, inputs):
            values = inputs[0].transpose(0, 1).reshape(norm.num_features, -1)
            norm.running_mean[free] = values[free].mean(1).to(norm.running_mean.dtype)
            norm.running_var[free] = values[free].var(1).to(norm.running_var.dtype)
        return hook

    for layer, kept in zip(units.layers, used):
        norm = layer.masked_module
        if norm is not layer.module and norm.track_running_stats and not kept.all():
            handles.append(norm.register_forward_pre_hook(measure(~kept.to(norm.running_mean.device))))
    if not handles:
        return
    with hooks(*handles), eval_mode(model), torch.no_grad():
        model(x)


def fresh_start(model: torch.nn.Module, units: Units, masks: Masks, x: torch.Tensor, seed: int, reset: bool) -> None:
    """Before a task after the first: :func:`reset_free_units` (with ``reset``; the same ``seed`` on every rank), then
    the free channels' BatchNorm statistics from up to 256 of the task's training inputs ``x`` ``(n, *input_shape)``
    (drawn from ``seed``), measured on rank 0 and taken by every rank (:func:`refresh_free_statistics`)."""
    if reset:
        reset_free_units(units, masks, seed)
    norms = [layer.masked_module for layer in units.layers if layer.masked_module is not layer.module]
    if not norms:
        return
    rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:256]
    device = next(model.parameters()).device

    def measure():
        refresh_free_statistics(model, units, masks, x[rows].to(device))
        return [(n.running_mean.clone(), n.running_var.clone()) for n in norms]

    for norm, (mean, var) in zip(norms, from_rank0(measure)):
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
