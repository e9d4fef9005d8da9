"""Novelty: how typical an input is of the task it was recognized as, and the answer "none of my tasks".

Three measures of an input under the task m it is recognized as, all from task m's subnetworks S_0..S_m (frozen
from task m on, so they never change):

- ``own``: the log-likelihood under the class mixtures of the detector chain, in detector m's space (the last
  hidden layer, the units detector m reads; :mod:`rerelrp.recognize`): how much the input looks like the task's
  data to the network.
- ``low``: the log-likelihood under one Gaussian per class of the first unit layer's low-level statistics
  (:func:`low_features`: a convolution's channels' mean and log spread over positions; 0 where the first unit layer
  is dense), kept by :class:`LowLevelStatistics` as ``novelty_memory_``: how much the input looks like the task's
  images. A constant grey image, noise or another modality can pass the last layer (the medical learner took
  constant images for known ones) but not its first layer's statistics (docs: How-to, Unknown inputs).
- ``conf``: the head's :func:`confidence`, the log-odds of its top class among the task's classes: how sure the
  task's own classifier is. Digits of tasks not learned yet look like digits to both densities, but the head of
  the task they are taken for is less sure of them: with it Split MNIST's next tasks are told apart better than
  without it or by the maximum softmax probability alone (docs: How-to, Unknown inputs).

Measures of different spaces and tasks are not comparable as they are, so each task is calibrated on its own
validation inputs when it is learned (:func:`calibrate`: the :data:`LEVELS` quantiles of each measure and of their
:func:`typicality`, ``(4, 101)`` numbers per task; no input is kept):

- :func:`typicality`: ``own`` and ``conf`` standardized as ``(value - median) / (median - 5 % quantile)`` of the
  task's validation inputs and added, less how far ``low``, standardized the same way, is below -1 (its 5 %
  quantile): the first layer's statistics count only against inputs that look unlike 95 % of the task's
  validation images, so they leave the ranking of inputs that look like the task's images as it is.
- :func:`standardize`: the score, the typicality standardized the same way: 0 for a median validation input,
  -1 at the 5 % quantile, comparable between tasks.
- :func:`accepted`: the input is known when its typicality is at least its task's ``1 - known_fraction``
  quantile, read so that a ``known_fraction`` of new inputs like the task's validation inputs is accepted
  (:func:`finite_sample_levels`: a small validation set's plain quantile accepts fewer).

All three come from the pass the detector chain makes anyway (the first unit layer and the head are read in the
same forward pass as the last hidden layer: S_m holds every unit of S_0..S_m-1, so the head's logits through them
are the task-aware ones); only inputs recognized as the newest task need one more pass (through S_0..S_T-1): what
predict saves by not running a rejected input's head.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch

from .remember import ActivationStatistics, GaussianDensities

__all__ = ["Measures", "judge", "check_quantiles", "LEVELS", "SPREAD_FLOOR", "LowLevelStatistics", "calibrate",
           "finite_sample_levels", "confidence", "low_features", "spread_floor", "standardize", "threshold", "accepted",
           "typicality"]

#: Prefix of the names of :class:`LowLevelStatistics`' tensors in a learner's state.
PREFIX = "novelty-memory."

#: Quantile levels of the validation log-likelihoods kept per task.
LEVELS = np.linspace(0.0, 1.0, 101)

#: The log of a channel's spread over positions is taken of ``spread + floor``, ``floor`` this share of the mean
#: spread of the task's training inputs (:func:`spread_floor`), so that a flat channel (a constant image) is far
#: below every training image instead of at minus infinity.
SPREAD_FLOOR = 1e-3


class Measures(NamedTuple):
    """The measures of ``n`` inputs under one task m, all from one pass through S_0..S_m (see the module's
    docstring): ``own``, ``low`` and ``conf`` ``(n,)`` float64, and ``classes`` ``(n,)``, task m's task-aware
    answers (global class ids)."""

    own: np.ndarray
    low: np.ndarray
    conf: np.ndarray
    classes: torch.Tensor


def judge(own: np.ndarray, low: np.ndarray, conf: np.ndarray, task: np.ndarray, quantiles: Sequence[np.ndarray],
          known_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``(n,)`` (:func:`standardize`) and whether each input is known ``(n,)`` bool (:func:`accepted`), from
    each input's measures ``own``, ``low``, ``conf`` ``(n,)`` under the task ``task`` ``(n,)`` it is recognized
    as, each task calibrated by its ``quantiles[m]`` ``(4, 101)``. A NaN typicality (measures that overflowed) is
    never known and scores -inf, so that no comparison of its score takes it for known."""
    score, known = np.empty(len(task)), np.ones(len(task), dtype=bool)
    for m in np.unique(task).tolist():
        rows = task == m
        typical = typicality(own[rows], low[rows], conf[rows], quantiles[m])
        score[rows] = np.where(np.isnan(typical), -np.inf, standardize(typical, quantiles[m]))
        known[rows] = accepted(typical, quantiles[m], known_fraction)
    return score, known


def spread_floor(spread: torch.Tensor) -> float:
    """The floor of a task: :data:`SPREAD_FLOOR` of the mean of its training inputs' spreads, the second half of the
    columns of a convolution's ``(n, 2 C)`` :func:`rerelrp.network.position_spread`."""
    half = spread.shape[1] // 2
    return SPREAD_FLOOR * max(float(spread[:, half:].mean()), float(torch.finfo(torch.float32).tiny))


def low_features(spread: torch.Tensor, floor: float) -> torch.Tensor:
    """The first unit layer's low-level statistics from a convolution's :func:`rerelrp.network.position_spread`
    ``(n, 2 C)``: channel means, then ``log(spread + floor)``."""
    half = spread.shape[1] // 2
    return torch.cat([spread[:, :half], torch.log(spread[:, half:] + floor)], 1)


class LowLevelStatistics:
    """Per task, one Gaussian per class of its training inputs' :func:`low_features` in the first unit layer
    through S_0..S_t, in the columns that vary most on the task's data of those of the kept units: up to
    ``2 n_features`` (mean and spread of ``n_features`` channels). (One Gaussian per task instead of per class
    separated Split MNIST's next tasks less, in a trial that read every channel, the free ones too.) Only where the
    first unit layer is a convolution, where its statistics say how an image looks and were measured to help (docs:
    Unknown inputs); a dense first layer (an MLP) keeps nothing, and its ``low`` log-likelihoods are 0, so
    :func:`typicality` is ``z_own`` there.

    Attributes
    ----------
    memory
        an :class:`rerelrp.remember.ActivationStatistics` whose space t holds task t's classes only.
    floors
        per task, its :func:`spread_floor` (None where the first unit layer is dense: no statistics kept).
    densities
        the :class:`rerelrp.remember.GaussianDensities` of ``memory`` (rebuilt by :meth:`fit`).
    """

    def __init__(self, n_features: int, random_state: int | None = None):
        self.n_features = n_features
        self.memory = ActivationStatistics(n_features, 1, random_state)
        self.floors: list[float | None] = []
        self.densities = GaussianDensities()

    def add_task(self, spread: torch.Tensor, y: torch.Tensor, classes: list[int], kept: torch.Tensor) -> None:
        """Remember the newest task from its training inputs' ``(n, 2 C)`` (convolution) or ``(n, U)`` (dense)
        :func:`rerelrp.network.position_spread` ``spread``, their labels ``y`` ``(n,)`` and the first unit layer's
        units kept by S_0..S_t, ``kept`` ``(C,)`` or ``(U,)`` bool."""
        if spread.shape[1] != 2 * len(kept):  # dense: nothing kept, every input scores 0 (see the class docstring)
            self.floors.append(None)
            return
        floor = spread_floor(spread)
        features = low_features(spread, floor)
        self.memory.n_features = 2 * self.n_features
        units = kept.nonzero()[:, 0].cpu()
        self.memory.choose_units(torch.cat([units, units + len(kept)]), features.cpu())
        t = self.memory.n_tasks - 1
        for c in classes:
            self.memory.add_class(t, c, self.memory.select(t, features[y == c]))
        self.floors.append(floor)

    def fit(self, tasks: list[list[int]]) -> "LowLevelStatistics":
        """Build the densities of the tasks remembered (``tasks``: the class ids of each)."""
        if self.memory.n_tasks:  # none with a dense first layer
            self.densities.fit(self.memory, tasks)
        return self

    def state_dict(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """``(index, tensors)``: :meth:`rerelrp.remember.ActivationStatistics.state_dict` of :attr:`memory` with the
        tensors named ``novelty-memory.*``, and the :attr:`floors` in the index."""
        index, tensors = self.memory.state_dict(PREFIX)
        return {**index, "floors": self.floors}, tensors

    def load_state_dict(self, index: dict, tensors: dict[str, torch.Tensor], tasks: list[list[int]]) -> None:
        """Restore from :meth:`state_dict`'s ``(index, tensors)`` of the learner's ``tasks`` (class ids of each); raises
        ValueError, naming the entry, when they do not fit the tasks. Call :meth:`fit` next."""
        self.memory.load_state_dict(index, tensors, PREFIX)
        self.floors = index["floors"]
        if len(self.floors) != len(tasks) or any(f is not None and not (np.isfinite(f) and f > 0)
                                                 for f in self.floors):
            raise ValueError("meta.json gives the first layer's statistics floors that are not one positive number "
                             "per task")
        if len(self.memory.classes) != sum(f is not None for f in self.floors):
            raise ValueError("meta.json gives first-layer statistics to other tasks than those with a floor")
        for m, per in enumerate(self.memory.classes):
            if set(per) != set(tasks[m]):
                raise ValueError(f"meta.json gives the first layer's statistics of task {m} the classes "
                                 f"{sorted(per)}, not task {m}'s")

    def loglik(self, m: int, spread: torch.Tensor) -> np.ndarray:
        """Log-likelihoods ``(n,)`` of inputs under task m's classes, from their :func:`position_spread` ``spread``
        through S_0..S_m (zeros where the first unit layer is dense)."""
        if self.floors[m] is None:
            return np.zeros(len(spread))
        features = self.memory.select(m, low_features(spread, self.floors[m]))
        return self.densities.task_loglik(m, features, slice(m, m + 1))[:, 0]


def confidence(logits: torch.Tensor) -> np.ndarray:
    """``(n,)``: the log-odds ``log p / (1 - p)`` of the top class's softmax probability ``p`` over the ``(n, k)``
    logits of one task's classes (for two classes, the margin between their logits); 0 for a one-class task."""
    logits = logits.detach().double().cpu()
    if logits.shape[1] < 2:
        return np.zeros(len(logits))
    top = logits.max(1)
    others = logits.scatter(1, top.indices[:, None], -torch.inf)
    return (top.values - torch.logsumexp(others, 1)).numpy()


def calibrate(own: np.ndarray, low: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """``(4, 101)``: the :data:`LEVELS` quantiles of a task's ``(n,)`` validation log-likelihoods ``own`` and
    ``low``, of its head's :func:`confidence` ``conf``, and, read at the :func:`finite_sample_levels` of ``n``, of
    their :func:`typicality` (n >= 2, finite)."""
    quantiles = np.stack([_quantiles(own), _quantiles(low), _quantiles(conf), np.zeros(len(LEVELS))])
    quantiles[3] = _quantiles(typicality(own, low, conf, quantiles), finite_sample_levels(len(own)))
    return quantiles


def finite_sample_levels(n: int) -> np.ndarray:
    """``(101,)``: the level at which to read each of :data:`LEVELS` among ``n`` validation values, so that the
    :func:`threshold` at ``1 - known_fraction`` accepts, in expectation, a ``known_fraction`` of new inputs like them
    (the split-conformal rule: the k-th smallest of n values is exceeded by a new one with probability
    ``1 - k / (n + 1)``; numpy's quantile at level ``(k - 1) / (n - 1)`` is the k-th smallest). Read as they are,
    a few dozen validation inputs accept clearly fewer held-out inputs than ``known_fraction`` (docs: How-to, Unknown
    inputs). Levels beyond the values are clipped to the smallest or largest: with n values no ``known_fraction`` above
    ``n / (n + 1)`` is honoured (the threshold is then the smallest validation value)."""
    return np.clip((LEVELS * (n + 1) - 1) / max(n - 1, 1), 0.0, 1.0)


def check_quantiles(quantiles: list[np.ndarray]) -> list[np.ndarray]:
    """Loaded per-task :func:`calibrate` quantiles: ``[]`` when they come from a rerelrp that kept three rows (no
    unknown answer then), else ``quantiles``; ValueError unless each is ``(4, 101)``, finite and increasing."""
    if any(len(q) == 3 for q in quantiles):
        return []
    for t, q in enumerate(quantiles):
        if q.shape != (4, len(LEVELS)) or not np.isfinite(q).all() or np.any(np.diff(q) < 0):
            raise ValueError(f"tensors.safetensors holds novelty.{t} that is not 4 x 101 finite, increasing quantiles")
    return quantiles


def _quantiles(values: np.ndarray, levels: np.ndarray = LEVELS) -> np.ndarray:
    values = np.asarray(values, np.float64)
    if len(values) < 2 or not np.all(np.isfinite(values)):
        raise ValueError(f"calibration needs at least 2 finite validation log-likelihoods, got {len(values)} "
                         f"({int(np.sum(~np.isfinite(values)))} not finite)")
    return np.quantile(values, levels)


def _standardized(values: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    median, low = np.interp([0.5, 0.05], LEVELS, quantiles)
    return (np.asarray(values, np.float64) - median) / max(median - low, np.finfo(np.float64).tiny)


def typicality(own: np.ndarray, low: np.ndarray, conf: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """``(n,)``: ``z_own + z_conf + min(z_low + 1, 0)``, where ``z_own``, ``z_low`` and ``z_conf`` are the ``(n,)``
    measures ``own``, ``low`` and ``conf`` standardized by their validation quantiles (rows 0, 1 and 2 of
    :func:`calibrate`'s ``(4, 101)``: 0 at the median, -1 at the 5 % quantile).

    Chosen on the unknown-input benchmark's own sets (``benchmarks/unknown.py``: there is no held-out set of unknown
    inputs), by how well it separates Split MNIST's next tasks and the medical learner's constant images from known
    inputs: ``z_own`` alone misses the constant images; adding ``z_low`` outright, or taking ``min(z_own, z_low)``,
    catches them but blurs the next tasks far more than the ``min(z_low + 1, 0)`` term does;
    ``z_conf`` at weight 1 separated the next tasks best of the weights tried, better than ``min(z_conf, 0)`` or the
    energy score in its place, without losing any other set (docs: How-to, Unknown inputs)."""
    return (_standardized(own, quantiles[0]) + _standardized(conf, quantiles[2])
            + np.minimum(_standardized(low, quantiles[1]) + 1.0, 0.0))


def standardize(typical: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Scores ``(n,)`` of :func:`typicality` values ``(n,)`` under one task: 0 at its validation median, -1 at its
    5 % quantile."""
    return _standardized(typical, quantiles[-1])


def threshold(quantiles: np.ndarray, known_fraction: float) -> float:
    """The typicality at or above which an input of this task is known: its ``1 - known_fraction`` quantile."""
    return float(np.interp(1.0 - known_fraction, LEVELS, quantiles[-1]))


def accepted(typical: np.ndarray, quantiles: np.ndarray, known_fraction: float) -> np.ndarray:
    """Bool ``(n,)``: whether each :func:`typicality` reaches the task's :func:`threshold`; a NaN one never does."""
    typical = np.asarray(typical, np.float64)
    return ~np.isnan(typical) & (typical >= threshold(quantiles, known_fraction))
