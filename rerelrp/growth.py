"""Growth: new units for a layer whose free pool is too small, which no old subnetwork ever reads.

A unit layer grows by new output rows (a Linear's features, a Conv2d's channels) appended after the old ones,
and the one layer that reads it grows by as many input columns (a Conv2d's input channels, or a Linear's
``in_features // n_units`` columns per unit after a flatten: channel-major, so a new channel's columns come
last). Every old subnetwork's mask switches the new units off, and the new columns of every frozen row (a unit
or head row of an earlier task) are zero and frozen: the old rows never see the new units, in any subnetwork,
so every old subnetwork computes what it computed before (its parameters bit-identical; its outputs equal up
to the floating-point rounding of a wider matrix product). A BatchNorm on the path grows by identity entries
(weight 1, bias 0, mean 0, variance 1), frozen like the rest of it after the first task.

:func:`growth_paths` finds, from the data flow of forward, which unit layers can grow: a layer's output must go
through elementwise modules (activations, dropout, BatchNorm, pooling, flattening) to exactly one Linear or
Conv2d. A residual sum, a concatenation, a reshape to a fixed size (``x.view(-1, 320)``) or a grouped
convolution on the path, or a layer read in two places, is named in the reason the layer cannot grow.

Parameters keep their identity (``param.data`` is replaced), so the freeze masks keyed by them stay valid; an
optimizer built before a growth holds state of the old shapes, so build it after (rerelrp's own loop does).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from zennit.types import Activation

from .capacity import kept_by
from .dataflow import is_shape, traced
from .freeze import FrozenParameters
from .network import Units

__all__ = ["AUTO_GROW", "AUTO_MAX_PARAMETERS", "GrowthPath", "growth_paths", "resolve", "units_to_add", "grow_free",
           "new_parameters", "within_budget",
           "grow_layer", "grow_masks", "widen_to", "sync_sizes", "snapshot", "restore", "n_parameters"]

#: What ``grow="auto"`` grows to where the model can grow: the fraction of each layer's initial width every task
#: after the first finds free ...
AUTO_GROW = 0.25
#: ... up to this multiple of the model's parameters before the first task: a growth that would pass it is cut
#: to fit (:func:`within_budget`), and none follows.
AUTO_MAX_PARAMETERS = 2.0

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_ELEMENTWISE_MODULES = (Activation, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Flatten, nn.Identity,
                        nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                        nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_ELEMENTWISE_FUNCTIONS = {torch.flatten, F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                          F.adaptive_max_pool2d, F.max_pool1d, F.avg_pool1d}
_ELEMENTWISE_METHODS = {"flatten", "contiguous"}
_RESHAPES = {"view", "reshape"}


@dataclass(frozen=True)
class GrowthPath:
    """What grows with one unit layer.

    Attributes
    ----------
    batchnorms
        the BatchNorm modules on the path from the layer to its reader (its ``masked_module``, when a
        BatchNorm, included).
    reader
        the Linear or Conv2d that reads the layer's units.
    columns
        the reader's input columns per unit: 1 for a Conv2d's channels, ``in_features // n_units`` for a
        Linear.
    """

    batchnorms: tuple[nn.Module, ...]
    reader: nn.Module
    columns: int


def growth_paths(model: nn.Module, units: Units) -> dict[str, Union[GrowthPath, str]]:
    """For each unit layer's name, its :class:`GrowthPath`, or a sentence saying why it cannot grow."""
    graph, modules = traced(model, [c for c in units.canonizers])
    nodes = {n.target: n for n in graph.nodes if n.op == "call_module"}
    return {layer.name: _path(nodes[layer.name], layer.n_units, modules) for layer in units.layers}


def resolve(grow: float | str, paths: dict[str, Union[GrowthPath, str]] | None,
            distributed: bool) -> tuple[float, list[str]]:
    """The fraction the learner grows to (its ``grow_``) for the option ``grow`` and, with ``"auto"``, why any unit
    layer cannot grow. A number is taken as it is. ``"auto"``: :data:`AUTO_GROW` where some unit layer of ``paths``
    (:func:`growth_paths`) can grow and the model is not ``distributed`` (DistributedDataParallel's buckets hold
    the parameters' shapes), else 0; the reasons name each layer that cannot grow (all of them: ``distributed``)."""
    if grow != "auto":
        return float(grow), []
    if distributed:
        return 0.0, ["DistributedDataParallel holds the parameters' shapes in its gradient buckets"]
    refused = [f"'{name}' {why}" for name, why in (paths or {}).items() if isinstance(why, str)]
    return (0.0 if paths is not None and len(refused) == len(paths) else AUTO_GROW), refused


def _path(node: fx.Node, n_units: int, modules: dict[str, nn.Module]) -> Union[GrowthPath, str]:
    batchnorms: list[nn.Module] = []
    while True:
        users = [u for u in node.users if not is_shape(u)]
        if len(users) != 1:
            return f"its output is read in {len(users)} places; growing needs exactly one reader"
        node = users[0]
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            return _reader(module, n_units, batchnorms)
        if isinstance(module, _BATCHNORMS):
            batchnorms.append(module)
        elif isinstance(module, _ELEMENTWISE_MODULES) or (node.op == "call_function" and node.target in
                                                           _ELEMENTWISE_FUNCTIONS) or (
                node.op == "call_method" and node.target in _ELEMENTWISE_METHODS):
            pass
        elif node.op == "call_method" and node.target in _RESHAPES:
            fixed = [a for a in node.args[1:] if isinstance(a, int) and a > 1]
            if fixed:
                return f"forward reshapes its output to a fixed size ({node.target} to {fixed}), which a growth " \
                       "would break; reshape with x.flatten(1) or x.view(x.size(0), -1) instead"
        else:
            what = f"module '{node.target}' ({type(module).__name__})" if module is not None else \
                f"{getattr(node.target, '__name__', node.target)}()"
            return f"its output goes into {what} before any Linear or Conv2d reads it; " \
                   "only activations, dropout, BatchNorm, pooling and flattening may lie between a growing layer " \
                   "and its reader (a residual sum or a concatenation would need the other branch grown too)"


def _reader(module: nn.Module, n_units: int, batchnorms: list) -> Union[GrowthPath, str]:
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.in_channels != n_units:
            return f"its reader, a Conv2d with groups={module.groups} and {module.in_channels} input channels, " \
                   f"does not read its {n_units} channels one to one"
        return GrowthPath(tuple(batchnorms), module, 1)
    if module.in_features % n_units:
        return f"its reader, a Linear of {module.in_features} inputs, does not read its {n_units} units in " \
               "equal blocks of columns"
    return GrowthPath(tuple(batchnorms), module, module.in_features // n_units)


def units_to_add(free_units: Sequence[int], initial_sizes: Sequence[int], grow: float) -> list[int]:
    """Per unit layer, the new units that bring its ``free_units`` up to ``ceil(grow * initial size)``: the pool
    every task starts with when the learner's ``grow`` option is set (0 where the pool is large enough)."""
    return [max(0, math.ceil(grow * size) - free) for free, size in zip(free_units, initial_sizes)]


def grow_free(units: Units, masks: Sequence[Sequence[torch.Tensor]], initial_sizes: Sequence[int], grow: float,
              paths: dict[str, Union[GrowthPath, str]], frozen: FrozenParameters,
              max_new_parameters: int | None = None) -> tuple[list[int], list[str], bool]:
    """Grow every unit layer of ``units`` whose free units (kept by no task of ``masks``) are fewer than
    ``ceil(grow * initial size)`` (:func:`units_to_add`) along its :func:`growth_paths` entry of ``paths``, new rows
    from torch's global RNG. With ``max_new_parameters``, the growth adds at most that many parameter entries: every
    layer's new units are cut by one common factor, as few as needed (:func:`within_budget`).

    Returns the units added per layer; for each layer that cannot grow, a warning's text naming it and why; and
    whether ``max_new_parameters`` cut the growth short."""
    kept = kept_by(masks, units.sizes)
    needed = units_to_add([len(k) - int(k.sum()) for k in kept], initial_sizes, grow)
    refusals = []
    for i, layer in enumerate(units.layers):
        path = paths.get(layer.name)
        if isinstance(path, str):
            refusals.append(f"unit layer '{layer.name}' cannot grow: {path}. It keeps its width and its free units "
                            "only")
            needed[i] = 0
    fitted = needed if max_new_parameters is None else within_budget(units, paths, needed, max_new_parameters)
    for layer, n in zip(units.layers, fitted):
        if n:
            grow_layer(layer.module, paths[layer.name], n, frozen)
    return fitted, refusals, fitted != needed


def new_parameters(units: Units, paths: dict[str, Union[GrowthPath, str]], added: Sequence[int]) -> int:
    """Parameter entries that growing the unit layers of ``units`` by ``added`` units each adds, as
    :func:`grow_free` grows them (:func:`grow_layer`, in layer order): each new unit's row (as wide as its layer's
    input is by then) and BatchNorm entries, and its columns in its reader (as many rows as the reader has by then).
    Computed from the shapes; nothing grows."""
    shapes: dict[int, list[int]] = {}  # per module, [rows, columns] of its weight as the growth goes

    def shape(module: nn.Module) -> list[int]:
        return shapes.setdefault(id(module), list(module.weight.shape[:2]))

    total = 0
    for layer, n in zip(units.layers, added):
        if not n:
            continue
        path, module = paths[layer.name], layer.module
        total += n * (shape(module)[1] * math.prod(module.weight.shape[2:]) + (module.bias is not None))
        shape(module)[0] += n
        total += n * sum(len(list(norm.parameters(recurse=False))) for norm in path.batchnorms)
        reader = shape(path.reader)
        total += n * path.columns * reader[0] * math.prod(path.reader.weight.shape[2:])
        reader[1] += n * path.columns
    return total


def within_budget(units: Units, paths: dict[str, Union[GrowthPath, str]], needed: Sequence[int],
                  max_new_parameters: int) -> list[int]:
    """``needed`` (new units per unit layer of ``units``) cut by the largest common factor ``s`` in [0, 1],
    ``floor(s * needed)`` each, whose :func:`new_parameters` are at most ``max_new_parameters``."""
    def scaled(s: float) -> list[int]:
        return [math.floor(s * n) for n in needed]

    if new_parameters(units, paths, needed) <= max_new_parameters:
        return list(needed)
    low, high = 0.0, 1.0  # scaled(low) fits, scaled(high) does not
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if new_parameters(units, paths, scaled(middle)) <= max_new_parameters else \
            (low, middle)
    return scaled(low)


def grow_layer(module: nn.Module, path: GrowthPath, n_new: int, frozen: FrozenParameters | None = None) -> None:
    """Append ``n_new`` units to the Linear or Conv2d ``module``: rows initialised by the layer's own
    ``reset_parameters`` (from torch's global RNG), identity BatchNorm entries, zero reader columns.

    With ``frozen``, the freeze masks grow too: the new rows are free, the new BatchNorm entries are frozen where
    that BatchNorm's old entries are, and the new columns of every frozen reader row are frozen."""
    if n_new <= 0:
        return
    with torch.no_grad():
        fresh = copy.deepcopy(module)
        fresh.weight = nn.Parameter(module.weight.new_empty((n_new, *module.weight.shape[1:])))
        if module.bias is not None:
            fresh.bias = nn.Parameter(module.bias.new_empty(n_new))
        fresh.reset_parameters()
        for name in ("weight", "bias"):
            _append(module, name, getattr(fresh, name), 0, frozen, free=True)
        for norm in path.batchnorms:
            for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
                old = getattr(norm, name)
                if old is not None:
                    _append(norm, name, old.new_full((n_new,), fill), 0, frozen, free=False)
        weight = path.reader.weight
        shape = list(weight.shape)
        shape[1] = n_new * path.columns
        _append(path.reader, "weight", weight.new_zeros(shape), 1, frozen, free=False)
    sync_sizes(module, *path.batchnorms, path.reader)


def _append(module: nn.Module, name: str, new: torch.Tensor | None, dim: int, frozen: FrozenParameters | None,
            free: bool) -> None:
    """Concatenate ``new`` to ``module.<name>`` along ``dim`` in place of its data; grow its freeze mask: False
    for ``free`` entries, else each new entry frozen where its row (dim 1) or its tensor (dim 0) already is."""
    tensor = getattr(module, name)
    if tensor is None or new is None:
        return
    if frozen is not None and tensor in frozen.masks:
        mask = frozen.masks[tensor]
        if free:
            extra = torch.zeros_like(new, dtype=torch.bool)
        elif dim == 1:
            rows = mask.flatten(1).any(1)
            extra = rows.view(-1, *([1] * (new.dim() - 1))).expand_as(new).clone()
        else:
            extra = torch.full_like(new, bool(mask.any()), dtype=torch.bool)
        frozen.masks[tensor] = torch.cat([mask, extra], dim)
    tensor.data = torch.cat([tensor.data, new.to(tensor.dtype)], dim)
    if isinstance(tensor, nn.Parameter):
        tensor.grad = None


def sync_sizes(*modules: nn.Module) -> None:
    """Set the size attributes of Linear, Conv2d and BatchNorm ``modules`` from their tensors' shapes (after a
    growth, or after their data was put back to another shape)."""
    for module in modules:
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.Conv2d):
            module.out_channels = module.weight.shape[0]
            module.in_channels = module.weight.shape[1] * module.groups
        elif isinstance(module, _BATCHNORMS):
            module.num_features = len(module.running_mean if module.running_mean is not None else module.weight)


def widen_to(model: nn.Module, units: Units, widths: dict[str, int]) -> None:
    """Grow each unit layer of ``model`` named in ``widths`` to that many units (no freeze masks): rebuilds the
    widths of a grown model saved from one of its original widths, before its weights are loaded.

    Raises
    ------
    ValueError
        a width smaller than the layer's, or a layer that cannot grow (naming why).
    """
    paths = growth_paths(model, units)
    for layer in units.layers:
        wanted = widths.get(layer.name, layer.n_units)
        if wanted == layer.n_units:
            continue
        if wanted < layer.n_units or isinstance(paths[layer.name], str):
            why = "it is wider" if wanted < layer.n_units else paths[layer.name]
            raise ValueError(f"unit layer '{layer.name}' has {layer.n_units} units, the save {wanted}: it cannot be "
                             f"widened to match ({why})")
        grow_layer(layer.module, paths[layer.name], wanted - layer.n_units)


def n_parameters(model: nn.Module) -> int:
    """Number of parameter entries of ``model``."""
    return sum(p.numel() for p in model.parameters())


def grow_masks(masks: Sequence[Sequence[torch.Tensor]], added: Sequence[int]) -> list[list[torch.Tensor]]:
    """Task masks with ``added[i]`` False entries appended to layer i's mask (new lists: the old ones are kept)."""
    return [[torch.cat([m, m.new_zeros(n)]) for m, n in zip(keep, added)] for keep in masks]


def snapshot(model: nn.Module) -> dict:
    """What :func:`restore` needs to put ``model``'s parameters and buffers back as they are now, widths included."""
    state = model.state_dict(keep_vars=True)
    return {"values": {k: v.detach().clone() for k, v in state.items()}, "data": {k: v.data for k, v in state.items()}}


def restore(model: nn.Module, saved: dict) -> None:
    """Put ``model`` back to its :func:`snapshot` ``saved``: a tensor grown or moved since gets its old storage back
    (the same ``nn.Parameter`` objects, so optimizers built over them stay valid), every value its old value; a
    gradient of a grown shape is dropped."""
    with torch.no_grad():
        for key, value in model.state_dict(keep_vars=True).items():
            old = saved["values"][key]
            if value.shape != old.shape or value.device != old.device:  # grown or moved since: the old tensor
                value.data = saved["data"][key]
                if isinstance(value, nn.Parameter) and value.grad is not None and value.grad.shape != old.shape:
                    value.grad = None  # of the grown shape: the next backward would fail to accumulate into it
            value.data.copy_(saved["values"][key])
    sync_sizes(*model.modules())
