"""Recognize: the chain of task detectors, and the route of an input to its task's subnetwork.

Detector m gives the probability p_m that an input comes from task m rather than from a later task, under a
uniform prior over the tasks m, m+1, ..., T-1 (``docs/method.md``, section Recognize). A :class:`Recognizer` is one
way of building those detectors: what it remembers of each task, the features it reads through the subnetworks,
how it fits, and whether its detectors are densities (the unknown answer needs them). Two implementations,
made by :func:`make_recognizer` from ``ReReLRP(recognizer=...)``:

- ``"gaussian"`` (default, :class:`GaussianRecognizer`): every class of the tasks m..T-1 is a Gaussian mixture in
  detector m's space (:mod:`rerelrp.spaces`) through S_0..S_m (see
  :class:`rerelrp.remember.ActivationStatistics`); p_m is the posterior of task m's classes. Nothing to fit: new
  classes add Gaussians.
- ``"paper"`` (:class:`TaskRecognizer`): a binary scikit-learn classifier, "from task m" against "from a later
  task", fitted on the relevance vectors of S_m (see :class:`rerelrp.remember.RelevanceMemory`), every source
  task with the same total sample weight.

The chain turns the detectors' probabilities p_m into task scores that sum to one (:func:`chain_scores`):

    P(0) = p_0,  P(i) = p_i * prod_{j<i} (1 - p_j),  P(T-1) = prod_{j<T-1} (1 - p_j).

:func:`route` runs the chain over a batch, stopping for an input once its task is certain (:func:`decided`), and
answers each input's task, class and, for recognizers that support it, its novelty score (:mod:`rerelrp.novelty`).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.utils.validation import has_fit_parameter

from .network import Units, position_mean, position_spread
from .novelty import LowLevelStatistics, Measures, confidence, judge
from .remember import (AUTO_FEATURES, ActivationStatistics, GaussianDensities, RelevanceMemory, auto_features,
                       fold_sample)
from .spaces import SPACES, DetectorSpace, moved_columns
from .subnetworks import Subnetworks

__all__ = ["RECOGNIZERS", "Recognizer", "GaussianRecognizer", "TaskRecognizer", "make_recognizer",
           "default_detector", "chain_scores", "bounded", "decided", "task_posterior", "Route", "route"]

#: Accepted values of ``ReReLRP(recognizer=...)``.
RECOGNIZERS = ("gaussian", "paper")


def default_detector(random_state: int | None = None) -> RandomForestClassifier:
    """A forest of 100 trees of depth 12: leaves of 5, log-loss, log2 features, no bootstrap.

    The paper's forest has 300 trees of depth 40; this one recognized tasks as well, smaller and faster to query
    (docs: Benchmarks, Speed and memory). Trees are grown on all cores; :class:`TaskRecognizer` predicts with one
    thread (see there).
    """
    return RandomForestClassifier(n_estimators=100, max_depth=12, min_samples_leaf=5, criterion="log_loss",
                                  max_features="log2", bootstrap=False, random_state=random_state, n_jobs=-1)


def chain_scores(p: np.ndarray) -> np.ndarray:
    """Chain the detectors' ``(n, T-1)`` probabilities into ``(n, T)`` task scores summing to 1.

    On the first k detectors' ``(n, k)`` probabilities it gives the first k scores exactly as on all of them,
    and in its last column the score left for the tasks k..T-1 together, which bounds each of theirs.
    """
    n = p.shape[0]
    not_yet = np.cumprod(np.concatenate([np.ones((n, 1)), 1.0 - p], axis=1), axis=1)  # prod_{j<i}(1-p_j)
    return np.concatenate([p, np.ones((n, 1))], axis=1) * not_yet


def bounded(scores: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
    """Task scores ``(n, k + 1)`` to compare, from :func:`chain_scores` of the first k detectors ``(n, k + 1)``: the
    scores themselves, or, with a log ``prior`` ``(n, T)``, their logs plus it. The first k columns are exact, the
    last one an upper bound of every later task's (the remaining chain score, which bounds each later chain score,
    plus the largest prior among the later tasks). On the whole chain (``k + 1 = T``) every column is exact."""
    if prior is None:
        return scores
    with np.errstate(divide="ignore"):
        logs = np.log(scores)
    k = scores.shape[1] - 1
    return np.concatenate([logs[:, :k] + prior[:, :k], logs[:, k:] + prior[:, k:].max(1, keepdims=True)], axis=1)


def decided(scores: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
    """Rows ``(n,)`` bool whose best task is known from ``chain_scores`` of the first detectors alone (and the log
    ``prior`` ``(n, T)`` of every task, see :func:`bounded`).

    A row is decided when one of its first scores exceeds the bound left for all later tasks, which bounds
    every later score (products of numbers in [0, 1] only shrink, in floating point too): its argmax over
    the first scores is then its argmax over all T scores.
    """
    compared = bounded(scores, prior)
    return compared[:, :-1].max(1) > compared[:, -1]


def task_posterior(p: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
    """The task scores ``(n, T)`` (rows summing to 1) of the detectors' whole-chain probabilities ``p`` ``(n, T-1)``:
    :func:`chain_scores`, times ``exp(prior)`` (a log prior ``(n, T)``; None: 1) and normalised."""
    if prior is None:
        return chain_scores(p)
    logs = bounded(chain_scores(p), prior)
    return np.exp(logs - logsumexp(logs, axis=1, keepdims=True))


class Recognizer:
    """The interface of a task recognizer (one per learner, fixed by its first task).

    Attributes
    ----------
    memory
        what it keeps of past tasks (no inputs).
    supports_unknown
        whether its detectors are densities, which the unknown answer (:mod:`rerelrp.novelty`) needs.
    """

    supports_unknown = False
    memory: ActivationStatistics | RelevanceMemory

    def remember(self, view: Subnetworks, x: torch.Tensor, y: torch.Tensor, ref_x: torch.Tensor,
                 later_tasks: int | None = None) -> None:
        """Add the newest task of ``view`` to the memory, as seen by detectors 0..t, from its training inputs ``x``
        ``(n, *input_shape)`` with labels ``y`` ``(n,)`` and its reference inputs ``ref_x``. Detectors that keep
        statistics per class keep them for at most ``later_tasks`` tasks after their own (None: every task) and
        fold the others; the others ignore it."""
        raise NotImplementedError

    def fit(self, tasks: list[list[int]]) -> "Recognizer":
        """Rebuild detectors 0..T-2 from the memory of ``tasks`` (their class ids)."""
        raise NotImplementedError

    def features(self, view: Subnetworks, x: torch.Tensor, m: int) -> np.ndarray:
        """Detector m's ``(n, d_m)`` features of inputs ``x``."""
        raise NotImplementedError

    def proba(self, view: Subnetworks, x: torch.Tensor, m: int) -> np.ndarray:
        """Detector m's probability ``(n,)`` that inputs ``x`` come from task m rather than a later one."""
        raise NotImplementedError

    def grown(self, units: Units, added: list[int]) -> None:
        """The unit layers of ``units`` (now grown) grew by ``added`` units each, at their end: keep reading the same
        units wherever their columns went."""
        raise NotImplementedError

    def state_dict(self) -> tuple[dict, dict[str, torch.Tensor], dict[str, BaseEstimator]]:
        """``(meta, tensors, estimators)``: JSON values, named tensors and fitted scikit-learn objects that
        :meth:`load_state_dict` rebuilds the recognizer from."""
        raise NotImplementedError

    def load_state_dict(self, meta: dict, tensors: dict[str, torch.Tensor], estimators: dict[str, BaseEstimator],
                        tasks: list[list[int]], units: Units) -> None:
        """Restore from :meth:`state_dict`'s parts for ``tasks`` (class ids of each) in a network of ``units``.
        Raises ValueError naming the entry that does not fit (KeyError for a missing one)."""
        raise NotImplementedError


class GaussianRecognizer(Recognizer):
    """Detectors of class-conditional Gaussian mixtures in one :class:`rerelrp.spaces.DetectorSpace`.

    Detector m scores an input's ``(n, d_m)`` features under every class c of the tasks m..T-1 (its
    :attr:`densities`; the tasks it folded score together, see :meth:`rerelrp.remember.ActivationStatistics.fold`);
    p_m is task m's share of the tasks m..T-1 (equal priors). It keeps, for the unknown answer,
    each task's first-layer statistics (:attr:`low`).

    Attributes
    ----------
    space
        the detector space.
    auto
        whether each new detector's width is :func:`rerelrp.remember.auto_features` of its task's classes
        (``n_features="auto"``), else ``n_features``.
    memory
        :class:`rerelrp.remember.ActivationStatistics`, one space per detector (0..T-1: the last one, of the
        newest task only, serves :mod:`rerelrp.novelty`).
    low
        :class:`rerelrp.novelty.LowLevelStatistics` of the first unit layer.
    densities
        :class:`rerelrp.remember.GaussianDensities` of :attr:`memory` (rebuilt by :meth:`fit`).
    """

    supports_unknown = True

    def __init__(self, space: DetectorSpace, n_features: int | str, n_components: int,
                 random_state: int | None = None):
        self.space, self.auto = space, n_features == "auto"
        width = AUTO_FEATURES if self.auto else n_features
        self.memory = ActivationStatistics(width, n_components, random_state)
        self.low = LowLevelStatistics(width, random_state)
        self.densities = GaussianDensities()

    def read(self, view: Subnetworks, x: torch.Tensor, m: int, first_layer: bool = False,
             logits: bool = False) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """In one pass through S_0..S_m: the first unit layer's :func:`rerelrp.network.position_spread` (with
        ``first_layer``, else None), the outputs ``(n, width)`` of the space, and task m's logits ``(n, k)`` (with
        ``logits``, else None)."""
        layers = self.space.reduce(view.units)
        reduce = {0: position_spread, **layers} if first_layer else layers
        outputs = view.outputs(x, m, reduce, logits=logits, head_input=self.space.head_input)
        head = outputs.pop() if logits else None
        read = [outputs[list(reduce).index(k)] for k in layers] + outputs[len(reduce):]
        return (outputs[0] if first_layer else None), torch.cat(read, 1), head

    def features(self, view: Subnetworks, x: torch.Tensor, m: int) -> np.ndarray:
        return self.memory.select(m, self.read(view, x, m)[1])

    def proba(self, view: Subnetworks, x: torch.Tensor, m: int) -> np.ndarray:
        return self._share(self.densities.task_loglik(m, self.features(view, x, m)))

    def measured_proba(self, view: Subnetworks, x: torch.Tensor, m: int) -> tuple[np.ndarray, Measures]:
        """:meth:`proba` and, from the same pass, the inputs' :class:`rerelrp.novelty.Measures` under task m."""
        loglik, measures = self._measured(view, x, m, None)
        return self._share(loglik), measures

    def measures(self, view: Subnetworks, x: torch.Tensor, m: int) -> Measures:
        """The inputs' :class:`rerelrp.novelty.Measures` under task m, from one pass through S_0..S_m."""
        return self._measured(view, x, m, slice(m, m + 1))[1]

    def _measured(self, view: Subnetworks, x: torch.Tensor, m: int,
                  tasks: slice | None) -> tuple[np.ndarray, Measures]:
        """From one pass through S_0..S_m: the log-likelihoods ``(n, k)`` in detector m's space under ``tasks``
        (:meth:`rerelrp.remember.GaussianDensities.task_loglik`; task m first) and the Measures under task m."""
        spread, outputs, logits = self.read(view, x, m, first_layer=True, logits=True)
        loglik = self.densities.task_loglik(m, self.memory.select(m, outputs), tasks)
        return loglik, Measures(loglik[:, 0], self.low.loglik(m, spread), confidence(logits), view.classes(logits, m))

    @staticmethod
    def _share(task_loglik: np.ndarray) -> np.ndarray:
        """Task m's share ``(n,)`` of the likelihoods ``(n, k)`` of the tasks m..T-1 (those detector m keeps, then
        the folded ones together)."""
        return np.exp(task_loglik[:, 0] - logsumexp(task_loglik, axis=1))

    def remember(self, view: Subnetworks, x: torch.Tensor, y: torch.Tensor, ref_x: torch.Tensor,
                 later_tasks: int | None = None) -> None:
        t = len(view) - 1
        sample = None  # the rows the detectors that fold this task read (fold_sample), drawn once
        for m in range(t + 1):
            keeps = m == t or self.memory.keeps(m, t, later_tasks)
            labels = y
            if m == t:
                if self.auto:  # the new detector's width, from its task's classes
                    self.memory.n_features = auto_features(len(view.tasks[t]))
                spread, outputs, _ = self.read(view, x, t, first_layer=True)
                union = view.union(t)
                self.low.add_task(spread, y, view.tasks[t], union[0])
                self.space.choose(self.memory, outputs, union, [layer.name for layer in view.units.layers])
            elif keeps:
                outputs = self.read(view, x, m)[1]
            else:
                sample = fold_sample(y, (self.memory.random_state or 0) + t) if sample is None else sample
                outputs, labels = self.read(view, x[sample], m)[1], y[sample]
            per_class = {c: self.memory.select(m, outputs[labels == c]) for c in view.tasks[t]}
            if keeps:
                for c, features in per_class.items():
                    self.memory.add_class(m, c, features)
            else:
                self.memory.fold(m, list(per_class.values()))

    def fit(self, tasks: list[list[int]]) -> "GaussianRecognizer":
        self.densities.fit(self.memory, tasks)
        self.low.fit(tasks)
        return self

    def grown(self, units: Units, added: list[int]) -> None:
        self.memory.move_columns(self.space.moved(units, added))
        self.low.memory.move_columns(moved_columns({0: position_spread}, units, added))

    def state_dict(self) -> tuple[dict, dict[str, torch.Tensor], dict[str, BaseEstimator]]:
        memory, tensors = self.memory.state_dict()
        low, low_tensors = self.low.state_dict()
        meta = {"n_features": self.memory.n_features, "memory": memory, "novelty_memory": low}
        return meta, {**tensors, **low_tensors}, {}

    def load_state_dict(self, meta: dict, tensors: dict[str, torch.Tensor], estimators: dict[str, BaseEstimator],
                        tasks: list[list[int]], units: Units) -> None:
        self.memory.n_features = meta["n_features"]
        self.memory.load_state_dict(meta["memory"], tensors)
        _check_tasks(self.memory, tasks)
        self.memory.check(tasks, self.space.width(units), self.space.name)
        if meta.get("novelty_memory"):  # saved before the first layer's statistics were kept: no unknown answer
            self.low.load_state_dict(meta["novelty_memory"], tensors, tasks)
        self.fit(tasks)


class TaskRecognizer(Recognizer):
    """The paper's chain of binary detectors on relevance vectors, refitted from memory after every task.

    Parameters
    ----------
    estimator
        an unfitted scikit-learn classifier with ``predict_proba`` and ``sample_weight`` in ``fit``;
        cloned once per detector.
    n_features
        units each detector reads (see :class:`rerelrp.remember.RelevanceMemory`).
    random_state
        seed set on every clone that has a ``random_state`` parameter.

    Attributes
    ----------
    memory
        :class:`rerelrp.remember.RelevanceMemory`.
    detectors_
        fitted detectors 0..T-2 (the newest task has none).
    """

    def __init__(self, estimator: BaseEstimator, n_features: int = 40, random_state: int | None = None):
        if not hasattr(estimator, "predict_proba") or not has_fit_parameter(estimator, "sample_weight"):
            raise TypeError(
                f"detector must be a scikit-learn classifier with predict_proba and fit(..., sample_weight=...); "
                f"{type(estimator).__name__} lacks one of them (RandomForestClassifier, LogisticRegression, "
                f"HistGradientBoostingClassifier and SVC(probability=True) qualify)"
            )
        self.estimator = estimator
        self.random_state = random_state
        self.memory = RelevanceMemory(n_features)
        self.detectors_: list[BaseEstimator] = []

    def with_estimator(self, estimator: BaseEstimator) -> "TaskRecognizer":
        """A recognizer of the same memory with another (unfitted) ``estimator``: call :meth:`fit` next."""
        other = TaskRecognizer(estimator, self.memory.n_features, self.random_state)
        other.memory = self.memory
        return other

    def remember(self, view: Subnetworks, x: torch.Tensor, y: torch.Tensor, ref_x: torch.Tensor,
                 later_tasks: int | None = None) -> None:
        self.memory.add_task([view.relevance(ref_x, m) for m in range(len(view))])

    def fit(self, tasks: list[list[int]]) -> "TaskRecognizer":
        detectors = []
        for m in range(self.memory.n_tasks - 1):
            X, y, w = self.memory.dataset(m)
            detector = clone(self.estimator)
            if "random_state" in detector.get_params():
                detector.set_params(random_state=self.random_state)
            detector.fit(X, y, sample_weight=w)
            if "n_jobs" in detector.get_params():
                # a threaded ensemble sums its members' probabilities in varying order: the same input could
                # get scores that differ in the last bit from call to call; one thread keeps them reproducible
                detector.set_params(n_jobs=None)
            detectors.append(detector)
        self.detectors_ = detectors
        return self

    def features(self, view: Subnetworks, x: torch.Tensor, m: int) -> np.ndarray:
        return self.memory.select(m, view.relevance(x, m))

    def proba(self, view: Subnetworks, x: torch.Tensor, m: int) -> np.ndarray:
        detector = self.detectors_[m]
        return detector.predict_proba(self.features(view, x, m))[:, list(detector.classes_).index(1)]

    def grown(self, units: Units, added: list[int]) -> None:
        self.memory.move_columns(moved_columns(dict.fromkeys(range(len(units.layers)), position_mean), units, added))

    def state_dict(self) -> tuple[dict, dict[str, torch.Tensor], dict[str, BaseEstimator]]:
        memory, tensors = self.memory.state_dict()
        meta = {"n_features": self.memory.n_features, "memory": memory, "novelty_memory": None}
        return meta, tensors, {f"detector-{m}": detector for m, detector in enumerate(self.detectors_)}

    def load_state_dict(self, meta: dict, tensors: dict[str, torch.Tensor], estimators: dict[str, BaseEstimator],
                        tasks: list[list[int]], units: Units) -> None:
        self.memory.n_features = meta["n_features"]
        self.memory.load_state_dict(meta["memory"], tensors)
        _check_tasks(self.memory, tasks)
        self.detectors_ = [estimators[f"detector-{m}"] for m in range(len(tasks) - 1) if f"detector-{m}" in estimators]


def _check_tasks(memory: ActivationStatistics | RelevanceMemory, tasks: list[list[int]]) -> None:
    if memory.n_tasks != len(tasks):
        raise ValueError(f"tensors.safetensors holds memory of {memory.n_tasks} tasks for {len(tasks)} learned tasks")


def make_recognizer(recognizer: str, detector_space: str, n_features: int | str, n_components: int,
                    detector: BaseEstimator | None, random_state: int) -> Recognizer:
    """The :class:`Recognizer` of the learner options of the same names (``recognizer`` one of
    :data:`RECOGNIZERS`, ``detector_space`` a space's name); ``n_features="auto"`` is
    :data:`rerelrp.remember.AUTO_FEATURES` for the paper's recognizer."""
    if recognizer == "paper":
        return TaskRecognizer(default_detector() if detector is None else detector,
                              AUTO_FEATURES if n_features == "auto" else n_features, random_state)
    return GaussianRecognizer(SPACES[detector_space], n_features, n_components, random_state)


class Route(NamedTuple):
    """What :func:`route` answers for a batch of n inputs."""

    p: np.ndarray  #: (n, T-1) detector probabilities (NaN after the chain stopped for a row)
    task: torch.Tensor  #: (n,) recognized task (-1: rejected)
    predictions: torch.Tensor | None  #: (n,) global class id (-1: rejected); None without heads
    score: np.ndarray | None  #: (n,) novelty score under the recognized task; None unless asked for


def route(recognizer: Recognizer, view: Subnetworks, x: torch.Tensor, stop_early: bool = True, heads: bool = True,
          novel: bool = False, quantiles: Sequence[np.ndarray] = (), known_fraction: float | None = None,
          prior: np.ndarray | None = None) -> Route:
    """Run the detector chain of ``recognizer`` over inputs ``x`` ``(n, *input_shape)`` through ``view``.

    Answers the detectors' probabilities ``(n, T-1)``, the task ``(n,)`` of the highest chain score (plus the
    log ``prior`` ``(n, T)`` of each task, when given: see :func:`bounded`), its predicted class ``(n,)`` (with
    ``heads``: the argmax inside head m of subnetwork m, for the task m the row is recognized as) and, with
    ``novel``, each row's :func:`rerelrp.novelty.standardize` score ``(n,)`` under its recognized task, calibrated
    by that task's ``quantiles`` (:func:`rerelrp.novelty.calibrate`). With ``known_fraction`` (which needs
    ``novel``), rows below their task's threshold are answered -1 (task and class). With ``novel`` the classes come
    from the logits the detector passes read (S_0..S_m is subnetwork m): no head pass at all; rows recognized as
    task T-1 take one more pass, through S_0..S_T-1.

    With ``stop_early`` the chain stops for the rows whose best task is already certain (:func:`decided`; their
    later probabilities are NaN): a row recognized as task m < T-1 costs m + 1 detector passes instead of T - 1,
    with the same task and class.
    """
    T, n = len(view), len(x)
    task = torch.full((n,), T - 1, dtype=torch.long)
    p = np.full((n, T - 1), np.nan)
    measured = [None] * T  # per task m: the Measures of the rows that detector m read, and which rows
    rows = np.arange(n)
    for m in range(T - 1):
        if novel:
            p[rows, m], measures = recognizer.measured_proba(view, x[rows], m)
            measured[m] = (rows, measures)
        else:
            p[rows, m] = recognizer.proba(view, x[rows], m)
        scores, known = chain_scores(p[rows, :m + 1]), None if prior is None else prior[rows]
        last = m == T - 2  # the whole chain is known: every row is done
        done = decided(scores, known) if stop_early and not last else np.full(len(rows), last)
        task[rows[done]] = torch.as_tensor(bounded(scores[done], None if known is None else known[done]).argmax(1))
        rows = rows[~done]
        if not len(rows):
            break
    score = classes = None
    if novel:
        newest = (task == T - 1).nonzero()[:, 0].numpy()
        if len(newest):
            measured[T - 1] = (newest, recognizer.measures(view, x[torch.as_tensor(newest, device=x.device)], T - 1))
        own, low, conf, classes = _chosen(measured, task, n, x.device)
        score, known = judge(own, low, conf, task.numpy(), quantiles, known_fraction or 0.0)
        if known_fraction is not None:
            task[~torch.as_tensor(known)] = -1
    predictions = _predictions(view, x, task, classes) if heads else None
    return Route(p, task.to(x.device), predictions, score)


def _predictions(view: Subnetworks, x: torch.Tensor, task: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
    """Each row's class ``(n,)`` in its recognized task ``task`` ``(n,)`` (-1 where rejected): from ``classes``, read
    in the detector passes, or else from one pass of each task's subnetwork over its rows."""
    if classes is not None:
        return torch.where(task.to(x.device) >= 0, classes, -1)
    predictions = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
    for m in task.unique().tolist():
        members = (task == m).nonzero()[:, 0].to(x.device)
        predictions[members] = view.predict(x[members], m)
    return predictions


def _chosen(measured: list, task: torch.Tensor, n: int, device) -> tuple[np.ndarray, ...]:
    """Each row's measures ``own``, ``low``, ``conf`` ``(n,)`` and classes ``(n,)`` under its recognized task, from
    ``measured[m] = (rows, Measures)`` of the rows detector m read (every row is read by its task's detector)."""
    own, low, conf = (np.full(n, np.nan) for _ in range(3))
    classes = torch.full((n,), -1, dtype=torch.long, device=device)
    for m, entry in enumerate(measured):
        if entry is None:
            continue
        rows, measures = entry
        mine = task.numpy()[rows] == m
        chosen = rows[mine]
        own[chosen], low[chosen], conf[chosen] = measures.own[mine], measures.low[mine], measures.conf[mine]
        classes[torch.as_tensor(chosen, device=device)] = measures.classes[torch.as_tensor(mine, device=device)]
    return own, low, conf, classes
