"""Architecture: a model checked against what rerelrp needs of it: its forward on the task's inputs, and its
parameter and buffer layout and the classes of its computing modules (a ReLU is not a Tanh, a MaxPool2d not an
AvgPool2d, though neither holds a parameter) as a save records them.

A learner that grew (``grow``) is saved at its grown widths; a model of the widths it had before it grew is grown
to them on load (:func:`widen_to_saved`), any other model must match the record exactly (:func:`check`).
"""
from __future__ import annotations

import copy
import itertools
import math
import numbers

import torch
from torch import nn

from .contexts import hooks
from .growth import widen_to
from .network import Units, eval_mode, find_units

__all__ = ["check_forward", "architecture", "modules", "check", "widen_to_saved", "check_saved", "on_meta",
           "check_input_shape"]


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


def modules(model: nn.Module) -> list[list[str]]:
    """``[name, class name]`` of every module of ``model`` that has no submodules (what computes: layers,
    activations, poolings; parameter-free ones too, which :func:`architecture` cannot see), in registration order."""
    return [[name, type(module).__name__] for name, module in model.named_modules()
            if next(module.children(), None) is None]


def check(saved: list, model: nn.Module, source: str, saved_modules: list | None = None) -> None:
    """Raise ValueError naming the first differences when ``model``'s :func:`architecture` is not ``saved`` (the
    record of ``source``, named in the message), or its :func:`modules` are not ``saved_modules`` (when given: saves
    written before this record was added lack it)."""
    for kind, record, current in [("architecture", saved, architecture(model)),
                                  ("modules", saved_modules, modules(model) if saved_modules is not None else None)]:
        if record == current:
            continue
        saved_d, current_d = ({r[0]: r[1] if len(r) == 2 else r[1:] for r in entries} for entries in (record, current))
        differences = [f"{k}: saved {saved_d.get(k)!r} vs model {current_d.get(k)!r}"
                       for k in dict.fromkeys([*saved_d, *current_d]) if saved_d.get(k) != current_d.get(k)]
        what = ("another architecture" if kind == "architecture"
                else "a model with other modules (activations, poolings)")
        raise ValueError(f"{source} was saved from {what}; differences: {'; '.join(differences[:5])}"
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


def _check_modules_record(record) -> None:
    """Raise ValueError unless a save's ``modules`` record is None (older saves) or ``[name, class name]`` pairs."""
    if record is not None and (not isinstance(record, list) or not all(
            isinstance(m, list) and len(m) == 2 and all(isinstance(s, str) for s in m) for m in record)):
        raise ValueError(f"modules {record!r:.200} in meta.json is not a list of [name, class name] pairs")


def _positive_int(value, zero: bool = False) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= (0 if zero else 1)


def check_saved(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Raise ValueError naming what does not fit when a save's ``meta`` (meta.json) does not describe its own
    ``tensors`` (tensors.safetensors) and itself: its ``architecture`` must be the ``model.*`` tensors' names, shapes
    and dtypes; each unit layer's ``widths`` the rows of its weight there; ``initial_sizes`` (None, or one positive
    int per layer, none above its width) plus the ``growth`` (None, or per task one int >= 0 per layer) the widths;
    ``input_shape`` positive ints; ``input_range`` None or two finite numbers, low <= high. Reads the file only: run
    before any model is grown or loaded, so that a load allocates no more than the tensors the file declares."""
    held = {k[len("model."):]: [list(v.shape), str(v.dtype)] for k, v in tensors.items() if k.startswith("model.")}
    declared = {}
    for entry in meta["architecture"]:
        name, shape, dtype = entry
        declared[name] = [shape, dtype]
    if declared != held:
        differences = [f"model.{k}: architecture {declared.get(k)} vs file {held.get(k)}"
                       for k in dict.fromkeys([*declared, *held]) if declared.get(k) != held.get(k)]
        raise ValueError(f"the architecture in meta.json does not describe the model tensors of tensors.safetensors: "
                         f"{'; '.join(differences[:5])}" + (f" (and {len(differences) - 5} more)"
                                                              if len(differences) > 5 else ""))
    widths = meta["widths"]
    if not isinstance(widths, dict) or not all(_positive_int(w) for w in widths.values()):
        raise ValueError(f"widths in meta.json must map unit layers to positive ints, got {widths!r:.200}")
    for name, width in widths.items():
        rows = held.get(f"{name}.weight", [[None]])[0]
        if not rows or rows[0] != width:
            raise ValueError(f"widths in meta.json give unit layer '{name}': {width} units, but model.{name}.weight in "
                             f"tensors.safetensors has shape {rows} ({rows[0] if rows else None} rows)")
    width_list = list(widths.values())
    initial = meta.get("initial_sizes")
    if initial is not None and (not isinstance(initial, list) or len(initial) != len(width_list)
                                or not all(_positive_int(n) and n <= w for n, w in zip(initial, width_list))):
        raise ValueError(f"initial_sizes {initial!r:.200} in meta.json do not fit the widths {width_list}: one "
                         "positive int per unit layer, none above its width")
    growth = meta.get("growth")
    if growth is not None:
        if not isinstance(growth, list) or not all(isinstance(g, list) and len(g) == len(width_list)
                                                   and all(_positive_int(n, zero=True) for n in g) for g in growth):
            raise ValueError(f"growth {growth!r:.200} in meta.json is not, per task, one int >= 0 per unit layer")
        if initial is not None and [n + sum(g[i] for g in growth) for i, n in enumerate(initial)] != width_list:
            raise ValueError(f"initial_sizes {initial} and growth in meta.json do not add up to the widths "
                             f"{width_list}")
    _check_modules_record(meta.get("modules"))
    shape = meta["input_shape"]
    if not isinstance(shape, list) or not shape or not all(_positive_int(n) for n in shape):
        raise ValueError(f"input_shape {shape!r:.200} in meta.json is not a list of positive ints")
    bounds = meta.get("input_range")
    if bounds is not None:
        if not isinstance(bounds, list) or len(bounds) != 2 or not all(
                isinstance(b, numbers.Real) and not isinstance(b, bool) and math.isfinite(b) for b in bounds):
            raise ValueError(f"input_range {bounds!r:.200} in meta.json is not None or two finite numbers")
        if bounds[0] > bounds[1]:
            raise ValueError(f"input_range {bounds!r} in meta.json is not (low, high) with low <= high")


def on_meta(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` whose parameters and buffers are on the meta device (shapes, no data: nothing is
    allocated), to try a growth or a forward on; None when ``model`` cannot be copied."""
    memo: dict[int, object] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        shadow = tensor.detach().to("meta")
        memo[id(tensor)] = nn.Parameter(shadow, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else shadow
    try:
        return copy.deepcopy(model, memo)
    except Exception:  # a module that cannot be deep-copied: the checks on the model itself must do
        return None


def check_input_shape(shadow: nn.Module, input_shape: list[int]) -> None:
    """Raise ValueError when the meta-device model ``shadow`` (:func:`on_meta`) cannot take inputs
    ``(2, *input_shape)``; a forward with an operation the meta device lacks is not judged."""
    dtype = next(itertools.chain(shadow.parameters(), [torch.empty(0)])).dtype
    try:
        with torch.no_grad():
            shadow.eval()(torch.zeros(2, *input_shape, dtype=dtype, device="meta"))
    except NotImplementedError:
        return
    except Exception as error:
        raise ValueError(f"input_shape {list(input_shape)} in meta.json: the model cannot take inputs of that shape: "
                         f"{type(error).__name__}: {error}") from error
