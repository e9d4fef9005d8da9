"""Relevance: batched LRP with zennit, read at every unit and at the input.

One call runs one forward and one modified backward pass per batch through a
subnetwork (the model with a unit mask, see :func:`rerelrp.network.masked`),
starting from the logit of a target class inside a head. The relevance
arriving at the output of every unit layer is summed over spatial positions:
one number per unit and sample. Zennit's composite decides the rules; by
default those of :class:`zennit.composites.EpsilonPlusFlat` (flat rule on the
first layer, z+ on convolutions, epsilon on dense layers, zennit's Norm rule on
the Sum of a canonized residual block) with the model's canonizers
(``units.canonizers``, see :mod:`rerelrp.canonizers`: BatchNorm merged into the
layer it normalises, residual additions made modules): the same rules in one
autograd step each (:func:`rerelrp.rules.unit_composite`) when only the units
are read; zennit's own rules, with its ZBox rule on the first layer
(:func:`input_composite`), when the input relevance is asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from zennit.composites import EpsilonPlusFlat
from zennit.core import Composite
from zennit.rules import ZBox
from zennit.types import Linear as AnyLinear

from .contexts import hooks
from .network import Units, eval_mode, masked
from .rules import unit_composite

__all__ = ["Relevance", "default_composite", "input_composite", "lrp", "normalize_units"]


def default_composite(units: Units) -> Composite:
    """zennit's EpsilonPlusFlat with the canonizers of ``units`` (``find_units(model)``)."""
    return EpsilonPlusFlat(canonizers=list(units.canonizers))


def input_composite(units: Units, low: float, high: float) -> Composite:
    """:func:`default_composite` with zennit's ZBox rule, for inputs bounded by ``[low, high]``, on the first layer.

    The flat rule spreads a first-layer unit's relevance evenly over its receptive field: the whole input of a
    dense first layer, so every feature of an MLP's input got the same relevance. The rule of the first layer
    decides only the input relevance; the units' relevance is the same under both composites.
    """
    return EpsilonPlusFlat(first_map=[(AnyLinear, ZBox(low, high))], canonizers=list(units.canonizers))


@dataclass
class Relevance:
    """The result of :func:`lrp` for ``n`` samples.

    Attributes
    ----------
    target
        ``(n,)`` global class ids LRP started from.
    units
        one ``(n, n_units)`` tensor per unit layer: relevance at the layer's
        (masked) output, summed over spatial positions; not normalised.
    input
        ``(n, *input_shape)`` relevance of the input pixels/features, or
        None when not asked for.
    """

    target: torch.Tensor
    units: list[torch.Tensor]
    input: torch.Tensor | None


def lrp(
    model: nn.Module,
    units: Units,
    x: torch.Tensor,
    head: Sequence[int],
    *,
    target: torch.Tensor | None = None,
    keep: Sequence[torch.Tensor] | None = None,
    composite: Composite | None = None,
    batch_size: int = 256,
    with_input: bool = False,
) -> Relevance:
    """Run LRP through the subnetwork ``keep`` read by ``head``, batch by batch.

    Parameters
    ----------
    model
        the network; it is put in eval mode for the pass and restored afterwards.
    units
        ``find_units(model)``.
    x
        ``(n, *input_shape)`` inputs on the model's device.
    head
        global class ids of the head the subnetwork is read through.
    target
        ``(n,)`` global class ids to explain; None: the subnetwork's
        argmax inside ``head``.
    keep
        one bool mask ``(n_units,)`` per unit layer (None: whole network).
    composite
        zennit composite (None: :func:`rerelrp.rules.unit_composite`, or
        :func:`input_composite` bounded by the smallest and largest value of ``x`` when ``with_input``).
    batch_size
        samples per forward/backward pass.
    with_input
        also return the input relevance.

    Returns
    -------
    :class:`Relevance`; relevance starts from the target's logit value, so
    every layer's relevance sums to about that logit where rules conserve it.
    """
    if composite is None:
        composite = (input_composite(units, float(x.min()), float(x.max())) if with_input
                     else unit_composite(units.canonizers))
    head_t = torch.as_tensor(list(head), dtype=torch.long, device=x.device)
    # the input needs a gradient only for its own relevance, or when parameters without one would leave the
    # first units' outputs outside the autograd graph
    input_grad = with_input or not all(p.requires_grad for p in model.parameters())
    with eval_mode(model), composite.context(model), masked(units, keep), torch.enable_grad():
        targets, per_layer, inputs = _lrp_batches(model, units, x, head_t, target, batch_size, with_input,
                                                  input_grad)
    return Relevance(
        target=torch.cat(targets),
        units=[torch.cat(store) for store in per_layer],
        input=torch.cat(inputs) if with_input else None,
    )


def _lrp_batches(model, units, x, head, target, batch_size, with_input, input_grad):
    """Per batch of ``batch_size`` samples of ``x``, :func:`_lrp_batch` (inputs requiring a gradient when
    ``input_grad``); the targets, the unit relevance (one list per unit layer) and the input relevance (empty
    unless ``with_input``), batch by batch."""
    targets, per_layer, inputs = [], [[] for _ in units.layers], []
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size].detach().requires_grad_(input_grad)
        chunk_target = None if target is None else target[start:start + batch_size]
        t, layer_rel, in_rel = _lrp_batch(model, units, chunk, head, chunk_target, with_input)
        targets.append(t)
        if with_input:
            inputs.append(in_rel)
        for store, rel in zip(per_layer, layer_rel):
            store.append(rel)
    return targets, per_layer, inputs


def _lrp_batch(model, units, x, head, target, with_input):
    outputs: list[torch.Tensor] = []

    def capture(module, inputs, output):
        outputs.append(output)

    with hooks(*(layer.masked_module.register_forward_hook(capture) for layer in units.layers)):
        logits = model(x)
    if target is None:
        target = head[logits.detach()[:, head].argmax(1)]
    start = torch.zeros_like(logits)
    rows = torch.arange(len(x), device=x.device)
    start[rows, target] = logits.detach()[rows, target]
    wrt = [x, *outputs] if with_input else outputs
    grads = torch.autograd.grad(logits, wrt, grad_outputs=start)
    layer_rel = [g.detach().flatten(2).sum(2) if g.dim() > 2 else g.detach() for g in grads[-len(outputs):]]
    return target, layer_rel, grads[0].detach() if with_input else None


def normalize_units(layers: Sequence[torch.Tensor], eps: float = 1e-12) -> torch.Tensor:
    """L1-normalise each layer's relevance per sample and concatenate the layers.

    ``layers``: one ``(n, n_units)`` tensor per unit layer. Returns ``(n, total_units)``;
    each layer's block has absolute values summing to 1 (or is all zero).
    """
    return torch.cat([r / r.abs().sum(1, keepdim=True).clamp_min(eps) for r in layers], dim=1)
