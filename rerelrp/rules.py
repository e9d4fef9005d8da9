"""Rules: zennit's epsilon and z+ rules, each as one autograd step.

Zennit's rules (:class:`zennit.core.BasicHook`) are general: in the backward
pass each rule runs its layer's forward again with modified weights, takes a
second gradient through it, and the layer's own backward runs as well and is
thrown away. For the rules of :class:`zennit.composites.EpsilonPlusFlat` on
``nn.Linear`` and ``nn.Conv2d`` layers none of that is needed:

- epsilon: ``R_in = a * W^T (R_out / stab(z))``, and ``z = W a + b`` is the
  layer's own output, so one transposed product per layer is all the backward
  work (the plain gradient needs the same product);
- z+: ``R_in = a+ * W+^T (R / stab(z+)) + a- * W-^T (R / stab(z+))`` with
  ``z+ = W+ a+ + b+ + W- a-``; after a ReLU, ``a-`` is zero and its half is
  skipped (its terms are exact zeros).

:class:`Epsilon` and :class:`ZPlus` here are zennit hooks that compute exactly
these formulas (zennit's ``stabilize``, the same clamped weights) with one
forward hook per layer, so they compose with zennit's composites and
canonizers. Zennit remains the reference: the tests compare every relevance
with zennit's own rules.

A layer whose input needs no gradient (the first layer, when only unit
relevance is asked for) gets no rule at all: relevance below the first units
is never read.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from zennit.canonizers import Canonizer
from zennit.core import Composite, Hook, RemovableHandle, RemovableHandleList, stabilize
from zennit.layer import Sum
from zennit.rules import Epsilon as ZennitEpsilon
from zennit.rules import Norm, Pass
from zennit.rules import ZPlus as ZennitZPlus
from zennit.types import Activation, AvgPool, BatchNorm, Convolution

__all__ = ["Epsilon", "ZPlus", "unit_composite"]


def _forward(module: nn.Module, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``module``'s affine map with other parameters: ``(n, *in) -> (n, *out)``."""
    if isinstance(module, nn.Linear):
        return F.linear(a, weight, bias)
    return module._conv_forward(a, weight, bias)


def _transpose(module: nn.Module, shape: torch.Size, weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``W^T s``: the gradient of ``module``'s map w.r.t. an input of ``shape``, for output gradient ``s``."""
    if isinstance(module, nn.Linear):
        return s @ weight
    return torch.nn.grad.conv2d_input(shape, weight, s, module.stride, module.padding, module.dilation,
                                      module.groups)


class _EpsilonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, z, module, epsilon):
        ctx.save_for_backward(a, stabilize(z.detach(), epsilon))
        ctx.module = module
        return z.detach().clone()

    @staticmethod
    def backward(ctx, relevance):
        a, denominator = ctx.saved_tensors
        weight = ctx.module.weight.detach()
        return a * _transpose(ctx.module, a.shape, weight, relevance / denominator), None, None, None


class _ZPlusFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, z, module, stabilizer):
        a = a.detach()
        weight, bias = module.weight.detach(), module.bias
        bias = None if bias is None else bias.detach().clamp(min=0.)
        positive, negative = weight.clamp(min=0.), weight.clamp(max=0.)
        signed = bool((a < 0).any())
        if signed:
            z_plus = _forward(module, a.clamp(min=0.), positive, bias) + _forward(module, a.clamp(max=0.), negative,
                                                                                  None)
        else:
            z_plus = _forward(module, a, positive, bias)
        ctx.save_for_backward(a, stabilize(z_plus, stabilizer), positive, negative)
        ctx.module, ctx.signed = module, signed
        return z.detach().clone()

    @staticmethod
    def backward(ctx, relevance):
        a, denominator, positive, negative = ctx.saved_tensors
        s = relevance / denominator
        if not ctx.signed:
            return a * _transpose(ctx.module, a.shape, positive, s), None, None, None
        upper, lower = a.clamp(min=0.), a.clamp(max=0.)
        return (upper * _transpose(ctx.module, a.shape, positive, s)
                + lower * _transpose(ctx.module, a.shape, negative, s)), None, None, None


class _OneStepRule(Hook):
    """A zennit hook that replaces its layer's output by an autograd step computing the rule."""

    function: type[torch.autograd.Function]

    def __init__(self, stabilizer: float = 1e-6):
        super().__init__()
        self.stabilizer = stabilizer

    def register(self, module: nn.Module) -> RemovableHandleList:
        return RemovableHandleList([RemovableHandle(self), module.register_forward_hook(self._hook)])

    def _hook(self, module, inputs, output):
        if not (self.active and inputs[0].requires_grad and output.requires_grad):
            return None
        return self.function.apply(inputs[0], output, module, self.stabilizer)

    def copy(self) -> "_OneStepRule":
        return type(self)(self.stabilizer)


class Epsilon(_OneStepRule):
    """zennit's :class:`zennit.rules.Epsilon` for ``nn.Linear`` and ``nn.Conv2d``, without its second pass."""

    function = _EpsilonFunction


class ZPlus(_OneStepRule):
    """zennit's :class:`zennit.rules.ZPlus` for ``nn.Linear`` and ``nn.Conv2d``, without its second pass."""

    function = _ZPlusFunction


def unit_composite(canonizers: Sequence[Canonizer] = (), epsilon: float = 1e-6, stabilizer: float = 1e-6
                   ) -> Composite:
    """EpsilonPlusFlat's rules above the first layer, with ``canonizers`` (``find_units(model).canonizers``):
    for unit relevance only.

    ``nn.Linear`` gets :class:`Epsilon`, ``nn.Conv2d`` with numeric zero padding :class:`ZPlus`, their
    subclasses and other convolutions zennit's epsilon and z+; ReLU keeps its gradient (the rule above it already
    gives zero relevance wherever a ReLU outputs zero, so zennit's pass-through rule and the gradient agree); other
    activations and BatchNorm pass relevance through, average pooling and a canonized residual block's Sum
    normalise, as in zennit. The first layer's flat rule changes only the input relevance, which this composite
    never computes.
    """
    rules = {"linear": Epsilon(epsilon), "conv": ZPlus(stabilizer), "other_linear": ZennitEpsilon(epsilon=epsilon),
             "other_conv": ZennitZPlus(stabilizer=stabilizer), "pass": Pass(), "norm": Norm(stabilizer=stabilizer)}

    def module_map(ctx, name, module):
        if isinstance(module, nn.ReLU):
            return None
        if type(module) is nn.Linear:
            return rules["linear"]
        if type(module) is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str):
            return rules["conv"]
        if isinstance(module, nn.Linear):
            return rules["other_linear"]
        if isinstance(module, Convolution):
            return rules["other_conv"]
        if isinstance(module, (Activation, BatchNorm)):
            return rules["pass"]
        if isinstance(module, (AvgPool, Sum)):
            return rules["norm"]
        return None

    return Composite(module_map=module_map, canonizers=list(canonizers))
