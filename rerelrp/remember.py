"""Remember: what is kept of past data, for the task detectors.

Two memories, one per recognizer (see :mod:`rerelrp.recognize`):

:class:`ActivationStatistics` (default) keeps, for every detector m and every


class of a task s >= m, a Gaussian mixture (at most ``n_components`` full-covariance
components, their number chosen by BIC) of the activations that the class's
training inputs leave in ``n_features`` units of the last hidden unit layer,
read through the union of the subnetworks S_0..S_m. Those units are
frozen from task m on and everything else is masked, so the statistics of a
later task, computed when it arrives, live in the same space as task m's.
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
           "RelevanceMemory", "SHRINKAGE"]

#: Share of the mean variance added to every covariance's diagonal (scikit-learn's ``reg_covar``):
#: this value recognized tasks best on Split MNIST and digits validation data, more shrinkage worse
#: (docs: Benchmarks, Recognition).
SHRINKAGE = 1e-3

#: ``n_features="auto"``: the features a detector of a two-class task reads; see :func:`auto_features`.
AUTO_FEATURES = 40


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
        per detector m, ``{class id: ClassStatistics}`` for every class of a task s >= m.
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

    @property
    def n_tasks(self) -> int:
        """Number of tasks remembered."""
        return len(self.units)

    def choose_units(self, candidates: torch.Tensor, activations: torch.Tensor) -> None:
        """Fix the newest detector's units: of ``candidates`` ``(c,)`` (indices into the layer), the
        ``n_features`` whose ``(n, layer units)`` activations on the new task's data vary most."""
        variance = activations[:, candidates].double().var(0)
        top = torch.topk(variance, min(self.n_features, len(candidates))).indices
        self.units.append(candidates[top].sort().values.cpu())
        self.bases.append(None)
        self.classes.append({})

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
        self.units.append(columns)
        self.bases.append((center.float(), (axes[:d] * weight).float().contiguous()))  # float32, as saved
        self.classes.append({})

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

    def move_columns(self, moved: torch.Tensor) -> None:
        """Follow the outputs' columns to their new places ``moved`` ``(n_columns_before,)`` (after growth: see
        :func:`rerelrp.spaces.moved_columns`); what each detector reads stays the same."""
        self.units = [moved[units] for units in self.units]

    def state_dict(self, prefix: str = "") -> tuple[dict, dict[str, torch.Tensor]]:
        """``(index, tensors)``: the class sample counts per detector (JSON), and the tensors named after ``prefix``:
        ``units.m``, ``center.m`` and ``axes.m`` (with a basis), and per class ``weights.m.c``, ``means.m.c`` and
        ``covariances.m.c`` (upper triangles ``(k, d (d + 1) / 2)``)."""
        tensors = {}
        for m, units in enumerate(self.units):
            tensors[f"{prefix}units.{m}"] = units.contiguous()
            if self.bases[m] is not None:
                tensors[f"{prefix}center.{m}"], tensors[f"{prefix}axes.{m}"] = self.bases[m]
            rows, cols = np.triu_indices(self.dims(m))
            for c, stats in self.classes[m].items():
                tensors[f"{prefix}weights.{m}.{c}"] = torch.from_numpy(stats.weights.copy())
                tensors[f"{prefix}means.{m}.{c}"] = torch.from_numpy(stats.means.copy())
                tensors[f"{prefix}covariances.{m}.{c}"] = torch.from_numpy(stats.covariances[:, rows, cols].copy())
        return {"counts": [{str(c): s.count for c, s in per.items()} for per in self.classes]}, tensors

    def load_state_dict(self, index: dict, tensors: dict[str, torch.Tensor], prefix: str = "") -> None:
        """Restore from :meth:`state_dict`'s ``(index, tensors)`` (raises KeyError for a missing tensor)."""
        n = len(index["counts"])
        self.units = [tensors[f"{prefix}units.{m}"] for m in range(n)]
        self.bases = [(tensors[f"{prefix}center.{m}"], tensors[f"{prefix}axes.{m}"])
                      if f"{prefix}axes.{m}" in tensors else None for m in range(n)]
        self.classes = []
        for m, counts in enumerate(index["counts"]):
            d = self.dims(m)
            rows, cols = np.triu_indices(d)
            per = {}
            for c, count in counts.items():
                triangles = tensors[f"{prefix}covariances.{m}.{c}"].numpy()
                covariances = np.zeros((len(triangles), d, d), np.float32)
                covariances[:, rows, cols] = triangles
                covariances[:, cols, rows] = triangles
                per[int(c)] = ClassStatistics(tensors[f"{prefix}weights.{m}.{c}"].numpy(),
                                              tensors[f"{prefix}means.{m}.{c}"].numpy(), covariances, count)
            self.classes.append(per)

    def check(self, tasks: list[list[int]], width: int, space: str) -> None:
        """Raise ValueError, naming the entry, unless detector m reads distinct columns of ``(n, width)`` outputs
        (in ``space``) through a finite basis and holds a finite mixture, its weights summing to 1, of every class
        of the tasks m.. of ``tasks``."""
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
            expected = {c for classes in tasks[m:] for c in classes}
            if set(per) != expected:
                raise ValueError(f"meta.json gives detector {m} the classes {sorted(per)}, not those of tasks {m} on")
            for c, stats in per.items():
                values = (stats.weights, stats.means, stats.covariances)
                if not all(np.isfinite(v).all() for v in values) or abs(float(stats.weights.sum()) - 1) > 1e-3:
                    raise ValueError(f"tensors.safetensors holds a mixture of class {c} (detector {m}) that is not "
                                     "finite or whose weights do not sum to 1")


class GaussianDensities:
    """The densities of an :class:`ActivationStatistics`, ready to score inputs.

    In space m, every class c the statistics hold scores an input's ``(n, d_m)`` features as
    ``log sum_j w_cj N(f; mu_cj, Sigma_cj)``; a task's log-likelihood is the log of the mean of its classes'
    densities (equal priors over its classes).

    Attributes
    ----------
    tasks_
        class ids of every task, in order.
    gaussians_
        per space m, ``{class id: (log weights (k,), k scipy frozen multivariate_normal)}``.
    """

    def __init__(self):
        self.tasks_: list[list[int]] = []
        self.gaussians_: list[dict[int, object]] = []

    def fit(self, statistics: ActivationStatistics, tasks: list[list[int]]) -> "GaussianDensities":
        """Build the densities of every space of ``statistics`` (of the classes of ``tasks``, in order)."""
        self.tasks_ = [list(classes) for classes in tasks]
        self.gaussians_ = [
            {c: (np.log(s.weights.astype(np.float64)),
                 [multivariate_normal(mean.astype(np.float64), covariance.astype(np.float64))
                  for mean, covariance in zip(s.means, s.covariances)])
             for c, s in per.items()}
            for per in statistics.classes]
        return self

    def class_loglik(self, m: int, c: int, features: np.ndarray) -> np.ndarray:
        """Log density ``(n,)`` of ``(n, d_m)`` features under class c's mixture in space m."""
        log_weights, components = self.gaussians_[m][c]
        return logsumexp(np.stack([np.atleast_1d(g.logpdf(features)) for g in components], 1) + log_weights, axis=1)

    def task_loglik(self, m: int, features: np.ndarray, tasks: slice | None = None) -> np.ndarray:
        """Log-likelihoods ``(n, k)`` of ``(n, d_m)`` features in space m under each of the tasks ``tasks``
        (default: m..T-1, the tasks space m has classes of)."""
        chosen = self.tasks_[m:] if tasks is None else self.tasks_[tasks]
        return np.stack([logsumexp(np.stack([self.class_loglik(m, c, features) for c in classes], 1), axis=1)
                         - np.log(len(classes)) for classes in chosen], axis=1)


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
