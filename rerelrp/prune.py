"""Prune: switch off the least relevant units while the head's accuracy holds.

A unit's score (:func:`unit_scores`) is its share of its layer's relevance,
per sample, times the layer's size, summed over samples: 1 per sample for a unit
that gets its layer's mean share, whatever the layer's size. METHOD.md's shares
alone rank a unit of a 16-channel convolution 8 times above an equally relevant
unit of a 128-unit dense layer, so the first task kept 29 of 32 channels of the
small CNN's second convolution, and the last task of Split MNIST, with almost
no free channel left, reached 93.4 % task-aware accuracy against 97-99 % for the
others (validation, seed 0; task-agnostic over 2 seeds 95.4 % against 94.9 %).
Units are ranked globally by score (output layer excluded). The
number of pruned units is found by bisection on validation accuracy: the
largest count whose accuracy stays within ``acc_drop`` percentage points of
the unpruned network. About ``log2(total units)`` evaluations. A floor,
``min_keep``, keeps each layer's most relevant share whatever the accuracy: a
task that a handful of units can solve (0 against 1) would otherwise keep a
subnetwork too narrow to tell its inputs from other tasks' (see
:mod:`rerelrp.remember`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .relevance import normalize_units

__all__ = ["PruneResult", "prune_to_threshold", "unit_scores"]


@dataclass
class PruneResult:
    """Outcome of :func:`prune_to_threshold`.

    Attributes
    ----------
    keep: one bool tensor ``(n_units,)`` per unit layer, True for survivors.
    n_pruned: number of units switched off.
    base_accuracy: validation accuracy (fraction) of the unpruned network.
    accuracy: validation accuracy (fraction) with ``keep`` applied.
    trials: ``(n_pruned, accuracy)`` of every evaluation, in order.
    """

    keep: list[torch.Tensor]
    n_pruned: int
    base_accuracy: float
    accuracy: float
    trials: list[tuple[int, float]] = field(default_factory=list)


def unit_scores(layers: Sequence[torch.Tensor]) -> torch.Tensor:
    """Pruning score ``(total_units,)`` of every unit from its relevance, one ``(n, n_units)`` tensor per layer.

    Each sample's relevance is L1-normalised per layer and scaled by the layer's number of units (mean 1 per
    unit), then summed over samples; the layers are concatenated in order.
    """
    sizes = torch.tensor([r.shape[1] for r in layers], dtype=torch.float32)
    scale = torch.repeat_interleave(sizes, sizes.long()).to(layers[0].device)
    return normalize_units(layers).sum(0) * scale


def prune_to_threshold(
    scores: torch.Tensor,
    sizes: Sequence[int],
    accuracy: Callable[[list[torch.Tensor]], float],
    acc_drop: float,
    min_keep: float = 0.0,
) -> PruneResult:
    """Find the largest set of least relevant units that can be switched off.

    Parameters
    ----------
    scores: ``(total_units,)`` relevance score per unit, layers concatenated.
    sizes: units per layer, summing to ``total_units``.
    accuracy: maps per-layer keep masks to validation accuracy in [0, 1].
    acc_drop: allowed drop, in percentage points (e.g. 2.0 for 2 points).
    min_keep: fraction in [0, 1] of each layer's units, its most relevant ones (rounded up), never pruned.

    Returns
    -------
    :class:`PruneResult` whose ``accuracy >= base_accuracy - acc_drop / 100``.
    """
    if acc_drop < 0:
        raise ValueError(f"acc_drop must be >= 0 percentage points, got {acc_drop}")
    total = int(sum(sizes))
    if scores.shape != (total,):
        raise ValueError(f"scores must have shape ({total},), got {tuple(scores.shape)}")
    if not 0.0 <= min_keep <= 1.0:
        raise ValueError(f"min_keep must lie in [0, 1], got {min_keep}")
    scores = scores.detach().cpu().clone()
    floor_units = 0
    for block in torch.split(scores, list(sizes)):
        n_floor = math.ceil(min_keep * len(block))
        block[torch.topk(block, n_floor).indices] = math.inf  # a view: ranked last, never reached below
        floor_units += n_floor
    order = torch.argsort(scores, stable=True)
    trials: list[tuple[int, float]] = []

    def keep_for(n: int) -> list[torch.Tensor]:
        flat = torch.ones(total, dtype=torch.bool)
        flat[order[:n]] = False
        return list(torch.split(flat, list(sizes)))

    def evaluate(n: int) -> float:
        acc = float(accuracy(keep_for(n)))
        trials.append((n, acc))
        return acc

    base = evaluate(0)
    floor = base - acc_drop / 100.0
    results = {0: base}
    lo, hi = 0, total - floor_units
    results[hi] = evaluate(hi)
    if results[hi] >= floor:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        results[mid] = evaluate(mid)
        if results[mid] >= floor:
            lo = mid
        else:
            hi = mid
    return PruneResult(keep_for(lo), lo, base, results[lo], trials)
