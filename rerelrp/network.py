"""The units of a network, and masks that switch units off.

A *unit* is one output neuron of an ``nn.Linear`` or one output channel of an
``nn.Conv2d``. The last ``nn.Linear`` that forward calls is the model's output
layer (one row per class id); its rows are task heads, never units. Units are
read from the data flow of forward (:mod:`rerelrp.dataflow`), so models that
are not ``nn.Sequential``, such as torchvision's ResNets, are found correctly.

Masks follow ``torch.nn.utils.prune``: explicit boolean tensors, applied by
forward hooks, removable. A masked unit outputs exactly zero. When a
BatchNorm module directly follows the unit's layer, the mask is applied after
the BatchNorm, so that the unit's contribution downstream is zero either way.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from zennit.canonizers import Canonizer
from zennit.types import Activation

from .canonizers import block_canonizers, merge_batchnorm
from .contexts import hooks
from .dataflow import Flow, trace

__all__ = ["UnitLayer", "Units", "find_units", "masked", "eval_mode", "unit_outputs", "layer_outputs",
           "position_grid", "position_mean", "position_spread"]

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class UnitLayer:
    """One Linear or Conv2d layer whose outputs are units.

    Attributes
    ----------
    name
        qualified module name inside the model.
    module
        the ``nn.Linear`` or ``nn.Conv2d``.
    masked_module
        the module whose output the mask multiplies: the BatchNorm that
        directly follows ``module``, or ``module`` itself.
    """

    name: str
    module: nn.Module
    masked_module: nn.Module

    @property
    def n_units(self) -> int:
        """Number of units (output features or output channels)."""
        return self.module.weight.shape[0]


@dataclass(frozen=True)
class Units:
    """The unit layers of a model, in forward order, its output layer, the canonizers LRP needs for it, every
    BatchNorm module forward calls (closing a unit layer or not), and the modules with parameters that compute
    multiplicative gates (squeeze-excitation layers: not units, since LRP sends them no relevance). BatchNorm and
    gates are trained by the first task only."""

    layers: tuple[UnitLayer, ...]
    output: nn.Linear
    canonizers: tuple[Canonizer, ...] = ()
    batchnorms: tuple[nn.Module, ...] = ()
    gates: tuple[nn.Module, ...] = ()

    @property
    def sizes(self) -> list[int]:
        """Units per layer, in order."""
        return [layer.n_units for layer in self.layers]

    @property
    def total(self) -> int:
        """Total number of units (output layer excluded)."""
        return sum(self.sizes)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Split a ``(..., total)`` tensor into one ``(..., n_units)`` tensor per layer."""
        return list(torch.split(flat, self.sizes, dim=-1))


def find_units(model: nn.Module) -> Units:
    """Find the unit layers and the output layer of ``model`` from the data flow of its forward.

    Modules are taken in the order forward calls them (:func:`rerelrp.dataflow.trace`); the last
    ``nn.Linear`` called is the output layer and must produce forward's result. A BatchNorm closes a unit
    layer when it is the only reader of that layer's output; the canonizers merge it into the layer for LRP.
    Layers that only compute a gate's scale (:attr:`rerelrp.dataflow.Flow.gated`) are not units.

    Raises
    ------
    TypeError
        naming the module or operation, if ``model`` has no ``nn.Linear`` output layer, no unit layer
        before it, no activation module, a unit layer called more than once, a module with parameters that are
        not a unit's, the head's or a BatchNorm's (LayerNorm, PReLU, Conv1d, ...: they could not be frozen), or
        an operation LRP cannot be propagated through (see :mod:`rerelrp.dataflow`).
    """
    _check_model(model)
    blocks = block_canonizers(model)
    flow = trace(model, blocks)
    output = _output_layer(flow)
    layers, pairs = _unit_layers(flow, output)
    if not any(isinstance(flow.modules[name], Activation) for name in flow.calls):
        raise TypeError(
            "model has no activation module (nn.ReLU, ...): activations must be modules, since LRP cannot see "
            "functional calls such as torch.relu inside forward()"
        )
    batchnorms = tuple(flow.modules[name] for name in dict.fromkeys(flow.calls)
                       if isinstance(flow.modules[name], _BATCHNORMS))
    gates = tuple(flow.modules[name] for name in dict.fromkeys(flow.calls)
                  if name in flow.gated and any(True for _ in flow.modules[name].parameters(recurse=False)))
    _check_parameters(model, flow, (*(layer.module for layer in layers), flow.modules[output]), (*batchnorms, *gates))
    return Units(tuple(layers), flow.modules[output], tuple(blocks + merge_batchnorm(pairs)), batchnorms, gates)


def _check_model(model: nn.Module) -> None:
    """Raise TypeError unless ``model`` is a module other than a single Linear or Conv2d."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        raise TypeError("model was compiled with torch.compile: give rerelrp the module itself (model._orig_mod); "
                        "rerelrp traces forward with torch.fx and adds hooks, which a compiled module hides")
    if isinstance(model, (nn.Linear, nn.Conv2d)):
        raise TypeError(f"model is a single {type(model).__name__}: rerelrp needs hidden units to keep and free "
                        "between its inputs and its output layer, e.g. nn.Sequential(nn.Linear(d, 128), nn.ReLU(), "
                        "nn.Linear(128, n_classes))")


def _output_layer(flow: Flow) -> str:
    """Name of the last ``nn.Linear`` of the data flow ``flow``; TypeError unless it produces forward's result."""
    linears = [name for name in flow.calls if isinstance(flow.modules[name], nn.Linear)]
    if not linears:
        raise TypeError("model has no nn.Linear module: its last nn.Linear must be the output layer")
    output = linears[-1]
    if flow.output != output:
        raise TypeError(f"forward returns {flow.returns}: it must return one tensor, the logits of the model's last "
                        f"nn.Linear ('{output}' is the last called) as they are, since LRP starts from a logit; "
                        "drop auxiliary outputs and any operation after the output layer")
    return output


def _unit_layers(flow: Flow, output: str) -> tuple[list[UnitLayer], list[tuple[str, str]]]:
    """The unit layers called before the module ``output``, in order, and the ``(layer, BatchNorm)`` name pairs
    of the BatchNorms that close one; TypeError for a unit layer called twice, or when there is none."""
    layers, pairs = [], []
    for name in dict.fromkeys(flow.calls[:flow.calls.index(output)]):
        module = flow.modules[name]
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or name in flow.gated:
            continue
        if flow.count(name) > 1:
            raise TypeError(f"module '{name}' ({type(module).__name__}) is called {flow.count(name)} times in "
                            "forward: a unit needs one output to mask, freeze and explain; use one module per call")
        reader = flow.modules.get(flow.reader.get(name, ""))
        masked_name = name
        if isinstance(reader, _BATCHNORMS) and reader.num_features == module.weight.shape[0] \
                and flow.count(flow.reader[name]) == 1:
            masked_name = flow.reader[name]
            pairs.append((name, masked_name))
        layers.append(UnitLayer(name, module, flow.modules[masked_name]))
    if not layers:
        before = dict.fromkeys(flow.calls[:flow.calls.index(output)])
        others = [f"'{n}' ({type(flow.modules[n]).__name__})" for n in before
                  if not isinstance(flow.modules[n], _BATCHNORMS)
                  and any(True for _ in flow.modules[n].parameters(recurse=False))]
        named = (f"; module {', '.join(others)} {'is' if len(others) == 1 else 'are'} not one (units are the rows "
                 "of nn.Linear and the channels of nn.Conv2d only: Conv1d, Conv3d and transposed convolutions are not "
                 "supported)") if others else ""
        raise TypeError(
            "model has no nn.Linear or nn.Conv2d layer before its output layer: there are no units to keep or free"
            + named)
    return layers, pairs


def _check_parameters(model: nn.Module, flow: Flow, rows: Sequence[nn.Module], whole: Sequence[nn.Module]) -> None:
    """Raise TypeError, naming the parameter (or module) and why, unless every parameter that ``model``'s forward
    reads is, exactly once, the ``weight`` or ``bias`` of a module of ``rows`` (units, the output layer: frozen row
    by row) or a parameter of a module of ``whole`` (BatchNorms, gates: frozen whole after the first task).

    Refused: a module with parameters of its own that is none of these (LayerNorm, PReLU, ...), a parameter used by
    forward directly (``x + self.shift``, ``x * self.scale``, ``F.linear(x, self.fc.weight)``: the data flow
    sees an attribute, not a module call), and one parameter held by two modules (tied weights: freezing a unit of
    one would freeze an unrelated unit of the other, and a fresh start of a free unit of one would rewrite a kept
    unit of the other). Parameters of modules that forward never calls change no answer and are left alone."""
    by_rows, whole_ids = {id(m) for m in rows}, {id(m) for m in whole}
    holders: dict[int, list[str]] = {}
    seen: set[int] = set()
    for name in dict.fromkeys(flow.calls):
        module = flow.modules[name]
        own = list(module.named_parameters(recurse=False))
        if id(module) in seen or not own:
            continue
        seen.add(id(module))
        if id(module) not in by_rows | whole_ids:
            raise TypeError(
                f"module '{name}' ({type(module).__name__}) has parameters that are neither a unit (nn.Linear, "
                "nn.Conv2d), the output layer, a BatchNorm nor a squeeze-excitation gate: rerelrp could not freeze "
                "them per task, so every later task would change what old tasks compute. Use BatchNorm (frozen after "
                "the first task) instead of LayerNorm/GroupNorm/InstanceNorm, nn.ReLU instead of nn.PReLU, "
                "nn.Conv2d instead of nn.Conv1d")
        for key, param in own:
            if id(module) in by_rows and key not in ("weight", "bias"):
                raise TypeError(f"parameter '{name}.{key}' of {type(module).__name__} '{name}' is neither its weight "
                                "nor its bias: rerelrp freezes a unit's weight and bias row by row and could not "
                                "freeze it, so every later task would change what old tasks compute")
            holders.setdefault(id(param), []).append(f"{name}.{key}")
    parameters = dict(model.named_parameters(remove_duplicate=False))
    for name in flow.attributes:
        if name in parameters:
            raise TypeError(
                f"parameter '{name}' is used by forward directly (as an attribute, e.g. x + self.{name.split('.')[-1]}"
                f" or x * self.{name.split('.')[-1]}), not through a module call: rerelrp freezes the parameters of "
                "units, the output layer and BatchNorms and could not freeze it, so every later task would change "
                "what old tasks compute. Hold it in a module: a BatchNorm for a learned shift and scale, an "
                "nn.Linear or nn.Conv2d for a learned map")
    for names in holders.values():
        if len(names) > 1:
            raise TypeError(
                f"parameter '{names[0]}' is shared: it is also '{', '.join(names[1:])}' (tied weights). rerelrp "
                "freezes a unit's weights per task, and freezing a unit of one module would freeze an unrelated unit "
                "of the other, while a fresh start of a free unit of one would rewrite a kept unit of the other; "
                "give each module a parameter of its own")


def _mask_hook(keep: torch.Tensor):
    def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (output.dim() - 2)
        return output * keep.to(device=output.device, dtype=output.dtype).view(shape)

    return hook


@contextlib.contextmanager
def masked(units: Units, keep: Sequence[torch.Tensor] | None) -> Iterator[None]:
    """Within the context, every unit whose ``keep`` entry is False outputs zero.

    ``keep`` holds one boolean tensor ``(n_units,)`` per unit layer; ``None``
    masks nothing. The hooks are removed on exit, whatever happens.
    """
    if keep is None:
        yield
        return
    if len(keep) != len(units.layers):
        raise ValueError(f"keep has {len(keep)} masks, the model has {len(units.layers)} unit layers")
    with hooks(*(layer.masked_module.register_forward_hook(_mask_hook(mask))
                 for layer, mask in zip(units.layers, keep))):
        yield


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode within the context and restore its previous mode on exit."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def unit_outputs(model: nn.Module, units: Units, x: torch.Tensor, keep: Sequence[torch.Tensor] | None,
                 layer: int = -1, batch_size: int = 256) -> torch.Tensor:
    """Outputs ``(n, n_units)`` of one unit layer (where its mask applies) for inputs ``x``, batch by batch.

    ``keep``: masks of the subnetwork to run (None: whole network); ``layer``: index into ``units.layers``.
    A convolution's channels are averaged over spatial positions. No gradient is recorded.
    """
    (outputs,) = layer_outputs(model, units, x, keep, {layer: position_mean}, batch_size)
    return outputs


def position_spread(output: torch.Tensor) -> torch.Tensor:
    """A convolution's ``(n, C, *positions)`` output as ``(n, 2 C)``: each channel's mean over positions, then each
    channel's standard deviation over them; a dense ``(n, U)`` output as it is."""
    if output.dim() <= 2:
        return output
    flat = output.flatten(2)
    return torch.cat([flat.mean(2), flat.std(2, correction=0)], 1)


def position_mean(output: torch.Tensor) -> torch.Tensor:
    """A convolution's ``(n, C, *positions)`` output as ``(n, C)``, each channel's mean over positions; a dense
    ``(n, U)`` output as it is."""
    return output.flatten(2).mean(2) if output.dim() > 2 else output


def position_grid(output: torch.Tensor) -> torch.Tensor:
    """A convolution's ``(n, C, H, W)`` output as ``(n, 4 C)``: each channel's means over a 2 x 2 grid of position
    blocks (adaptive average pooling: where they lie, not only how much); a dense ``(n, U)`` output as it is."""
    if output.dim() == 4:
        return torch.nn.functional.adaptive_avg_pool2d(output, 2).flatten(1)
    return position_mean(output)


def layer_outputs(model: nn.Module, units: Units, x: torch.Tensor, keep: Sequence[torch.Tensor] | None,
                  reduce: dict[int, Callable[[torch.Tensor], torch.Tensor]], batch_size: int = 256,
                  logits: Sequence[int] | None = None, head_input: bool = False) -> list[torch.Tensor]:
    """Outputs of several unit layers in one pass: for each ``layer: reduce`` of ``reduce`` (in its order),
    ``reduce`` applied batch by batch to the layer's output (where its mask applies) and concatenated, ``(n, ...)``;
    with ``head_input``, the input of the output layer, flattened, ``(n, in_features)``, after them; with ``logits``
    (global class ids), the model's logits of those classes ``(n, len(logits))`` last; all from the same pass. No
    gradient is recorded."""
    outputs: dict[int, list[torch.Tensor]] = {layer: [] for layer in reduce}
    heads: list[torch.Tensor] = []
    read: list[torch.Tensor] = []

    def capture(layer):
        return lambda module, inputs, output: outputs[layer].append(reduce[layer](output.detach()))

    # registered after the masks' hooks: they see the masked outputs
    with torch.no_grad(), eval_mode(model), masked(units, keep), \
            hooks(*(units.layers[i].masked_module.register_forward_hook(capture(i)) for i in reduce)) as held:
        if head_input:
            held.append(units.output.register_forward_pre_hook(
                lambda module, inputs: read.append(inputs[0].detach().flatten(1))))
        for start in range(0, len(x), batch_size):
            out = model(x[start:start + batch_size])
            if logits is not None:
                heads.append(out[:, list(logits)])
    return ([torch.cat(outputs[layer]) for layer in reduce] + ([torch.cat(read)] if head_input else [])
            + ([torch.cat(heads)] if logits is not None else []))
