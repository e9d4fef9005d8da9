"""Canonizers: zennit's, chosen for the model, with BatchNorm merged where the data flow says it belongs.

LRP's rules hold for a network of affine layers and activations; canonizers (zennit's term) rewrite a model
temporarily into that form. :func:`block_canonizers` gives the ones that change what forward computes
(zennit's ResNet block canonizers: the residual addition becomes a :class:`zennit.layer.Sum` module, whose
relevance zennit's Norm rule splits between the two branches in proportion to their contributions);
:func:`merge_batchnorm` merges each BatchNorm into the layer whose output it normalises, with zennit's
:class:`zennit.canonizers.NamedMergeBatchNorm`, for the pairs read from the data flow (zennit's
``SequentialMergeBatchNorm`` pairs modules by registration order, which need not be the forward order).
On torchvision's ResNets the two together equal zennit's own ``ResNetCanonizer`` (tested).
"""
from __future__ import annotations

from typing import Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from zennit.canonizers import Canonizer, NamedMergeBatchNorm
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

__all__ = ["block_canonizers", "merge_batchnorm"]


def block_canonizers(model: nn.Module) -> list[Canonizer]:
    """zennit's canonizers for the torchvision ResNet blocks (BasicBlock, Bottleneck) inside ``model``."""
    kinds = {type(m) for m in model.modules()}
    return ([ResNetBasicBlockCanonizer()] if BasicBlock in kinds else []) + (
        [ResNetBottleneckCanonizer()] if Bottleneck in kinds else [])


def merge_batchnorm(pairs: Sequence[tuple[str, str]]) -> list[Canonizer]:
    """A canonizer merging each BatchNorm into its layer: ``pairs`` of qualified names ``(layer, batchnorm)``."""
    return [NamedMergeBatchNorm([((layer,), norm) for layer, norm in pairs])] if pairs else []
