"""Canonizers: zennit's, chosen for the model, with BatchNorm merged where the data flow says it belongs.

LRP's rules hold for a network of affine layers and activations; canonizers (zennit's term) rewrite a model
temporarily into that form. :func:`block_canonizers` gives the ones that change what forward computes, each
computing the same values as the original forward:

- residual additions become a :class:`zennit.layer.Sum` module, whose relevance zennit's Norm rule splits between
  the two branches in proportion to their contributions: zennit's own canonizers for torchvision's ResNet blocks
  (BasicBlock, Bottleneck), and :class:`ResidualCanonizer` for the inverted-residual blocks of MobileNetV2,
  MobileNetV3 and EfficientNet (``x + block(x)``);
- a squeeze-excitation product ``scale(x) * x`` becomes a :class:`Gate` module (:class:`GateCanonizer`): LRP treats
  the gate as a constant, so relevance passes through it to ``x`` unchanged (the epsilon rule of the diagonal map
  ``x -> s * x``) and none flows into the gate's own layers, which are therefore not units
  (:attr:`rerelrp.dataflow.Flow.gated`);
- a model forward that pools or rectifies with functions (MobileNetV2's ``adaptive_avg_pool2d``, DenseNet's
  ``F.relu`` and ``adaptive_avg_pool2d``) calls modules instead (:class:`ForwardCanonizer`), so that the pooling gets
  zennit's Norm rule, as in the ResNets, and the ReLU its module.

:func:`merge_batchnorm` merges each BatchNorm into the layer whose output it normalises, with zennit's
:class:`zennit.canonizers.NamedMergeBatchNorm`, for the pairs read from the data flow (zennit's
``SequentialMergeBatchNorm`` pairs modules by registration order, which need not be the forward order).
On torchvision's ResNets the two together equal zennit's own ``ResNetCanonizer`` (tested).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.models.densenet import DenseNet
from torchvision.models.efficientnet import FusedMBConv, MBConv
from torchvision.models.mobilenetv2 import InvertedResidual as InvertedResidualV2
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops.misc import SqueezeExcitation
from zennit.canonizers import AttributeCanonizer, Canonizer, NamedMergeBatchNorm
from zennit.layer import Sum
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

__all__ = ["Gate", "GateCanonizer", "ResidualCanonizer", "ForwardCanonizer", "block_canonizers", "merge_batchnorm"]


class _ConstantGate(torch.autograd.Function):
    """``x * scale`` whose backward passes the incoming gradient (in an LRP pass: the relevance) to ``x`` unchanged
    and zero to ``scale`` (zero rather than none, so that rules on the gate's layers still find a gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.scale_shape = scale.shape
        return x * scale

    @staticmethod
    def backward(ctx, relevance: torch.Tensor):
        return relevance, relevance.new_zeros(ctx.scale_shape)


class Gate(nn.Module):
    """A multiplicative gate, ``(x, scale) -> x * scale`` (``scale`` broadcast over ``x``), that LRP reads as a
    constant: all relevance goes to ``x``, none to ``scale``. Only canonized models hold it (:class:`GateCanonizer`),
    and only while LRP runs; training uses the model's own forward."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return _ConstantGate.apply(x, scale)


def _residual_forward(self, x: torch.Tensor) -> torch.Tensor:
    branch = self.conv(x) if isinstance(self, InvertedResidualV2) else self.block(x)
    if hasattr(self, "stochastic_depth"):  # EfficientNet: the identity in eval mode
        branch = self.stochastic_depth(branch)
    return self.canonizer_sum(torch.stack([x, branch], dim=-1))


class ResidualCanonizer(AttributeCanonizer):
    """The residual addition of torchvision's inverted-residual blocks (MobileNetV2's and MobileNetV3's
    ``InvertedResidual``, EfficientNet's ``MBConv`` and ``FusedMBConv``) through a :class:`zennit.layer.Sum`, as
    zennit's ResNet block canonizers do for BasicBlock and Bottleneck; blocks without a residual are left alone."""

    KINDS = (InvertedResidualV2, InvertedResidualV3, MBConv, FusedMBConv)

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict | None:
        if isinstance(module, cls.KINDS) and module.use_res_connect:
            return {"forward": _residual_forward.__get__(module), "canonizer_sum": Sum()}
        return None


def _gate_forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.canonizer_gate(x, self._scale(x))


class GateCanonizer(AttributeCanonizer):
    """torchvision's ``SqueezeExcitation`` (EfficientNet, MobileNetV3) multiplies through a :class:`Gate`."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict | None:
        if isinstance(module, SqueezeExcitation):
            return {"forward": _gate_forward.__get__(module), "canonizer_gate": Gate()}
        return None


def _mobilenet_v2_forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.classifier(torch.flatten(self.canonizer_pool(self.features(x)), 1))


def _densenet_forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.classifier(torch.flatten(self.canonizer_pool(self.canonizer_relu(self.features(x))), 1))


class ForwardCanonizer(AttributeCanonizer):
    """MobileNetV2's and DenseNet's forward with module calls where torchvision calls functions: an
    ``nn.AdaptiveAvgPool2d(1)`` for ``adaptive_avg_pool2d(x, (1, 1))`` and, in DenseNet, an ``nn.ReLU`` for
    ``F.relu``. The values are the same."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict | None:
        if isinstance(module, MobileNetV2):
            return {"forward": _mobilenet_v2_forward.__get__(module), "canonizer_pool": nn.AdaptiveAvgPool2d(1)}
        if isinstance(module, DenseNet):
            return {"forward": _densenet_forward.__get__(module), "canonizer_pool": nn.AdaptiveAvgPool2d(1),
                    "canonizer_relu": nn.ReLU()}
        return None


def block_canonizers(model: nn.Module) -> list[Canonizer]:
    """The canonizers that ``model``'s modules need: zennit's for torchvision's ResNet blocks (BasicBlock,
    Bottleneck), and :class:`ResidualCanonizer`, :class:`GateCanonizer` and :class:`ForwardCanonizer` for
    MobileNetV2, MobileNetV3, EfficientNet and DenseNet."""
    modules = list(model.modules())

    def has(*kinds) -> bool:
        return any(isinstance(m, kinds) for m in modules)

    candidates = [(ResNetBasicBlockCanonizer, (BasicBlock,)), (ResNetBottleneckCanonizer, (Bottleneck,)),
                  (ResidualCanonizer, ResidualCanonizer.KINDS), (GateCanonizer, (SqueezeExcitation,)),
                  (ForwardCanonizer, (MobileNetV2, DenseNet))]
    return [canonizer() for canonizer, kinds in candidates if has(*kinds)]


def merge_batchnorm(pairs: Sequence[tuple[str, str]]) -> list[Canonizer]:
    """A canonizer merging each BatchNorm into its layer: ``pairs`` of qualified names ``(layer, batchnorm)``."""
    return [NamedMergeBatchNorm([((layer,), norm) for layer, norm in pairs])] if pairs else []
