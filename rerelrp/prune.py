"""Prune: switch off the least relevant units while the head's accuracy holds.

A unit's score (:func:`unit_scores`) is its share of its layer's relevance,
per sample, times the layer's size, summed over samples: 1 per sample for a unit
that gets its layer's mean share, whatever the layer's size. The published shares (docs/method.md, section Prune)
alone rank a unit of a narrow layer above an equally relevant unit of a wide one, in the ratio of their widths:
on Split MNIST the first task then kept nearly every channel of the small CNN's second convolution, and the last
task, with almost no free channel left, fell well below the others (docs: Benchmarks, Recognition).

Only units that are still free are pruned: a unit frozen by an earlier task costs the new task nothing, so it
stays in the new task's subnetwork (it was there while the task trained), and the whole accuracy allowance is
spent on units that free capacity. The free units are ranked by score; the number pruned is found by
bisection on validation accuracy, about ``log2(free units)`` evaluations.

The threshold can be a paired test instead of a raw difference: with ``confidence`` c, a pruning is accepted unless its
validation accuracy is, at one-sided confidence c, more than ``acc_drop`` points below the unpruned network's
on the same images (the drop's standard error from the per-image differences). On a few dozen validation images
(BreastMNIST's) one wrong image is more than a point, so a raw threshold of a few points stops the search at noise;
on a thousand images the test is close to the raw threshold; c = 0.5 is the raw threshold (docs: User guide, Capacity).

What the threshold compares (the learner's ``drop_measure``, resolved by :func:`choose_measure`): per image, either
whether the subnetwork answers right (``"accuracy"``, the paper's) or the probability its softmax over the task's
classes gives the true class (``"probability"``: the mean is the accuracy of a classifier that answers by drawing
from its softmax). On a few
hundred validation images, accuracy is noise where a task's images lie near its decision boundaries (RetinaMNIST's:
few images, five graded classes): a pruning that costs a handful of images is refused, so the task keeps every free
unit; with probabilities an image that moves a little across a boundary moves the measure a little, and the task
keeps far fewer units at a small cost in test accuracy (docs: User guide, Capacity). ``"auto"`` (the learner's default)
compares accuracies where ``acc_drop`` points of the validation images are at least ``MIN_IMAGES_PER_DROP`` images
(as on Split and Permuted MNIST, a thousand validation images per task) and probabilities below.

A floor, ``min_keep``, keeps each layer's most relevant share whatever the accuracy (frozen units it keeps
count towards it): a task that a handful of units can solve (0 against 1) would otherwise keep a subnetwork too
narrow to tell its inputs from other tasks' (see :mod:`rerelrp.remember`). A ``budget`` caps, per layer, the
units the task may take from the free ones (see :mod:`rerelrp.capacity`): the layer's most relevant free units up
to the budget stay candidates, the others are pruned whatever the floor and the threshold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Callable, Sequence

import torch

from .relevance import normalize_units

__all__ = ["PruneResult", "prune_to_threshold", "unit_scores", "paired_drop", "choose_measure", "settle", "MEASURES",
           "MIN_IMAGES_PER_DROP"]

#: What :func:`choose_measure` accepts (the learner's ``drop_measure`` values).
MEASURES = ("auto", "accuracy", "probability")
#: Images that ``acc_drop`` points of the validation set must amount to for ``"auto"`` to compare accuracies.
MIN_IMAGES_PER_DROP = 20


@dataclass
class PruneResult:
    """Outcome of :func:`prune_to_threshold` (and of the learner's rounds of pruning and retraining).

    Attributes
    ----------
    keep
        one bool tensor ``(n_units,)`` per unit layer, True for survivors.
    n_pruned
        number of units switched off.
    base_accuracy
        validation accuracy (fraction; in the ``measure``) of the unpruned network.
    accuracy
        validation accuracy (fraction; in the ``measure``) with ``keep`` applied.
    trials
        ``(n_pruned, accuracy)`` of every evaluation, in order.
    budget
        per unit layer, the most free units the task could keep (None: no budget).
    over_threshold
        True when the budget forced a pruning beyond the accuracy threshold (for the learner's rounds,
        :func:`settle`: when the final subnetwork is beyond it and the budget forced a pruning in any round).
    measure
        what the accuracies are: ``"accuracy"`` (share of images answered right) or ``"probability"``
        (mean probability of the true class); see :func:`choose_measure`.
    """

    keep: list[torch.Tensor]
    n_pruned: int
    base_accuracy: float
    accuracy: float
    trials: list[tuple[int, float]] = field(default_factory=list)
    budget: list[int] | None = None
    over_threshold: bool = False
    measure: str = "accuracy"

    def to_dict(self) -> dict:
        """Everything but ``keep``, as JSON values."""
        return {"n_pruned": self.n_pruned, "base_accuracy": self.base_accuracy, "accuracy": self.accuracy,
                "trials": self.trials, "budget": self.budget, "over_threshold": self.over_threshold,
                "measure": self.measure}

    @classmethod
    def from_dict(cls, values: dict, keep: Sequence[torch.Tensor]) -> "PruneResult":
        """The result :meth:`to_dict` gave, with the survivors ``keep`` (one bool tensor per unit layer)."""
        return cls([k.cpu() for k in keep], values["n_pruned"], values["base_accuracy"], values["accuracy"],
                   [tuple(x) for x in values["trials"]], values.get("budget"),
                   bool(values.get("over_threshold", False)), values.get("measure", "accuracy"))


def choose_measure(measure: str, n_images: int, acc_drop: float) -> str:
    """What the pruning threshold compares on ``n_images`` validation images: ``measure`` itself when it is
    ``"accuracy"`` or ``"probability"``; for ``"auto"``, ``"accuracy"`` where ``acc_drop`` percentage points of
    ``n_images`` are at least :data:`MIN_IMAGES_PER_DROP` images, else ``"probability"``."""
    if measure not in MEASURES:
        raise ValueError(f"drop_measure must be one of {', '.join(map(repr, MEASURES))}, got {measure!r}")
    if measure != "auto":
        return measure
    return "accuracy" if n_images * acc_drop / 100.0 >= MIN_IMAGES_PER_DROP else "probability"


def unit_scores(layers: Sequence[torch.Tensor]) -> torch.Tensor:
    """Pruning score ``(total_units,)`` of every unit from its relevance, one ``(n, n_units)`` tensor per layer.

    Each sample's relevance is L1-normalised per layer and scaled by the layer's number of units (mean 1 per
    unit), then summed over samples; the layers are concatenated in order.
    """
    sizes = torch.tensor([r.shape[1] for r in layers], dtype=torch.float32)
    scale = torch.repeat_interleave(sizes, sizes.long()).to(layers[0].device)
    return normalize_units(layers).sum(0) * scale


def paired_drop(base: torch.Tensor, pruned: torch.Tensor, confidence: float) -> float:
    """Lower confidence bound of the accuracy drop (fraction) from ``base`` to ``pruned``.

    ``base``, ``pruned``: per-image correctness ``(n,)`` on the same images (bool or 0/1; or the probability of
    the true class, in [0, 1]), or one accuracy each (``(1,)``, no standard error). The bound is the mean paired
    difference minus ``z(confidence)`` standard errors; ``confidence=0.5`` gives the raw difference of accuracies.
    """
    d = base.double() - pruned.double()
    se = float(d.std() / math.sqrt(len(d))) if len(d) > 1 else 0.0
    return float(d.mean()) - NormalDist().inv_cdf(confidence) * se


def prune_to_threshold(
    scores: torch.Tensor,
    sizes: Sequence[int],
    correct: Callable[[list[torch.Tensor]], torch.Tensor | float],
    acc_drop: float,
    min_keep: float = 0.0,
    *,
    frozen: Sequence[torch.Tensor] | None = None,
    pruned: Sequence[torch.Tensor] | None = None,
    budget: Sequence[int] | None = None,
    confidence: float = 0.5,
    base: torch.Tensor | None = None,
    measure: str = "accuracy",
) -> PruneResult:
    """Find the largest set of least relevant free units that can be switched off.

    Parameters
    ----------
    scores
        ``(total_units,)`` relevance score per unit, layers concatenated.
    sizes
        units per layer, summing to ``total_units``.
    correct
        maps per-layer keep masks to the per-image correctness ``(n_val,)`` (bool, or the probability of
        the true class) of the subnetwork on validation data, or to its accuracy in [0, 1] (then the threshold is
        the raw difference).
    acc_drop
        allowed drop, in percentage points (e.g. 2.0 for 2 points).
    min_keep
        fraction in [0, 1] of each layer's units, its most relevant ones (rounded up, frozen ones
        counted), never pruned unless the budget says so.
    frozen
        one bool mask ``(n_units,)`` per layer of the units frozen by earlier tasks: never pruned.
    pruned
        one bool mask per layer of units that an earlier round already pruned: pruned first, whatever
        their score.
    budget
        per layer, the most free units that may be kept (None: no cap).
    confidence
        one-sided confidence of the paired test (see :func:`paired_drop`), in [0.5, 1).
    base
        the correctness that the drop is measured from (default: ``correct`` of the unpruned network).
    measure
        what ``correct`` returns, ``"accuracy"`` or ``"probability"``; recorded in the result.

    Returns
    -------
    :class:`PruneResult`: the least pruning allowed (the budget's, or ``pruned``) when that is already beyond the
    threshold (``over_threshold`` says when the budget forced it), else the largest pruning within it.
    """
    total = _check_arguments(scores, sizes, acc_drop, min_keep, confidence, measure, budget)
    order, forced, was_pruned, floor_units = _ranking(scores, sizes, total, min_keep, frozen, pruned, budget)
    search = _Search(order, sizes, total, correct, acc_drop, confidence, base)
    lo = int(forced.sum())
    hi = max(len(order) - floor_units, lo)
    lo, within = _largest_accepted(search.accepted, lo, hi)
    over = not within and bool((forced & ~was_pruned).any())
    accuracy = float(search.results[lo].float().mean())
    return PruneResult(search.keep_for(lo), lo, float(search.base.float().mean()), accuracy, search.trials,
                       None if budget is None else [int(b) for b in budget], over, measure)


def settle(result: PruneResult, base: torch.Tensor, final: torch.Tensor, acc_drop: float, confidence: float,
           budget_forced: bool) -> PruneResult:
    """The last of several rounds' ``result`` (pruning, then retraining the survivors) for the subnetwork the task
    ends with: its ``accuracy`` is ``final``'s (per-image correctness of that subnetwork after the last retraining,
    in the result's measure), and ``over_threshold`` says whether it is more than ``acc_drop`` points below
    ``base`` (the unpruned network's, by :func:`paired_drop` at ``confidence``) while ``budget_forced``: the budget
    pruned units whatever the accuracy, in some round. A later round's search counts the units an earlier round's
    budget forced as already pruned, so its own result cannot tell that the budget forced them."""
    final = torch.as_tensor(final).reshape(-1).cpu()
    result.accuracy = float(final.float().mean())
    beyond = paired_drop(torch.as_tensor(base).reshape(-1).cpu(), final, confidence) > acc_drop / 100.0 + 1e-12
    result.over_threshold = bool(budget_forced and beyond)
    return result


def _check_arguments(scores: torch.Tensor, sizes: Sequence[int], acc_drop: float, min_keep: float,
                     confidence: float, measure: str, budget: Sequence[int] | None) -> int:
    """Raise ValueError unless the arguments of :func:`prune_to_threshold` are valid; the total number of units."""
    if acc_drop < 0:
        raise ValueError(f"acc_drop must be >= 0 percentage points, got {acc_drop}")
    total = int(sum(sizes))
    if scores.shape != (total,):
        raise ValueError(f"scores must have shape ({total},), got {tuple(scores.shape)}")
    if not 0.0 <= min_keep <= 1.0:
        raise ValueError(f"min_keep must lie in [0, 1], got {min_keep}")
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must lie in [0.5, 1), got {confidence}")
    if measure not in MEASURES[1:]:
        raise ValueError(f"measure must be 'accuracy' or 'probability', got {measure!r}")
    if budget is not None and (len(budget) != len(sizes) or min(budget) < 0):
        raise ValueError(f"budget must be None or one count >= 0 per layer ({len(sizes)}), got {budget}")
    return total


def _flat(masks: Sequence[torch.Tensor] | None, total: int) -> torch.Tensor:
    """One bool mask per layer, concatenated on the CPU to ``(total,)``; None: all False."""
    return torch.zeros(total, dtype=torch.bool) if masks is None else torch.cat([m.cpu() for m in masks])


def _per_layer(sizes: Sequence[int], *flat: torch.Tensor):
    """Per layer, a tuple of views into each ``(total,)`` tensor of ``flat``."""
    return zip(*(torch.split(v, list(sizes)) for v in flat))


def _ranking(scores: torch.Tensor, sizes: Sequence[int], total: int, min_keep: float,
             frozen: Sequence[torch.Tensor] | None, pruned: Sequence[torch.Tensor] | None,
             budget: Sequence[int] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The free units in pruning order (``(n_free,)`` flat indices, least relevant first), the ``(total,)`` bool
    mask of units pruned whatever the accuracy (earlier rounds' and beyond the budget), the mask of the earlier
    rounds' alone, and the number of free units the floor ``min_keep`` protects (ranked last)."""
    is_frozen, was_pruned = _flat(frozen, total), _flat(pruned, total) & ~_flat(frozen, total)
    scores = scores.detach().cpu().double().clone()
    scores[was_pruned] = -math.inf
    forced = was_pruned.clone()
    _cap_to_budget(scores, is_frozen, forced, sizes, budget)
    floor_units = _protect_floor(scores, is_frozen, forced, sizes, min_keep)
    candidates = (~is_frozen).nonzero()[:, 0]
    order = candidates[torch.argsort(scores[candidates], stable=True)]
    return order, forced, was_pruned, floor_units


def _cap_to_budget(scores: torch.Tensor, is_frozen: torch.Tensor, forced: torch.Tensor, sizes: Sequence[int],
                   budget: Sequence[int] | None) -> None:
    """In place: each layer's least relevant free units beyond its budget are forced and scored ``-inf``."""
    for i, (block, fixed, out) in enumerate(_per_layer(sizes, scores, is_frozen, forced)):
        free = (~fixed).nonzero()[:, 0]
        if budget is not None and len(free) > budget[i]:  # views: the layer's least relevant beyond its budget
            ranked = free[torch.argsort(block[free], descending=True, stable=True)]
            out[ranked[budget[i]:]] = True
            block[ranked[budget[i]:]] = -math.inf


def _protect_floor(scores: torch.Tensor, is_frozen: torch.Tensor, forced: torch.Tensor, sizes: Sequence[int],
                   min_keep: float) -> int:
    """In place: each layer's most relevant unforced free units that the floor ``min_keep`` keeps (frozen units
    counted towards it) are scored ``+inf``; returns how many units that is over all layers."""
    floor_units = 0
    for block, fixed, out in _per_layer(sizes, scores, is_frozen, forced):
        n_floor = max(0, math.ceil(min_keep * len(block)) - int(fixed.sum()))
        free = (~fixed & ~out).nonzero()[:, 0]
        block[free[torch.topk(block[free], min(n_floor, len(free))).indices]] = math.inf  # ranked last
        floor_units += min(n_floor, len(free))
    return floor_units


class _Search:
    """The evaluations of one search: prunings of the first ``n`` units of ``order``, each evaluated at most once
    (``results``: per-image correctness by ``n``; ``trials``: ``(n, accuracy)`` in order), compared with
    ``base`` (evaluated on the unpruned network when None)."""

    def __init__(self, order: torch.Tensor, sizes: Sequence[int], total: int,
                 correct: Callable[[list[torch.Tensor]], torch.Tensor | float], acc_drop: float, confidence: float,
                 base: torch.Tensor | None):
        self.order, self.sizes, self.total, self.correct = order, sizes, total, correct
        self.acc_drop, self.confidence = acc_drop, confidence
        self.trials: list[tuple[int, float]] = []
        self.results: dict[int, torch.Tensor] = {}
        if base is None:
            base = self.results[0] = self.evaluate(0)
        self.base = torch.as_tensor(base).reshape(-1).cpu()

    def keep_for(self, n: int) -> list[torch.Tensor]:
        """Per-layer keep masks with the first ``n`` units of the order switched off."""
        mask = torch.ones(self.total, dtype=torch.bool)
        mask[self.order[:n]] = False
        return list(torch.split(mask, list(self.sizes)))

    def evaluate(self, n: int) -> torch.Tensor:
        """Per-image correctness ``(n_val,)`` (or ``(1,)``) of the pruning of ``n`` units, recorded in ``trials``."""
        c = torch.as_tensor(self.correct(self.keep_for(n))).reshape(-1).cpu()
        self.trials.append((n, float(c.float().mean())))
        return c

    def accepted(self, n: int) -> bool:
        """Whether pruning ``n`` units stays within the threshold (see :func:`paired_drop`)."""
        if n not in self.results:
            self.results[n] = self.evaluate(n)
        return paired_drop(self.base, self.results[n], self.confidence) <= self.acc_drop / 100.0 + 1e-12


def _largest_accepted(accepted: Callable[[int], bool], lo: int, hi: int) -> tuple[int, bool]:
    """Bisection between ``lo`` and ``hi`` for the largest accepted count, assumed monotone; returns it (``lo``
    itself when ``lo`` is not accepted) and whether ``lo`` was accepted."""
    within = accepted(lo)
    if within:
        if accepted(hi):
            lo = hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if accepted(mid):
                lo = mid
            else:
                hi = mid
    return lo, within
