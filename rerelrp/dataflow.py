"""Data flow: the modules a model's forward really calls, in order, read from a ``torch.fx`` trace.

Registration order is not forward order in general: torchvision's ResNet registers a block's ``downsample``
after ``bn2`` but calls it on the block's input, calls one ``nn.ReLU`` twice per block, and adds the residual
with ``+``, which no module hook sees. :func:`trace` reads what forward computes instead (a symbolic trace: no
input needed), inside the canonizers that give residual additions a module of their own (zennit's
:class:`zennit.layer.Sum`), and refuses, naming the module, what LRP cannot be propagated through correctly:

- a sum, difference or product of two tensors that both depend on the input (an addition outside a
  canonized block would pass the full relevance into both operands, doubling it at every block);
- an activation called as a function (LRP rules attach to modules, so ``torch.relu`` in forward is invisible);
- a mean, sum or average pooling called as a function (``x.mean((2, 3))``, ``F.adaptive_avg_pool2d``): its
  gradient spreads relevance evenly, to inactive positions too, where zennit's Norm rule on an
  ``nn.AdaptiveAvgPool2d`` module shares it in proportion to each position's contribution;
- a forward that ``torch.fx`` cannot trace (control flow that depends on the input's values).
"""
from __future__ import annotations

import operator
import threading
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth
from zennit.core import Composite
from zennit.layer import Sum

from .canonizers import Gate
from .concurrency import TRACE_LOCK

__all__ = ["Flow", "trace", "traced", "is_shape"]

_COMBINING = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
              operator.truediv, operator.itruediv, operator.matmul, torch.add, torch.sub, torch.mul, torch.div,
              torch.matmul, torch.bmm, torch.einsum}
_COMBINING_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "matmul", "bmm"}
_ACTIVATIONS = {torch.relu, F.relu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.gelu, F.silu, F.elu,
                F.leaky_relu, F.softplus, F.softmax, torch.softmax, F.log_softmax, F.hardswish, F.relu6, F.mish}
_ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "softmax", "log_softmax"}
_REDUCING = {torch.mean, torch.sum, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
             F.avg_pool1d, F.avg_pool2d, F.avg_pool3d}
_REDUCING_METHODS = {"mean", "sum", "nanmean", "nansum"}
_SHAPE_METHODS = {"size", "dim", "numel", "type", "get_device"}
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}


@dataclass(frozen=True)
class Flow:
    """What a model's forward computes, module by module.

    Attributes
    ----------
    calls
        qualified names of the called modules in forward order; a module called twice appears twice.
    modules
        qualified name -> module, for every called module.
    reader
        qualified name -> the one module that reads its output, for modules whose output goes to exactly
        one place and that place is a module call.
    output
        qualified name of the module whose output forward returns as it is, or None.
    returns
        what forward returns, in words (``"the output of 'fc'"``, ``"a tuple of 2 (...)"``), for messages.
    gated
        qualified names of the modules whose output reaches forward's result only as the scale of a
        :class:`rerelrp.canonizers.Gate` (a squeeze-excitation's layers): LRP sends them no relevance.
    attributes
        qualified names of the tensors forward reads as attributes rather than through a module call
        (``self.shift`` in ``x + self.shift``: a parameter or buffer), in order, once each.
    """

    calls: tuple[str, ...]
    modules: dict[str, nn.Module]
    reader: dict[str, str]
    output: str | None
    gated: frozenset[str] = frozenset()
    attributes: tuple[str, ...] = ()
    returns: str = ""

    def count(self, name: str) -> int:
        """How many times forward calls the module ``name``."""
        return self.calls.count(name)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with the canonizers' layers (zennit's Sum, rerelrp's Gate) and torchvision's
    StochasticDepth (random in training, the identity in eval) kept as calls like torch.nn's modules.

    While it traces, fx replaces ``nn.Module.__call__`` and ``__getattr__`` for the whole process; calls from
    other threads (forwards of unrelated modules) pass through to the originals instead of into this trace."""

    def __init__(self):
        super().__init__()
        self.thread = threading.get_ident()

    def call_module(self, m: nn.Module, forward, args, kwargs):
        if threading.get_ident() != self.thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val, parameter_proxy_cache: dict):
        if threading.get_ident() != self.thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (Sum, Gate, StochasticDepth)) or super().is_leaf_module(m, qualname)


class _Root(nn.Module):
    """Calls ``model`` as its submodule ``model``: fx traces a root module's class ``forward``, and a canonizer that
    replaced a model's own forward (:class:`rerelrp.canonizers.ForwardCanonizer`) is seen only through a call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def trace(model: nn.Module, canonizers: Sequence = ()) -> Flow:
    """The :class:`Flow` of ``model.forward`` with ``canonizers`` applied (removed again on return).

    Raises
    ------
    TypeError
        naming the module, when forward cannot be traced, combines two input-dependent tensors
        arithmetically, or calls an activation as a function.
    """
    graph, modules = traced(model, canonizers)
    data: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or (node.op in ("call_module", "call_function", "call_method")
                                        and not is_shape(node) and any(a in data for a in node.all_input_nodes)):
            data.add(node)
        if node in data:
            _check(node, [a for a in node.all_input_nodes if a in data], model)
    calls = [n for n in graph.nodes if n.op == "call_module"]
    reader = {}
    for node in calls:
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            reader[node.target] = users[0].target
    (out,) = [n for n in graph.nodes if n.op == "output"]
    result = out.args[0]
    return Flow(calls=tuple(n.target for n in calls), modules={n.target: modules[n.target] for n in calls},
                reader=reader,
                output=result.target if isinstance(result, fx.Node) and result.op == "call_module" else None,
                gated=_gated(graph, modules),
                attributes=tuple(dict.fromkeys(n.target for n in graph.nodes if n.op == "get_attr")),
                returns=_described(result))


def _described(result) -> str:
    """What a traced forward returns (``result``: the output node's argument), in words."""
    if isinstance(result, fx.Node):
        if result.op == "call_module":
            return f"the output of {result.target!r}"
        return f"the result of {getattr(result.target, '__name__', result.target)!s}"
    if isinstance(result, (tuple, list)):
        return f"a {type(result).__name__} of {len(result)} ({', '.join(map(_described, result))})"
    if isinstance(result, dict):
        return f"a dict with keys {list(result)}"
    return repr(result)


def _gated(graph: fx.Graph, modules: dict[str, nn.Module]) -> frozenset[str]:
    """Modules that feed a Gate's scale and reach the output by no other path."""
    main: set[fx.Node] = set()
    scales: set[fx.Node] = set()
    for node in reversed(graph.nodes):  # every user of a node comes before it
        on_main = node.op == "output" or node in main
        gate = node.op == "call_module" and isinstance(modules[node.target], Gate)
        for argument in node.all_input_nodes:
            if gate and len(node.args) > 1 and argument is node.args[1]:
                scales.add(argument)
            elif on_main:
                main.add(argument)
            elif node in scales:
                scales.add(argument)
    return frozenset(n.target for n in scales - main if n.op == "call_module")


def traced(model: nn.Module, canonizers: Sequence = ()) -> tuple[fx.Graph, dict[str, nn.Module]]:
    """The ``torch.fx`` graph of ``model.forward`` with ``canonizers`` applied, and the model's modules by qualified
    name (those the canonizers add included); the canonizers are removed again on return.

    Raises
    ------
    TypeError
        when forward cannot be traced.
    """
    with TRACE_LOCK.exclusive(), Composite(canonizers=list(canonizers)).context(model):
        modules = dict(model.named_modules())  # with the modules canonizers add
        try:
            if "forward" not in vars(model):
                return _Tracer().trace(model), modules
            graph = _Tracer().trace(_Root(model))
        except Exception as error:  # fx raises several types (TraceError, TypeError, RuntimeError, ...)
            raise TypeError(
                f"rerelrp cannot follow the data flow of {type(model).__name__}.forward with torch.fx ({error}); "
                "units, masks and LRP need a forward whose operations do not depend on the input's values") from error
    for node in graph.nodes:  # names relative to the model, as without the wrapper
        if node.op in ("call_module", "get_attr"):
            node.target = node.target[len("model."):]
        stack = node.meta.get("nn_module_stack") or {}
        node.meta["nn_module_stack"] = {key: (name[len("model."):], kind) for key, (name, kind) in stack.items()
                                        if name.startswith("model.")}
    return graph, modules


def is_shape(node: fx.Node) -> bool:
    """Whether ``node`` reads a tensor's shape or type rather than its values."""
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    return node.op == "call_function" and node.target is getattr and node.args[1] in _SHAPE_ATTRIBUTES


def _check(node: fx.Node, data_inputs: list[fx.Node], model: nn.Module) -> None:
    where = _where(node, model)
    name = getattr(node.target, "__name__", str(node.target))
    if _calls(node, _ACTIVATIONS, _ACTIVATION_METHODS):
        raise TypeError(
            f"{name} is called as a function {where}: activations must be modules (nn.ReLU(), ...), since LRP "
            "rules attach to modules and cannot see functional calls inside forward()")
    if _calls(node, _REDUCING, _REDUCING_METHODS):
        raise TypeError(
            f"{name} is called as a function {where}: LRP would spread relevance evenly over the values it reduces, "
            "inactive ones included; pool with a module (nn.AdaptiveAvgPool2d(1), nn.AvgPool2d) followed by "
            "torch.flatten, whose relevance zennit's Norm rule shares by contribution")
    if _calls(node, _COMBINING, _COMBINING_METHODS) and len(set(data_inputs)) >= 2:
        raise TypeError(
            f"'{name}' of two input-dependent tensors {where} cannot be analysed: LRP would pass the full "
            "relevance into both operands. Residual additions are supported inside torchvision's ResNet blocks "
            "(BasicBlock, Bottleneck), whose canonizers route them through a zennit Sum module; other models "
            "must combine branches with modules, or torch.cat")


def _calls(node: fx.Node, functions: set, methods: set[str]) -> bool:
    """Whether ``node`` calls one of ``functions`` or one of the tensor ``methods``."""
    return (node.op == "call_function" and node.target in functions) or (
        node.op == "call_method" and node.target in methods)


def _where(node: fx.Node, model: nn.Module) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return f"in {type(model).__name__}.forward"
    qualname, kind = list(stack.values())[-1]
    return f"in module '{qualname}' ({getattr(kind, '__name__', kind)})"
