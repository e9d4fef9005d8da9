"""Architecture: a model checked against what rerelrp needs of it: its forward on the task's inputs, and its
parameter and buffer layout as a save records it.

A learner that grew (``grow``) is saved at its grown widths; a model of the widths it had before it grew is grown
to them on load (:func:`widen_to_saved`), any other model must match the record exactly (:func:`check`).
"""
from __future__ import annotations

import torch
from torch import nn

from .contexts import hooks
from .growth import widen_to
from .network import Units, eval_mode, find_units

__all__ = ["check_forward", "architecture", "check", "widen_to_saved"]


def check_forward(model: nn.Module, units: Units, x: torch.Tensor) -> None:
    """Run ``model`` on inputs ``x`` ``(n, *input_shape)`` (on its device) and raise ValueError when it cannot take
    them, TypeError when a unit Linear sees more than ``(n, features)`` or the output is not ``(n, classes)``."""
    dims: dict[str, int] = {}
    with hooks(*(layer.module.register_forward_hook(
            lambda module, inputs, output, name=layer.name: dims.__setitem__(name, output.dim()))
            for layer in units.layers)):
        try:
            with torch.no_grad(), eval_mode(model):
                out = model(x)
        except RuntimeError as error:
            raise ValueError(f"the model cannot take inputs of shape (n, {', '.join(map(str, x.shape[1:]))}): "
                             f"{error}") from error
    for layer in units.layers:
        if isinstance(layer.module, nn.Linear) and dims.get(layer.name, 2) != 2:
            raise TypeError(f"nn.Linear '{layer.name}' is applied to a {dims[layer.name]}-d tensor (e.g. tokens "
                            "(N, T, C)): a unit is one output feature of one input, so a Linear must see (N, "
                            "features); flatten or pool the other axes before it")
    if out.dim() != 2 or out.shape[1] != units.output.out_features:
        raise TypeError(f"the model's output has shape {tuple(out.shape)}; expected (n, "
                        f"{units.output.out_features}) from its last nn.Linear")


def architecture(model: nn.Module) -> list[list]:
    """``[name, shape, dtype]`` of every parameter and buffer of ``model``, in state-dict order."""
    return [[name, list(t.shape), str(t.dtype)] for name, t in model.state_dict().items()]


def check(saved: list, model: nn.Module, source: str) -> None:
    """Raise ValueError naming the first differences when ``model``'s :func:`architecture` is not ``saved`` (the
    record of ``source``, named in the message)."""
    current = architecture(model)
    if saved == current:
        return
    saved_d, current_d = {s[0]: s[1:] for s in saved}, {c[0]: c[1:] for c in current}
    differences = [f"{k}: saved {saved_d.get(k)} vs model {current_d.get(k)}"
                   for k in dict.fromkeys([*saved_d, *current_d]) if saved_d.get(k) != current_d.get(k)]
    raise ValueError(f"{source} was saved from another architecture; differences: {'; '.join(differences[:5])}"
                     + (f" (and {len(differences) - 5} more)" if len(differences) > 5 else ""))


def widen_to_saved(model: nn.Module, widths: dict[str, int], growth: list[list[int]] | None,
                   initial_sizes: list[int] | None) -> None:
    """Grow ``model`` to the saved ``widths`` (units per unit layer, by name) when the save is of a learner that grew
    (``growth``: units added per task and layer) from a model like it (same unit layers, of the ``initial_sizes``);
    any other model is left as it is for :func:`check`."""
    if not any(any(g) for g in growth or []):
        return
    try:
        units = find_units(model)
    except TypeError:
        return  # the architecture check names what differs
    if [layer.name for layer in units.layers] == list(widths) and units.sizes == initial_sizes:
        widen_to(model, units, widths)
