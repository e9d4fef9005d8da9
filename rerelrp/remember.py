"""Remember: what is kept of past data, for the task detectors.

Two memories, one per recognizer (see :mod:`rerelrp.recognize`):

:class:`ActivationStatistics` (default) keeps, for every detector m and every
class of a task s >= m, a Gaussian mixture (at most ``n_components`` full-covariance
components, their number chosen by BIC) of the activations that the class's
training inputs leave in ``n_features`` units of the last hidden unit layer,
read through the union of the subnetworks S_0..S_m. Those units are
frozen from task m on and everything else is masked, so the statistics of a
later task, computed when it arrives, live in the same space as task m's.
Tasks more than ``later_tasks`` after m are folded into one bounded mixture per detector
(:meth:`ActivationStatistics.fold`), so that memory grows linearly with the tasks, not with their square.
The units are the ones that vary most on task m's own data, fixed once task m
is learned. Only the mixtures' weights, means and covariances are stored: no inputs, no vectors.
With ``ReReLRP(detector_space="head")`` a detector reads instead the ``n_features`` principal components, on task
m's own data, of the vector the output layer reads (:meth:`ActivationStatistics.choose_basis`): on a residual
network the last hidden unit layer is a block's convolution before its residual addition, whose outputs can
vary along very few directions (ResNet-18 on PneumoniaMNIST; docs: Benchmarks, Results), where the mixtures' regularisation
rather than the data would decide between tasks. With ``detector_space="layers"`` it reads the ``n_features``
principal components of every unit layer's outputs together, each column scaled to unit variance on task m's data:
the lower layers' features were not trained to tell task m's classes apart and keep more of what sets other digits
apart from them (see :class:`rerelrp.ReReLRP`).

:class:`RelevanceMemory` (the paper's) keeps, for every subnetwork S_m and every
reference sample of every task s >= m, the relevance that sample leaves in
S_m's units, cut down to the ``n_features`` units detector m reads (the highest
mean relevance on task m's own reference samples).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

__all__ = ["AUTO_FEATURES", "auto_features", "ActivationStatistics", "ClassStatistics", "GaussianDensities",
           "fold_sample", "FOLD_SAMPLES", "reduce_mixture", "RelevanceMemory", "REST_COMPONENTS",
           "SHRINKAGE"]

#: Share of the mean variance added to every covariance's diagonal (scikit-learn's ``reg_covar``):
#: this value recognized tasks best on Split MNIST and digits validation data, more shrinkage worse
#: (docs: Benchmarks, Recognition).
SHRINKAGE = 1e-3

#: ``n_features="auto"``: the features a detector of a two-class task reads; see :func:`auto_features`.
AUTO_FEATURES = 40

#: Most components of the mixture into which a detector folds the tasks after its ``later_tasks``
#: (:meth:`ActivationStatistics.fold`).
REST_COMPONENTS = 16

#: Training samples per class, at most, from which a folded task's Gaussians are estimated (:func:`fold_sample`).
FOLD_SAMPLES = 200


def fold_sample(y: torch.Tensor, seed: int) -> torch.Tensor:
    """Indices ``(k,)`` into the labels ``y`` ``(n,)``: at most :data:`FOLD_SAMPLES` rows of each class, drawn
    without replacement by a generator seeded with ``seed``, in ascending order. A folded class is one Gaussian, which
    that many samples estimate well; reading fewer inputs through every earlier detector keeps the remember stage's
    time per task from growing with the stream."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(y.device)
    chosen = [order[y[order] == c][:FOLD_SAMPLES] for c in y.unique()]
    return torch.cat(chosen).sort().values


def reduce_mixture(weights: np.ndarray, means: np.ndarray, covariances: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reduce a Gaussian mixture of ``(n,)`` weights, ``(n, d)`` means and ``(n, d, d)`` covariances to at most
    ``k`` components by Runnalls' greedy merging (IEEE Trans. Aerospace and Electronic Systems 43(3), 2007): merge
    the pair whose moment-preserving merge raises an upper bound of the KL divergence least, until ``k`` are left.
    A merge keeps the pair's weight, mean and covariance (the spread of their means included), so the mixture's
    mean and covariance never change. float64 in and out; ``k >= n`` returns the inputs."""
    w, mu, cov = list(weights), list(means), list(covariances)
    logdet = [np.linalg.slogdet(c)[1] for c in cov]

    def merged(i: int, j: int) -> tuple[float, np.ndarray, np.ndarray]:
        total = w[i] + w[j]
        mean = (w[i] * mu[i] + w[j] * mu[j]) / total
        gap = mu[i] - mu[j]
        return total, mean, (w[i] * cov[i] + w[j] * cov[j]) / total + (w[i] * w[j] / total ** 2) * np.outer(gap, gap)

    def cost(i: int, j: int) -> float:
        total, _, c = merged(i, j)
        return 0.5 * (total * np.linalg.slogdet(c)[1] - w[i] * logdet[i] - w[j] * logdet[j])

    costs = {(i, j): cost(i, j) for i in range(len(w)) for j in range(i + 1, len(w))}
    alive = set(range(len(w)))
    while len(alive) > k:
        i, j = min(costs, key=costs.get)
        w[i], mu[i], cov[i] = merged(i, j)
        logdet[i] = np.linalg.slogdet(cov[i])[1]
        alive.discard(j)
        costs = {pair: c for pair, c in costs.items() if i not in pair and j not in pair}
        costs.update({(min(i, o), max(i, o)): cost(i, o) for o in alive if o != i})
    keep = sorted(alive)
    return np.array([w[i] for i in keep]), np.stack([mu[i] for i in keep]), np.stack([cov[i] for i in keep])


def auto_features(n_classes: int) -> int:
    """The features detector m reads with ``n_features="auto"``, for a task m of ``n_classes`` classes:
    ``AUTO_FEATURES * sqrt(2 / n_classes)``, rounded down (40 for two classes, 17 for ten), at least 8. A class's
    full covariance costs bytes in the square of the features, so a detector's Gaussians for a task cost about the
    same whatever its number of classes."""
    return max(8, int(AUTO_FEATURES * math.sqrt(2 / n_classes)))


class ClassStatistics:
    """A Gaussian mixture of one class in one detector's space: ``k`` components in ``d`` dimensions.

    Attributes
    ----------
    weights
        ``(k,)`` mixing weights, summing to 1.
    means
        ``(k, d)`` component means.
    covariances
        ``(k, d, d)`` component covariances.
    count
        training samples the mixture was estimated from.

    Values are float32 (as saved), so that a loaded learner answers exactly as the one that was saved.
    """

    def __init__(self, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray, count: int):
        self.weights = np.asarray(weights, np.float32)
        self.means, self.covariances = np.asarray(means, np.float32), np.asarray(covariances, np.float32)
        self.count = int(count)

    @classmethod
    def of(cls, features: np.ndarray, max_components: int = 1, random_state: int | None = None) -> "ClassStatistics":
        """Estimate from ``(n, d)`` features, ``n >= 2``: of the full-covariance mixtures of 1 and of
        ``max_components`` components (scikit-learn's ``GaussianMixture``, :data:`SHRINKAGE` of the mean variance
        added to every diagonal), the one with the lower BIC, so that a small class gets one Gaussian. (BIC over
        every count in between recognized tasks no better and fitted slower; docs: Benchmarks, Recognition.)

        The fits run BLAS and OpenMP on one thread: their matrices are ``d x d`` with ``d`` = ``n_features``, far
        too small for threads to pay, and more threads made the remember stage several times slower, the more so
        on a busy machine (docs: User guide, What is ours and what is borrowed)."""
        reg = SHRINKAGE * max(float(features.var(0).mean()), np.finfo(np.float32).tiny)
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            # EM stopped at max_iter still leaves a valid mixture, at least as likely as its k-means start;
            # BIC then judges it like any other
            warnings.simplefilter("ignore", ConvergenceWarning)
            fits = [GaussianMixture(k, covariance_type="full", reg_covar=reg, random_state=random_state).fit(features)
                    for k in sorted({1, min(max_components, len(features))})]
        best = min(fits, key=lambda g: g.bic(features))
        return cls(best.weights_, best.means_, best.covariances_, len(features))

    @classmethod
    def gaussian(cls, features: np.ndarray) -> "ClassStatistics":
        """One Gaussian of ``(n, d)`` features, ``n >= 1``: their mean and covariance (divided by n), with
        :data:`SHRINKAGE` of the mean variance added to the diagonal, which is what :meth:`of` fits with one
        component, in closed form instead of scikit-learn's iterations."""
        f = np.asarray(features, np.float64)
        reg = SHRINKAGE * max(float(f.var(0).mean()), np.finfo(np.float32).tiny)
        mean = f.mean(0)
        centered = f - mean
        covariance = centered.T @ centered / len(f) + reg * np.eye(f.shape[1])
        return cls(np.ones(1), mean[None], covariance[None], len(f))


class ActivationStatistics:
    """Class-conditional Gaussian mixtures of activations, per detector.

    Parameters
    ----------
    n_features
        units each detector reads (fewer when fewer are kept).
    n_components
        most mixture components per class.
    random_state
        seed of the mixtures' initialisation.

    Attributes
    ----------
    units
        per detector m, a LongTensor of the indices it reads of the layer's ``(n, width)`` outputs.
    bases
        per detector m, None (it reads those units as they are), or ``(center (len(units),), axes (d_m,
        len(units)))`` float32: it reads the outputs' coordinates ``(x - center) @ axes.T`` (:meth:`choose_basis`).
    classes
        per detector m, ``{class id: ClassStatistics}`` for every class of the tasks m..T-1 not folded.
    rests
        per detector m, None, or the :class:`ClassStatistics` of the tasks folded into one mixture (:meth:`fold`).
    folded
        per detector m, the number of tasks folded into ``rests[m]``: the last ones, T-folded..T-1.
    """

    def __init__(self, n_features: int, n_components: int = 1, random_state: int | None = None):
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.n_features, self.n_components, self.random_state = n_features, n_components, random_state
        self.units: list[torch.Tensor] = []
        self.bases: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        self.classes: list[dict[int, ClassStatistics]] = []
        self.rests: list[ClassStatistics | None] = []
        self.folded: list[int] = []

    @property
    def n_tasks(self) -> int:
        """Number of tasks remembered."""
        return len(self.units)

    def choose_units(self, candidates: torch.Tensor, activations: torch.Tensor) -> None:
        """Fix the newest detector's units: of ``candidates`` ``(c,)`` (indices into the layer), the
        ``n_features`` whose ``(n, layer units)`` activations on the new task's data vary most."""
        variance = activations[:, candidates].double().var(0)
        top = torch.topk(variance, min(self.n_features, len(candidates))).indices
        self._add_detector(candidates[top].sort().values.cpu(), None)

    def choose_basis(self, activations: torch.Tensor, standardize: bool = False) -> None:
        """Fix the newest detector's space as the ``n_features`` principal components of the new task's ``(n, D)``
        activations (fewer where they span fewer: directions whose singular value is under 1e-6 of the largest
        are left out, since no class varies in them by more than rounding).

        With ``standardize`` the components are those of the activations divided by their standard deviation on
        the new task's data, so that columns of different layers weigh alike; columns that do not vary there (units
        masked out of the subnetworks, or constant to within 1e-6 of the most varying column) are left out of
        :attr:`units`, so that the axes span only the columns read. The scales are folded into the axes (each
        column's weight multiplied by its ``1 / std``), so the features are still ``(x[:, units] - center) @
        axes.T``; the axes are then no longer orthonormal."""
        a = activations.detach().cpu().double()
        columns = torch.arange(a.shape[1])
        weight = torch.ones(a.shape[1], dtype=torch.float64)
        if standardize:
            spread = a.std(0)
            columns = (spread > 1e-6 * spread.max()).nonzero()[:, 0]
            a, weight = a[:, columns], 1.0 / spread[columns]
        center = a.mean(0)
        _, singular, axes = torch.linalg.svd((a - center) * weight, full_matrices=False)
        d = max(1, min(self.n_features, int((singular > 1e-6 * singular[0]).sum())))
        self._add_detector(columns, (center.float(), (axes[:d] * weight).float().contiguous()))  # float32, as saved

    def _add_detector(self, units: torch.Tensor, basis: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        self.units.append(units)
        self.bases.append(basis)
        self.classes.append({})
        self.rests.append(None)
        self.folded.append(0)

    def dims(self, m: int) -> int:
        """``d_m``, the number of features detector m reads."""
        return len(self.units[m]) if self.bases[m] is None else len(self.bases[m][1])

    def select(self, m: int, activations: torch.Tensor) -> np.ndarray:
        """Detector m's ``(n, d_m)`` features of ``(n, width)`` activations through its subnetworks."""
        features = activations[:, self.units[m].to(activations.device)].detach().cpu().double()
        if self.bases[m] is not None:
            center, axes = self.bases[m]
            features = (features - center.double()) @ axes.double().T
        return features.numpy()

    @property
    def widths(self) -> list[int]:
        """``d_m``, the features each detector m reads."""
        return [len(units) if basis is None else basis[1].shape[0] for units, basis in zip(self.units, self.bases)]

    def add_class(self, m: int, c: int, features: np.ndarray) -> None:
        """Remember class ``c``'s ``(n, d_m)`` features in detector m's space."""
        if len(features) < 2:
            raise ValueError(f"class {c} has {len(features)} training sample(s); its statistics need at least 2")
        self.classes[m][c] = ClassStatistics.of(features, self.n_components, self.random_state)

    def keeps(self, m: int, t: int, later_tasks: int | None) -> bool:
        """Whether detector m keeps task t's classes each in its own mixture (:meth:`add_class`), rather than
        folding the task (:meth:`fold`): t is at most ``later_tasks`` after m (None: any) and no task is folded yet,
        so that the folded tasks are always the last ones."""
        return self.folded[m] == 0 and (later_tasks is None or t - m <= later_tasks)

    def fold(self, m: int, per_class: list[np.ndarray]) -> None:
        """Fold one task, given as its classes' ``(n_c, d_m)`` features in detector m's space, into the detector's
        rest mixture: each class is one Gaussian (:meth:`ClassStatistics.gaussian`: no choice by BIC, which made the
        remember stage grow with the number of earlier detectors), the task weighs as much as every
        task folded before (its classes alike within it), and the union is reduced to at most
        :data:`REST_COMPONENTS` components by :func:`reduce_mixture`. Memory and time per detector stay bounded
        however long the stream."""
        mixtures = [ClassStatistics.gaussian(features) for features in per_class]
        r = self.folded[m]
        parts = [(self.rests[m], r / (r + 1))] if r else []
        parts += [(mixture, 1 / ((r + 1) * len(mixtures))) for mixture in mixtures]
        weights = np.concatenate([p.weights.astype(np.float64) * share for p, share in parts])
        means = np.concatenate([p.means for p, _ in parts]).astype(np.float64)
        covariances = np.concatenate([p.covariances for p, _ in parts]).astype(np.float64)
        weights, means, covariances = reduce_mixture(weights, means, covariances, REST_COMPONENTS)
        self.rests[m] = ClassStatistics(weights / weights.sum(), means, covariances,
                                        sum(p.count for p, _ in parts))
        self.folded[m] = r + 1

    def move_columns(self, moved: torch.Tensor) -> None:
        """Follow the outputs' columns to their new places ``moved`` ``(n_columns_before,)`` (after growth: see
        :func:`rerelrp.spaces.moved_columns`); what each detector reads stays the same."""
        self.units = [moved[units] for units in self.units]

    def state_dict(self, prefix: str = "") -> tuple[dict, dict[str, torch.Tensor]]:
        """``(index, tensors)``: the class sample counts per detector and, once a task is folded, ``folded``
        (JSON); the tensors named after ``prefix``: ``units.m``, ``center.m`` and ``axes.m`` (with a basis), and
        per class ``weights.m.c``, ``means.m.c`` and ``covariances.m.c`` (upper triangles ``(k, d (d + 1) / 2)``),
        per rest mixture the same named ``.m.rest``."""
        tensors = {}
        for m, units in enumerate(self.units):
            tensors[f"{prefix}units.{m}"] = units.contiguous()
            if self.bases[m] is not None:
                tensors[f"{prefix}center.{m}"], tensors[f"{prefix}axes.{m}"] = self.bases[m]
            mixtures = {**self.classes[m], **({"rest": self.rests[m]} if self.folded[m] else {})}
            rows, cols = np.triu_indices(self.dims(m))
            for c, stats in mixtures.items():
                tensors[f"{prefix}weights.{m}.{c}"] = torch.from_numpy(stats.weights.copy())
                tensors[f"{prefix}means.{m}.{c}"] = torch.from_numpy(stats.means.copy())
                tensors[f"{prefix}covariances.{m}.{c}"] = torch.from_numpy(stats.covariances[:, rows, cols].copy())
        index = {"counts": [{str(c): s.count for c, s in per.items()} for per in self.classes]}
        if any(self.folded):  # written only then, so that saves without folding are as before
            index["folded"] = list(self.folded)
            index["rest_counts"] = [rest.count if rest is not None else 0 for rest in self.rests]
        return index, tensors

    def load_state_dict(self, index: dict, tensors: dict[str, torch.Tensor], prefix: str = "") -> None:
        """Restore from :meth:`state_dict`'s ``(index, tensors)`` (raises KeyError for a missing tensor)."""
        n = len(index["counts"])
        self.units = [tensors[f"{prefix}units.{m}"] for m in range(n)]
        self.bases = [(tensors[f"{prefix}center.{m}"], tensors[f"{prefix}axes.{m}"])
                      if f"{prefix}axes.{m}" in tensors else None for m in range(n)]
        self.folded = [int(r) for r in index.get("folded", [0] * n)]
        if len(self.folded) != n:
            raise ValueError(f"meta.json gives folded tasks for {len(self.folded)} detectors, not {n}")

        def mixture(m: int, c: str, count: int) -> ClassStatistics:
            d = self.dims(m)
            rows, cols = np.triu_indices(d)
            triangles = tensors[f"{prefix}covariances.{m}.{c}"].numpy()
            covariances = np.zeros((len(triangles), d, d), np.float32)
            covariances[:, rows, cols] = triangles
            covariances[:, cols, rows] = triangles
            return ClassStatistics(tensors[f"{prefix}weights.{m}.{c}"].numpy(),
                                   tensors[f"{prefix}means.{m}.{c}"].numpy(), covariances, count)

        self.classes = [{int(c): mixture(m, c, count) for c, count in counts.items()}
                        for m, counts in enumerate(index["counts"])]
        self.rests = [mixture(m, "rest", count) if r else None
                      for m, (r, count) in enumerate(zip(self.folded, index.get("rest_counts", [0] * n)))]

    def check(self, tasks: list[list[int]], width: int, space: str) -> None:
        """Raise ValueError, naming the entry, unless detector m reads distinct columns of ``(n, width)`` outputs
        (in ``space``) through a finite basis and holds a finite mixture, its weights summing to 1, of every class
        of the tasks m.. of ``tasks`` that it did not fold, and one of the folded ones."""
        for m, per in enumerate(self.classes):
            idx, basis = self.units[m], self.bases[m]
            read = "unit indices of the last hidden layer" if basis is None else \
                f"indices of what detector_space={space!r} reads"
            if idx.dtype != torch.long or len(idx.unique()) != len(idx) or not ((0 <= idx) & (idx < width)).all():
                raise ValueError(f"tensors.safetensors holds units.{m} that are not distinct {read} (0..{width - 1})")
            if basis is not None and (basis[0].shape != idx.shape or basis[1].dim() != 2
                                      or basis[1].shape[1] != len(idx) or not all(b.isfinite().all() for b in basis)):
                raise ValueError(f"tensors.safetensors holds center.{m} or axes.{m} that are not a finite center and "
                                 f"axes over detector {m}'s {len(idx)} inputs")
            kept = len(tasks) - self.folded[m]
            if not m < kept <= len(tasks):
                raise ValueError(f"meta.json folds {self.folded[m]} tasks into detector {m} of {len(tasks)} tasks")
            expected = {c for classes in tasks[m:kept] for c in classes}
            if set(per) != expected:
                raise ValueError(f"meta.json gives detector {m} the classes {sorted(per)}, not those of tasks {m} to "
                                 f"{kept - 1}")
            for c, stats in [*per.items(), *([("rest", self.rests[m])] if self.folded[m] else [])]:
                values = (stats.weights, stats.means, stats.covariances)
                if not all(np.isfinite(v).all() for v in values) or abs(float(stats.weights.sum()) - 1) > 1e-3:
                    what = "the folded tasks" if c == "rest" else f"class {c}"
                    raise ValueError(f"tensors.safetensors holds a mixture of {what} (detector {m}) that is not "
                                     "finite or whose weights do not sum to 1")


class GaussianDensities:
    """The densities of an :class:`ActivationStatistics`, ready to score inputs.

    In space m, every class c the statistics hold scores an input's ``(n, d_m)`` features as
    ``log sum_j w_cj N(f; mu_cj, Sigma_cj)``; a task's log-likelihood is the log of the mean of its classes'
    densities (equal priors over its classes). The tasks folded into the space's rest mixture score together, as
    that mixture's density times their number (equal priors over tasks).

    Attributes
    ----------
    tasks_
        class ids of every task, in order.
    gaussians_
        per space m, ``{class id: (log weights (k,), k scipy frozen multivariate_normal)}``.
    rests_
        per space m, None or ``(rest mixture as in gaussians_, number of tasks folded into it)``.
    """

    def __init__(self):
        self.tasks_: list[list[int]] = []
        self.gaussians_: list[dict[int, object]] = []
        self.rests_: list[tuple[object, int] | None] = []

    @staticmethod
    def _frozen(stats: ClassStatistics) -> tuple[np.ndarray, list]:
        return (np.log(stats.weights.astype(np.float64)),
                [multivariate_normal(mean.astype(np.float64), covariance.astype(np.float64))
                 for mean, covariance in zip(stats.means, stats.covariances)])

    @staticmethod
    def _loglik(mixture: tuple[np.ndarray, list], features: np.ndarray) -> np.ndarray:
        log_weights, components = mixture
        return logsumexp(np.stack([np.atleast_1d(g.logpdf(features)) for g in components], 1) + log_weights, axis=1)

    def fit(self, statistics: ActivationStatistics, tasks: list[list[int]]) -> "GaussianDensities":
        """Build the densities of every space of ``statistics`` (of the classes of ``tasks``, in order)."""
        self.tasks_ = [list(classes) for classes in tasks]
        self.gaussians_ = [{c: self._frozen(s) for c, s in per.items()} for per in statistics.classes]
        self.rests_ = [(self._frozen(rest), r) if r else None for rest, r in zip(statistics.rests, statistics.folded)]
        return self

    def class_loglik(self, m: int, c: int, features: np.ndarray) -> np.ndarray:
        """Log density ``(n,)`` of ``(n, d_m)`` features under class c's mixture in space m."""
        return self._loglik(self.gaussians_[m][c], features)

    def task_loglik(self, m: int, features: np.ndarray, tasks: slice | None = None) -> np.ndarray:
        """Log-likelihoods ``(n, k)`` of ``(n, d_m)`` features in space m under each of the tasks ``tasks`` (their
        classes must be kept in space m), or by default under each task m..T-1 kept in space m and, when tasks are
        folded, last, under the folded ones together (their rest mixture's log density plus the log of their
        number)."""
        rest = self.rests_[m]
        chosen = self.tasks_[m:len(self.tasks_) - (rest[1] if rest else 0)] if tasks is None else self.tasks_[tasks]
        columns = [logsumexp(np.stack([self.class_loglik(m, c, features) for c in classes], 1), axis=1)
                   - np.log(len(classes)) for classes in chosen]
        if tasks is None and rest is not None:
            columns.append(self._loglik(rest[0], features) + np.log(rest[1]))
        return np.stack(columns, axis=1)


class RelevanceMemory:
    """Relevance vectors per detector and source task.

    Parameters
    ----------
    n_features
        units (features) each detector reads.

    Attributes
    ----------
    features
        per detector m, a ``(k,)`` LongTensor of unit indices into the
        concatenated unit vector.
    vectors
        ``vectors[m][s]`` is a float32 array ``(n_ref_s, k)``: task s's
        reference samples seen through S_m, for s >= m.
    """

    def __init__(self, n_features: int):
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        self.n_features = n_features
        self.features: list[torch.Tensor] = []
        self.vectors: list[dict[int, np.ndarray]] = []

    @property
    def n_tasks(self) -> int:
        """Number of tasks remembered."""
        return len(self.features)

    def add_task(self, relevance: list[torch.Tensor]) -> None:
        """Store the newest task's reference samples as seen through every subnetwork.

        ``relevance[m]`` is ``(n_ref, total_units)``: normalised unit relevance
        of the new task's reference samples through S_m, for m = 0..t, where
        t is the new task's index.
        """
        t = self.n_tasks
        if len(relevance) != t + 1:
            raise ValueError(f"expected relevance through {t + 1} subnetworks, got {len(relevance)}")
        k = min(self.n_features, relevance[t].shape[1])
        self.features.append(torch.topk(relevance[t].mean(0), k).indices.sort().values.cpu())
        self.vectors.append({})
        for m, rel in enumerate(relevance):
            self.vectors[m][t] = self.select(m, rel)

    @property
    def widths(self) -> list[int]:
        """The units each detector m reads."""
        return [len(features) for features in self.features]

    def select(self, m: int, relevance: torch.Tensor) -> np.ndarray:
        """Cut ``(n, total_units)`` relevance through S_m down to detector m's ``(n, k)`` features."""
        return relevance[:, self.features[m].to(relevance.device)].detach().cpu().numpy().astype(np.float32)

    def dataset(self, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detector m's training set: ``X (n, k)``, ``y (n,)`` (1 = task m, 0 = a later task)
        and ``sample_weight (n,)`` giving every source task the same total weight."""
        parts = sorted(self.vectors[m].items())
        X = np.concatenate([v for _, v in parts])
        y = np.concatenate([np.full(len(v), int(s == m)) for s, v in parts])
        w = np.concatenate([np.full(len(v), 1.0 / len(v)) for _, v in parts])
        return X, y, w * len(w) / w.sum()

    def move_columns(self, moved: torch.Tensor) -> None:
        """Follow the relevance vector's columns to their new places ``moved`` ``(total_units_before,)`` (after
        growth: see :func:`rerelrp.spaces.moved_columns`)."""
        self.features = [moved[features] for features in self.features]

    def state_dict(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """``(index, tensors)``: the source tasks of each detector's vectors (JSON), and the tensors ``features.m``
        and ``vectors.m.s``."""
        tensors = {}
        for m, features in enumerate(self.features):
            tensors[f"features.{m}"] = features.contiguous()
            for s, vectors in self.vectors[m].items():
                tensors[f"vectors.{m}.{s}"] = torch.from_numpy(np.ascontiguousarray(vectors))
        return {"vectors": [sorted(v) for v in self.vectors]}, tensors

    def load_state_dict(self, index: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict`'s ``(index, tensors)`` (raises KeyError for a missing tensor)."""
        self.features = [tensors[f"features.{m}"] for m in range(len(index["vectors"]))]
        self.vectors = [{int(s): tensors[f"vectors.{m}.{s}"].numpy() for s in sources}
                        for m, sources in enumerate(index["vectors"])]

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored vectors and feature indices."""
        return sum(v.nbytes for d in self.vectors for v in d.values()) + sum(
            f.numel() * f.element_size() for f in self.features)
