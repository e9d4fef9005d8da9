"""The ReReLRP learner: one shared network, one unit mask and one head per task.

:meth:`ReReLRP.fit_task` and :meth:`ReReLRP.training` run the method's stages around the task's training, each a
call into the stage's module (``docs/method.md``): grow (:mod:`rerelrp.growth`) -> data (:mod:`rerelrp.data`) ->
train (:mod:`rerelrp.train`, :mod:`rerelrp.reinit`) -> reference set, relevance, prune and retrain in rounds
(:mod:`rerelrp.relevance`, :mod:`rerelrp.prune`) -> freeze (:mod:`rerelrp.freeze`) -> capacity
(:mod:`rerelrp.capacity`) -> remember and recognize (:mod:`rerelrp.recognize`) -> calibrate the unknown answer
(:mod:`rerelrp.novelty`). Prediction without a task id routes each input through the detector chain to its task's
subnetwork and head (:func:`rerelrp.recognize.route`). A learner's state is :meth:`ReReLRP.state_dict`, written to
a file by :mod:`rerelrp.persist`.
"""
from __future__ import annotations

import contextlib
import copy
import os
import time
from pathlib import Path
from typing import Iterable, Iterator, Union

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from zennit.core import Composite

from . import architecture, capacity, growth, novelty, options, ownership, persist, reinit, spaces
from .concurrency import TRACE_LOCK, model_lock
from .contexts import seeded, warn
from .data import TaskData, check_input, prepare_task
from .distributed import agree, from_rank0, is_distributed, is_rank0
from .freeze import FrozenParameters
from .network import find_units, masked
from .prune import PruneResult, choose_measure, prune_to_threshold, settle, unit_scores
from .input_space import InputRecognizer
from .recognize import GaussianRecognizer, Route, make_recognizer, route, task_posterior
from .relevance import input_composite, lrp
from .subnetworks import Subnetworks
from .train import OptimizerFactory, TaskTraining, batchnorm_frozen, train_task

__all__ = ["ReReLRP"]

#: Inputs a prediction accepts: one tensor ``(n, *input_shape)``, or an iterable of batches (a DataLoader).
Batches = Union[torch.Tensor, Iterable]

STAGES = ("data", "grow", "train", "relevance", "prune", "retrain", "freeze", "remember", "recognize", "calibrate")
#: Fitted attributes that refer to the model's modules or parameters: a checkpoint does not copy them.
_MODEL_BOUND = ("units_", "frozen_", "device_", "composite_")


class ReReLRP(BaseEstimator):
    """Replay-free class-incremental learner that remembers and recognizes tasks with LRP (``docs/method.md``).

    Parameters
    ----------
    model
        classifier of Linear/Conv2d/activation/pooling(/BatchNorm) modules, activations as modules; its last
        ``nn.Linear`` is the output layer, one row per global class id. Trained in place.
    epochs
        passes over the task's data in :meth:`fit_task`'s own loop.
    lr
        learning rate of that loop and of the retraining between pruning rounds.
    optimizer
        a factory ``(params, lr=...) -> torch.optim.Optimizer`` for those loops (default ``torch.optim.Adam``).
    acc_drop
        pruning threshold, percentage points of validation accuracy (method, section Prune).
    drop_confidence
        one-sided confidence in [0.5, 1) at which a pruning must be shown to cost more than
        ``acc_drop`` points to be refused (:func:`rerelrp.prune.paired_drop`); 0.5 compares raw accuracies.
    drop_measure
        what the threshold compares per validation image: ``"accuracy"``, ``"probability"`` (of the
        true class) or ``"auto"`` (:func:`rerelrp.prune.choose_measure`).
    min_keep
        fraction of every unit layer, its most relevant units, that each task keeps whatever the accuracy.
    prune_rounds
        rounds of relevance, pruning and retraining per task.
    retrain_epochs
        epochs retraining the survivors after each round (None: ``epochs // 10``, at least 1; 0: none).
    reset_free
        re-initialise the free units before each task after the first (:mod:`rerelrp.reinit`).
    n_tasks
        tasks the stream will have, if known: each task keeps at most an even share of each layer's free
        units (:func:`rerelrp.capacity.task_budget`). None (an open-ended stream): each task keeps at most
        :data:`rerelrp.capacity.OPEN_SHARE` of them.
    grow
        fraction of each unit layer's initial width that every task after the first finds free, growing the
        layer where needed (:mod:`rerelrp.growth`); 0: never grow; ``"auto"``: :data:`rerelrp.growth.AUTO_GROW`
        where the model's layers can grow and it is not DistributedDataParallel, else 0 (``grow_`` says which),
        up to :data:`rerelrp.growth.AUTO_MAX_PARAMETERS` times the initial parameters (the growth that would pass it
        is cut to fit). A number > 0 is refused with DistributedDataParallel.
    known_fraction
        share of new inputs like each task's validation inputs that ``reject=True`` accepts, in
        expectation (:mod:`rerelrp.novelty`); with n validation inputs at most n / (n + 1) is honoured.
    n_reference
        reference samples per class for the relevance that ranks units.
    n_features
        units or principal components each task detector reads; side memory grows with its square.
        ``"auto"``: :func:`rerelrp.remember.auto_features` of the task's number of classes (40 for two, 17 for
        ten), so that a task's Gaussians cost about the same bytes whatever its classes.
    n_components
        most Gaussian mixture components per class (``recognizer="gaussian"``).
    later_tasks
        with ``recognizer="gaussian"``, detector m keeps a mixture per class of the tasks up to ``later_tasks`` after
        its own and folds every task after those into one mixture of at most
        :data:`rerelrp.remember.REST_COMPONENTS` components (:meth:`rerelrp.remember.ActivationStatistics.fold`), so
        that side memory and prediction grow linearly with the number of tasks, not with its square. None: keep
        every task's classes. The default, 4, folds nothing on streams of up to 5 tasks.
    detector_space
        what the Gaussian detectors read: ``"units"``, ``"head"`` (residual networks), ``"layers"``
        (:mod:`rerelrp.spaces`) or ``"auto"``: ``"head"`` where a residual sum lies between the last hidden unit
        layer and the output layer, ``"layers"`` otherwise (``"units"`` with ``recognizer="paper"``;
        :func:`rerelrp.spaces.resolve`). ``detector_space_`` is the space chosen.
    recognizer
        ``"gaussian"`` (:class:`rerelrp.recognize.GaussianRecognizer`) or ``"paper"``
        (:class:`rerelrp.recognize.TaskRecognizer`, forests on relevance vectors).
    input_weight
        weight of the input-space recognizer (:class:`rerelrp.input_space.InputRecognizer`: class mixtures of the
        inputs through one fixed map, see ``input_filters``): its log task posterior, times ``input_weight``, is added
        to the detector chain's log task scores. 0: not kept at all. The default, 1.0, recognized tasks better than the
        chain alone on every stream measured, most where tasks look alike (Split Fashion-MNIST; docs: Benchmarks,
        Recognition). A learner that kept none at its first task cannot start later; one that did can change the
        weight.
    input_filters
        the filters of the input recognizer's map, fixed by the first task: ``"patches"`` (the default: k-means
        centroids of the first task's whitened 5 x 5 patches, :func:`rerelrp.input_space.patch_filters`; images of at
        least 5 x 5 pixels, else the first ``fit_task`` refuses before training) or ``"random"`` (seeded normal
        weights, any image size). The patches recognized tasks as well or better on every stream measured, most where
        tasks look alike (Split Fashion-MNIST; docs: Benchmarks, Recognition). Images only: other inputs are read as
        they are.
    val_fraction
        share of a task held out for pruning when no ``val_loader`` is given.
    composite
        zennit composite for LRP (default: EpsilonPlusFlat with the model's canonizers).
    detector
        with ``recognizer="paper"``, an unfitted scikit-learn classifier for the detector chain (default:
        :func:`rerelrp.recognize.default_detector`).
    batch_size
        samples per pass during relevance, pruning and prediction.
    device
        where to train and predict (default: where the model's parameters are).
    random_state
        seed of splits, reference draws, training shuffles and detectors.
    progress
        show tqdm progress bars.

    Attributes
    ----------
    tasks_
        per task, its sorted class ids.
    masks_
        per task, one bool tensor ``(n_units,)`` per unit layer: the kept units of S_t.
    prune_results_
        per task, the :class:`rerelrp.prune.PruneResult` of its last pruning round.
    fit_times_
        per task, seconds spent in each stage (:data:`STAGES`).
    growth_
        per task, the units added to each unit layer before it; ``grow_``: the fraction ``grow`` resolved to.
    warnings_
        every warning the learner gave or would have repeated, as ``(task, kind, text)``; each kind is
        warned once (:meth:`summary` lists them all).
    initial_sizes_, initial_parameters_
        units per unit layer and parameter entries before the first task.
    recognizer_
        the :class:`rerelrp.recognize.Recognizer`; ``memory_`` its memory; ``novelty_memory_`` its
        first-layer statistics (:class:`rerelrp.novelty.LowLevelStatistics`; None with ``recognizer="paper"``).
    novelty_quantiles_
        per task, :func:`rerelrp.novelty.calibrate`'s ``(4, 101)`` quantiles (empty with
        ``recognizer="paper"``).
    detector_space_
        the ``detector_space`` the memory was built in.
    frozen_
        the :class:`rerelrp.freeze.FrozenParameters`; ``units_``: the model's :class:`rerelrp.network.Units`.
    input_shape_
        shape of one input; ``input_range_``: ``(low, high)`` of the training inputs so far.

    Examples
    --------
    >>> learner = ReReLRP(model, epochs=5, random_state=0)        # doctest: +SKIP
    >>> for loader in task_loaders:                               # doctest: +SKIP
    ...     learner.fit_task(loader)
    >>> learner.predict(x)                # class ids, no task id  # doctest: +SKIP
    >>> print(learner.summary())          # what it decided        # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        epochs: int = 30,
        lr: float = 1e-3,
        optimizer: OptimizerFactory = torch.optim.Adam,
        acc_drop: float = 2.0,
        drop_confidence: float = 0.5,
        drop_measure: str = "auto",
        min_keep: float = 0.15,
        prune_rounds: int = 3,
        retrain_epochs: int | None = None,
        reset_free: bool = True,
        n_tasks: int | None = None,
        grow: float | str = "auto",
        known_fraction: float = 0.95,
        n_reference: int = 500,
        n_features: int | str = "auto",
        n_components: int = 4,
        later_tasks: int | None = 4,
        detector_space: str = "auto",
        recognizer: str = "gaussian",
        input_weight: float = 1.0,
        input_filters: str = "patches",
        val_fraction: float = 0.1,
        composite: Composite | None = None,
        detector: BaseEstimator | None = None,
        batch_size: int = 256,
        device: torch.device | str | None = None,
        random_state: int = 0,
        progress: bool = True,
    ):
        self.model = model
        self.epochs = epochs
        self.lr = lr
        self.optimizer = optimizer
        self.acc_drop = acc_drop
        self.drop_confidence = drop_confidence
        self.drop_measure = drop_measure
        self.min_keep = min_keep
        self.prune_rounds = prune_rounds
        self.retrain_epochs = retrain_epochs
        self.reset_free = reset_free
        self.n_tasks = n_tasks
        self.grow = grow
        self.known_fraction = known_fraction
        self.n_reference = n_reference
        self.n_features = n_features
        self.n_components = n_components
        self.later_tasks = later_tasks
        self.detector_space = detector_space
        self.recognizer = recognizer
        self.input_weight = input_weight
        self.input_filters = input_filters
        self.val_fraction = val_fraction
        self.composite = composite
        self.detector = detector
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.progress = progress

    # ------------------------------------------------------------------ learning
    def fit_task(self, loader: DataLoader, val_loader: Iterable | None = None) -> "ReReLRP":
        """Learn one more task in rerelrp's own loop: ``epochs`` passes of ``optimizer`` at ``lr`` over the task's
        head, inside :meth:`training`, then the method's other stages.

        Parameters
        ----------
        loader : torch.utils.data.DataLoader
            The task's batches ``(x, y)``: inputs ``(batch, *input_shape)``, ``y`` ``(batch,)`` global class ids that no
            earlier task used.
        val_loader : iterable of (x, y) batches, optional
            The task's validation data for the pruning threshold and the unknown answer's calibration; None holds out a
            stratified ``val_fraction`` of ``loader``'s dataset.

        Returns
        -------
        ReReLRP
            ``self``, fitted on one more task.

        Raises
        ------
        ValueError
            Data that cannot be learned (classes of an earlier task, a loader that yields no batch, inputs beyond
            +-1e6, labels that are not integers), naming the fix.

        Examples
        --------
        >>> learner = rerelrp.ReReLRP(model, epochs=5, random_state=0)       # doctest: +SKIP
        >>> learner.fit_task(loader_task0).fit_task(loader_task1)             # doctest: +SKIP
        """
        with self.training(loader, val_loader) as task, seeded(task.seed, self.device_):
            train_task(self.model, task.loader, task.classes, epochs=self.epochs, lr=self.lr,
                       optimizer=self.optimizer, device=self.device_, progress=self.progress,
                       description=f"task {task.index} train")
        return self

    @contextlib.contextmanager
    def training(self, loader: DataLoader, val_loader: Iterable | None = None) -> Iterator[TaskTraining]:
        """Learn one more task in your own training loop, run inside this context.

        On entry the task's data is read and checked (as by :meth:`fit_task`). Inside, any optimizer that steps the
        model's parameters leaves frozen entries bit-identical, and after the first task BatchNorm statistics stay fixed
        even under ``model.train()``. On leaving the context normally the method's other stages run; the retraining
        between pruning rounds runs in rerelrp's own loop over the task's ``loader`` (``optimizer``, ``lr``,
        ``retrain_epochs``): ``retrain_epochs=0`` keeps every optimizer step in yours. If the loop or a stage raises, or
        is interrupted, the learner and the model's parameters and buffers are put back as they were before the task, and
        the error propagates. With ``grow``, the model may grow on entry: build the optimizer inside the context.

        Parameters
        ----------
        loader : torch.utils.data.DataLoader
            The task's batches ``(x, y)``, ``y`` global class ids (see :meth:`fit_task`).
        val_loader : iterable of (x, y) batches, optional
            The task's validation data; None holds out a stratified ``val_fraction`` of ``loader``'s dataset.

        Yields
        ------
        rerelrp.train.TaskTraining
            The task: its ``classes``, the ``loader`` to train on (``loader`` itself, with its own sampler, when a
            ``val_loader`` is given; else the training share) and ``loss(logits, y)``, the cross-entropy over its head.

        Examples
        --------
        >>> with learner.training(loader) as task:                          # doctest: +SKIP
        ...     optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        ...     for x, y in task.loader:
        ...         optimizer.zero_grad(); task.loss(model(x), y).backward(); optimizer.step()
        """
        self._check_params()
        with model_lock(self._net):  # other threads' calls wait for the task (they would see its hooks)
            if getattr(self, "_open_task", None) is not None:
                raise RuntimeError(f"task {self._open_task} is still being trained: a training() context was entered "
                                   "and not left; leave it (end the with block) before learning another task")
            first = not hasattr(self, "tasks_")
            if first:
                self._start()
            else:
                self._check_unchanged()  # before anything: a refused task leaves the learner as it was
            self._resolve_grow(first)
            before = self._checkpoint()
            self._open_task = len(self.tasks_)
            try:
                with TRACE_LOCK.shared(), self._learning(loader, val_loader) as task:
                    yield task
            except BaseException:
                self._rollback(before, first)
                raise
            finally:
                self._open_task = None

    @contextlib.contextmanager
    def _learning(self, loader: DataLoader, val_loader: Iterable | None) -> Iterator[TaskTraining]:
        """The stages of ``docs/method.md`` around the caller's training (stage 1)."""
        t = len(self.tasks_)
        seed = self.random_state + 1000 * t
        times = dict.fromkeys(STAGES, 0.0)
        with _timed(times, "grow"):
            self._grow(seed)  # 0
        with _timed(times, "data"):
            task = self._prepare(loader, val_loader, seed)
        if t == 0 and self.input_recognizer_ is not None:
            self.input_recognizer_.check(task.input_shape)  # before training: the filters come after it
        if t > 0:
            reinit.fresh_start(self._net, self.units_, self.masks_, task.train_x, seed, self.reset_free)
        with _timed(times, "train"), self._guarded():
            yield TaskTraining(t, tuple(task.classes), task.train, seed)  # 1
        self._check_finite(t)
        result = self._prune(task, seed, times)  # 2-4
        self.tasks_.append(task.classes)
        self.masks_.append([k.to(self.device_) for k in result.keep])
        self.prune_results_.append(result)
        with _timed(times, "freeze"):  # 5
            self.frozen_.freeze_units(result.keep)
            self.frozen_.freeze_head(task.classes)
            if t == 0:
                self.frozen_.freeze_shared()
        for kind, message in capacity.warnings_after(self.units_, self.masks_, result, self.n_tasks, self.growth_,
                                                     self.grow_ > 0, self.initial_sizes_):
            self._say(t, kind, message)
        self._remember(task, times)  # 6-8
        self.input_shape_ = task.input_shape
        low, high = float(task.train_x.min()), float(task.train_x.max())
        previous = getattr(self, "input_range_", None) or (low, high)
        self.input_range_ = (min(previous[0], low), max(previous[1], high))
        self.fit_times_.append(times)
        self.frozen_.record()  # last: the next task starts only if the frozen entries are still these

    def _resolve_grow(self, first: bool) -> None:
        """``grow_`` from ``grow`` (:func:`rerelrp.growth.resolve`);
        with ``grow="auto"``, the first task warns where the model cannot grow and no ``n_tasks`` budgets it."""
        self.grow_, refused = growth.resolve(self.grow, self._growth_paths,
                                             isinstance(self.model, DistributedDataParallel))
        if first and refused and self.n_tasks is None:
            where = "the model cannot grow" if self.grow_ == 0 else \
                f"{capacity.counted(len(refused), 'unit layer')} of {len(self.units_.layers)} cannot grow"
            self._say(0, "cannot grow", f"grow='auto': {where} ({refused[0]}{'; ...' if len(refused) > 1 else ''}). "
                      f"Without n_tasks each task keeps at most {capacity.OPEN_SHARE:.0%} of a layer's free units, so "
                      "on a long stream later tasks find fewer and fewer: set n_tasks to the number of tasks you "
                      "expect, or use a model whose layers can grow")

    def _say(self, task: int, kind: str, message: str) -> None:
        """Record ``message`` in ``warnings_`` with the ``task`` it concerns and its ``kind``, and warn it unless a
        warning of the same ``kind`` was given before: each kind is said once, :meth:`summary` lists them all."""
        if all(k != kind for _, k, _ in self.warnings_):
            warn(message)
        self.warnings_.append((task, kind, message))

    def _grow(self, seed: int) -> None:
        """Stage 0: with ``grow_``, give every unit layer its free units (:func:`rerelrp.growth.grow_free`; with
        ``grow="auto"`` within its parameter cap); warns when the cap cuts the growth and when the pool is empty."""
        t = len(self.tasks_)
        added = [0] * len(self.units_.layers)
        room = None  # grow="auto": parameter entries it may still add
        if self.grow == "auto":
            room = int(growth.AUTO_MAX_PARAMETERS * self.initial_parameters_) - growth.n_parameters(self._net)
        if t > 0 and self.grow_ > 0 and (room is None or room > 0):
            with seeded(seed, self.device_):
                added, refusals, capped = growth.grow_free(self.units_, self.masks_, self.initial_sizes_, self.grow_,
                                                           self._growth_paths, self.frozen_, room)
            for message in refusals if self.grow != "auto" else ():  # "auto" said so at the first task
                self._say(t, "cannot grow", message)
            self.masks_ = growth.grow_masks(self.masks_, added)
            if any(added):  # columns of later layers moved in what the memories index
                self.recognizer_.grown(self.units_, added)
            if capped:
                self._say(t, "growth capped", f"grow='auto' stops growing: the model has {self.parameter_growth():.2f}x "
                          f"its initial parameters, and a pool of {self.grow_:.0%} of each layer's initial width would "
                          f"pass its cap of {growth.AUTO_MAX_PARAMETERS:g}x (rerelrp.growth.AUTO_MAX_PARAMETERS): task "
                          f"{t} got {capacity.counted(sum(added), 'new unit')} instead. Each task keeps at most "
                          f"{capacity.OPEN_SHARE:.0%} of the free units from now on; a number for grow goes on growing")
        self.growth_.append(added)
        # the forecast warned before, unless the stream outgrew n_tasks
        if t > 0 and self.free_capacity()["overall"] == 0.0:
            self._say(t, "exhausted", f"capacity exhausted: all {self.units_.total} units are kept by the "
                      f"{capacity.counted(t, 'task')} learned so far, so task {t} can train only its own head rows; "
                      f"use a wider model, or a larger acc_drop (now {self.acc_drop} points) for the tasks to come, "
                      "or grow > 0")

    def _prepare(self, loader: DataLoader, val_loader: Iterable | None, seed: int) -> TaskData:
        """The task's data, checked against the model and the tasks learned so far
        (:func:`rerelrp.data.prepare_task`)."""
        t = len(self.tasks_)
        task = prepare_task(
            loader, val_loader, n_outputs=self.units_.output.out_features,
            learned=[c for classes in self.tasks_ for c in classes], input_shape=getattr(self, "input_shape_", None),
            val_fraction=self.val_fraction, n_reference=self.n_reference, seed=seed)
        dtype = next(self._net.parameters()).dtype
        if task.train_x.dtype != dtype:
            raise TypeError(f"the task's inputs are {task.train_x.dtype} but the model's parameters are {dtype}: "
                            f"give the loader inputs of {dtype} (e.g. x.to({dtype})), or convert the model")
        if t == 0:
            architecture.check_forward(self._net, self.units_, task.val_x[:1].to(self.device_))
        agree(task.classes, f"the classes of task {t}")
        return task

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        """Training of the newest task: frozen entries are restored after every optimizer step, and after the first
        task BatchNorm statistics stay fixed."""
        statistics = batchnorm_frozen(self.units_.batchnorms) if self.tasks_ else contextlib.nullcontext()
        with self.frozen_.enforced(self.model), statistics:
            yield

    def _check_unchanged(self) -> None:
        """RuntimeError naming the tensors whose frozen entries changed since the last task or load."""
        moved = self.frozen_.changed(self._net)
        if moved:
            raise RuntimeError(
                f"frozen entries of {', '.join(moved)} changed since task {len(self.tasks_) - 1} was learned (or the "
                "learner loaded): the model was changed between tasks (a re-initialisation, a plugin's edit, a "
                "forward in training mode moving BatchNorm statistics), so the learned tasks no longer answer as they "
                "did. The learner is left as it was and learns no task over it: put the weights back (model."
                "load_state_dict of a copy taken after the task, or rerelrp.load of a save into a fresh model)")

    def _check_finite(self, t: int) -> None:
        diverged = [name for name, p in self._net.named_parameters() if not torch.isfinite(p).all()]
        if diverged:
            raise RuntimeError(f"training of task {t} diverged: {', '.join(diverged[:3])} hold NaN or Inf; the task is "
                               f"not learned and the learner is as before it. Lower lr (now {self.lr}) or scale the "
                               "inputs")

    def _prune(self, task: TaskData, seed: int, times: dict) -> PruneResult:
        """Stages 2-4 in rounds: relevance of every unit of the reference set through head t (from the true class's
        logit, through the survivors so far), pruning of free units to the threshold within the task's budget,
        and retraining of the survivors with the pruned units switched off. When distributed, relevance and
        pruning run on rank 0 (the weights agree, so would the result) and retraining on every rank."""
        t, view = len(self.tasks_), self.subnetworks()
        ref_x, ref_y = task.ref_x.to(self.device_), task.ref_y.to(self.device_)
        val_x, val_y = task.val_x.to(self.device_), task.val_y.to(self.device_)
        column = (val_y[:, None] == torch.as_tensor(list(task.classes), device=val_y.device)).int().argmax(1)
        measure = choose_measure(self.drop_measure, len(val_y), self.acc_drop)

        def correct(keep, check_chance: bool = False) -> torch.Tensor:  # per image: right, or the true class's p
            logits = view.logits(val_x, task.classes, keep)
            if check_chance and not capacity.above_chance((logits.argmax(1) == column).cpu(), val_y):
                self._say(t, f"at chance {t}", capacity.at_chance_message(
                    t, logits.argmax(1) == column, val_y, free, self.units_.total, self.n_tasks))
            if measure == "probability":
                return logits.softmax(1).gather(1, column[:, None])[:, 0].cpu()
            return (logits.argmax(1) == column).cpu()

        frozen = capacity.kept_by(self.masks_, self.units_.sizes)
        free_per_layer = [n - int(f.sum()) for n, f in zip(self.units_.sizes, frozen)]
        free, budget = sum(free_per_layer), capacity.task_budget(free_per_layer, t, self.n_tasks)
        base = from_rank0(lambda: correct(None, check_chance=True))
        result = None
        for r in range(self.prune_rounds):
            def prune_round(previous: PruneResult | None = result) -> PruneResult:
                with _timed(times, "relevance"):
                    rel = lrp(self._net, self.units_, ref_x, task.classes, target=ref_y,
                              keep=None if previous is None else previous.keep, composite=self.composite_,
                              batch_size=self.batch_size)
                with _timed(times, "prune"):
                    return prune_to_threshold(
                        unit_scores(rel.units), self.units_.sizes, correct, self.acc_drop, self.min_keep,
                        frozen=frozen, pruned=None if previous is None else [~k for k in previous.keep],
                        budget=budget, confidence=self.drop_confidence, base=base, measure=measure)

            result = from_rank0(prune_round)
            if self._retrain_epochs:
                with _timed(times, "retrain"), self._guarded(), masked(self.units_, result.keep), \
                        seeded(seed + 1 + r, self.device_):
                    train_task(self.model, task.train, task.classes, epochs=self._retrain_epochs, lr=self.lr,
                               optimizer=self.optimizer, device=self.device_, progress=self.progress,
                               description=f"task {t} retrain")
        # the subnetwork the task ends with, against the threshold: beyond it because of the budget in any round
        final = from_rank0(lambda: correct(result.keep))
        forced = any(f > b for f, b in zip(free_per_layer, budget))
        return settle(result, base, final, self.acc_drop, self.drop_confidence, forced)

    def _remember(self, task: TaskData, times: dict) -> None:
        """Stages 6-8 (on rank 0 when distributed; every rank takes the result): remember the task through every
        subnetwork, rebuild the detector chain, calibrate the unknown answer on the task's validation inputs."""
        t, view = len(self.tasks_) - 1, self.subnetworks()
        x, y, ref_x = (v.to(self.device_) for v in (task.train_x, task.train_y, task.ref_x))

        def remember_and_recognize():
            with _timed(times, "remember"):
                self.recognizer_.remember(view, x, y, ref_x, self.later_tasks)
                if self.input_recognizer_ is not None:
                    self.input_recognizer_.remember(x, y, self.tasks_[t])
            with _timed(times, "recognize"):
                self.recognizer_.fit(self.tasks_)
                if self.input_recognizer_ is not None:
                    self.input_recognizer_.fit(self.tasks_)
            with _timed(times, "calibrate"):
                quantiles = None
                if self.recognizer_.supports_unknown:
                    own, low, conf, _ = self.recognizer_.measures(view, task.val_x.to(self.device_), t)
                    quantiles = novelty.calibrate(own, low, conf)
                    if self.known_fraction > len(own) / (len(own) + 1):
                        self._say(t, "known_fraction", f"task {t} has {len(own)} validation inputs: known_fraction="
                                  f"{self.known_fraction} cannot be honoured, about {len(own) / (len(own) + 1):.3f} of "
                                  "its new inputs will be accepted; give more validation data (val_loader, "
                                  "val_fraction)")
            return self.recognizer_, self.input_recognizer_, quantiles

        self.recognizer_, self.input_recognizer_, quantiles = from_rank0(remember_and_recognize)
        if quantiles is not None:
            self.novelty_quantiles_ = self.novelty_quantiles_ + [quantiles]

    def _checkpoint(self) -> dict:
        """What :meth:`_rollback` needs to put the learner and its model back as they are now: the model
        (:func:`rerelrp.growth.snapshot`), a copy of every fitted attribute not bound to the model, the freeze masks."""
        return {"model": growth.snapshot(self._net), "frozen": {p: m.clone() for p, m in self.frozen_.masks.items()},
                "fingerprint": dict(self.frozen_.fingerprint),
                "fitted": {k: copy.deepcopy(v) for k, v in vars(self).items()
                           if k.endswith("_") and not k.startswith("_") and k not in _MODEL_BOUND}}

    def _rollback(self, before: dict, first: bool) -> None:
        growth.restore(self._net, before["model"])
        if first:  # back to unfitted: the model is free again
            ownership.release(self._net, self)
            for name in [n for n in vars(self) if n.endswith("_") and not n.startswith("_")]:
                delattr(self, name)
            return
        vars(self).update(before["fitted"])
        self.frozen_.masks = before["frozen"]
        self.frozen_.fingerprint = before["fingerprint"]

    # ---------------------------------------------------------------- prediction
    def predict(self, x: Batches, task_id: int | None = None, reject: bool = False) -> torch.Tensor:
        """Global class ids of inputs, with or without the task id.

        Parameters
        ----------
        x : torch.Tensor or iterable of batches
            Inputs ``(n, *input_shape)``; or a DataLoader or any iterable of batches (tensors, or tuples whose first
            element is the input), answered batch by batch, as for the concatenated tensor (scores up to floating-point
            rounding, which depends on the batch size).
        task_id : int, optional
            None: task-agnostic (the detector chain picks the task); ``t``: task-aware, the argmax within task t's
            classes of subnetwork t.
        reject : bool, default False
            With ``recognizer="gaussian"``: answer -1 for inputs of no learned task, those whose typicality under the
            task they are recognized as (or task ``task_id``; see :meth:`score_samples`) is below the level that accepts
            a ``known_fraction`` of that task's validation inputs.

        Returns
        -------
        torch.Tensor
            ``(n,)`` int64 global class ids (-1 where rejected), on the CPU.
        """
        self._check_fitted()
        if task_id is not None:
            m = self._check_task_id(task_id)
            if reject:
                self._check_novelty()
                return self._per_batch(x, lambda b: self._known(b, m))
            return self._per_batch(x, lambda b: self.subnetworks().predict(b, m))
        if reject:
            self._check_novelty()
        return self._per_batch(x, lambda b: self._route(b, reject=reject).predictions)

    def predict_task(self, x: Batches, reject: bool = False) -> torch.Tensor:
        """The recognized task of each input: the argmax of :meth:`predict_proba_task`.

        Parameters
        ----------
        x : torch.Tensor or iterable of batches
            Inputs ``(n, *input_shape)`` (see :meth:`predict`).
        reject : bool, default False
            Answer -1 for inputs that are not typical of the task they are recognized as (see :meth:`predict`).

        Returns
        -------
        torch.Tensor
            ``(n,)`` int64 task indices (positions in ``tasks_``; -1 where rejected), on the CPU.
        """
        if reject:
            self._check_novelty()
        return self._per_batch(x, lambda b: self._route(b, heads=False, reject=reject).task)

    def score_samples(self, x: Batches) -> torch.Tensor:
        """Novelty scores: how typical each input is of the task it is recognized as (scikit-learn's convention:
        higher = more typical). Needs ``recognizer="gaussian"``; no more passes than :meth:`predict`.

        Parameters
        ----------
        x : torch.Tensor or iterable of batches
            Inputs ``(n, *input_shape)`` (see :meth:`predict`).

        Returns
        -------
        torch.Tensor
            ``(n,)`` float64 typicality, 0 at the median of the task's validation inputs and -1 at their 5 % quantile
            (:func:`rerelrp.novelty.typicality`, :func:`rerelrp.novelty.standardize`), on the CPU.
        """
        self._check_novelty()
        return self._per_batch(x, lambda b: torch.from_numpy(self._route(b, heads=False, novel=True).score))

    def predict_proba_task(self, x: Batches) -> torch.Tensor:
        """The task scores: the detector chain's, times the input recognizer's posterior to the power
        ``input_weight`` (:func:`rerelrp.recognize.task_posterior`), normalised.

        Parameters
        ----------
        x : torch.Tensor or iterable of batches
            Inputs ``(n, *input_shape)`` (see :meth:`predict`).

        Returns
        -------
        torch.Tensor
            ``(n, T)`` float64 on the CPU, one column per learned task; rows sum to 1.
        """
        def scores(batch: torch.Tensor) -> torch.Tensor:
            p = route(self.recognizer_, self.subnetworks(), batch, stop_early=False, heads=False).p
            return torch.from_numpy(task_posterior(p, self._prior(batch)))

        return self._per_batch(x, scores)

    def route(self, x: torch.Tensor, *, stop_early: bool = True, heads: bool = True, novel: bool = False,
              reject: bool = False) -> Route:
        """The detector chain's answer for one tensor of inputs, on the learner's device (the verbs above are
        built on it).

        Parameters
        ----------
        x : torch.Tensor
            Inputs ``(n, *input_shape)``.
        stop_early : bool, default True
            Stop the chain for a row once its task is certain (the same answers, fewer passes).
        heads : bool, default True
            Also answer each row's class from its task's head.
        novel : bool, default False
            Also answer each row's novelty score (``recognizer="gaussian"``).
        reject : bool, default False
            Answer -1 for rows of no learned task (see :func:`rerelrp.recognize.route`).

        Returns
        -------
        rerelrp.recognize.Route
            Probabilities ``(n, T-1)`` (NaN where the chain stopped early for a row), task ``(n,)``, class ``(n,)``
            (with ``heads``), novelty score ``(n,)`` (with ``novel``).
        """
        if novel or reject:
            self._check_novelty()
        with self._turn():
            return self._route(self._check_x(x), stop_early=stop_early, heads=heads, novel=novel, reject=reject)

    def task_logits(self, x: Batches, task_id: int) -> torch.Tensor:
        """Logits of one task's classes through its subnetwork.

        Parameters
        ----------
        x : torch.Tensor or iterable of batches
            Inputs ``(n, *input_shape)`` (see :meth:`predict`).
        task_id : int
            The task, a position in ``tasks_``.

        Returns
        -------
        torch.Tensor
            ``(n, len(tasks_[task_id]))`` float logits, columns in the order of ``tasks_[task_id]``, on the CPU.
        """
        self._check_fitted()
        m = self._check_task_id(task_id)
        return self._per_batch(x, lambda b: self.subnetworks().logits(b, self.tasks_[m], self.masks_[m]))

    def explain(self, x: Batches) -> torch.Tensor:
        """Input relevance (LRP) of each input's predicted class, through the subnetwork of the task it is
        recognized as. The first layer's ZBox rule is bounded by ``input_range_``, so an input's heatmap does not depend
        on the batch it comes in.

        Parameters
        ----------
        x : torch.Tensor or iterable of batches
            Inputs ``(n, *input_shape)`` (see :meth:`predict`).

        Returns
        -------
        torch.Tensor
            Relevance, the same shape as ``x`` (``(n, *input_shape)``), on the CPU: positive where the input spoke for
            the predicted class.
        """
        return self._per_batch(x, self._explain_batch)

    def _explain_batch(self, x: torch.Tensor) -> torch.Tensor:
        answer = self._route(x)
        composite = self.composite_
        if composite is None and self.input_range_ is not None:
            composite = input_composite(self.units_, *self.input_range_)
        heatmap = torch.zeros_like(x)
        for m in answer.task.unique().tolist():
            rows = (answer.task == m).nonzero()[:, 0]
            heatmap[rows] = lrp(self._net, self.units_, x[rows], self.tasks_[m], target=answer.predictions[rows],
                                keep=self.masks_[m], composite=composite, batch_size=self.batch_size,
                                with_input=True).input
        return heatmap

    def free_capacity(self) -> dict:
        """Fraction of units kept by no finished task.

        Returns
        -------
        dict
            ``{"overall": float, "per_layer": {layer name: float}}``, fractions in [0, 1].
        """
        self._check_fitted()
        return capacity.free_capacity(self.units_, self.masks_)

    def capacity_report(self) -> list[dict]:
        """What each task kept of each unit layer (:func:`rerelrp.capacity.capacity_report`).

        Returns
        -------
        list of dict
            One dict per task and unit layer: ``task``, ``layer``, ``units`` (the layer's width then), ``grown`` (units
            added before the task), ``kept``, ``new``, ``reused`` and ``free`` (units).
        """
        self._check_fitted()
        return capacity.capacity_report(self.units_, self.masks_, self.growth_)

    def summary(self) -> str:
        """What the learner decided for each task, one line each (:func:`rerelrp.capacity.summary`).

        Returns
        -------
        str
            Per task: its classes, per unit layer the units it kept (of them new) against its budget, the units growth
            added before it and those free after it, and its pruning's validation accuracy against the unpruned
            network's; then the budget, the growth and the parameters as a multiple of the initial ones, the detector
            space, features and folded tasks (``later_tasks``), the input space (``input_weight``), and every warning
            (``warnings_``).
        """
        self._check_fitted()
        budget = f"n_tasks={self.n_tasks}" if self.n_tasks is not None else \
            f"open-ended (n_tasks=None: at most {capacity.OPEN_SHARE:.0%} of the free units per task)"
        said = [f"task {t} [{kind}]: {text}" for t, kind, text in self.warnings_]
        return "\n".join([
            capacity.summary(self.capacity_report(), self.prune_results_, self.tasks_),
            f"budget: {budget}; grow={self.grow!r} -> {self.grow_}; parameters "
            f"{self.parameter_growth():.2f}x the initial ones",
            f"detectors: recognizer={self.recognizer!r}, detector_space={self.detector_space!r} -> "
            f"{self.detector_space_!r}, n_features={self.n_features!r} -> {self.recognizer_.memory.widths} per "
            "detector" + ("" if self.recognizer != "gaussian" else f"; later_tasks={self.later_tasks!r}: tasks "
                          f"folded per detector {self.recognizer_.memory.folded}"),
            "input space: " + ("none (input_weight=0 at the first task)" if self.input_recognizer_ is None else
                               f"{self.input_recognizer_.memory.widths[0]} features, input_filters="
                               f"{self.input_recognizer_.kind!r}, input_weight={self.input_weight!r}"),
            f"warnings: {len(said)}" + "".join("\n  " + line for line in said)])

    def parameter_growth(self) -> float:
        """Parameter entries of the model now as a multiple of before the first task.

        Returns
        -------
        float
            1.0 when the model has not grown.
        """
        self._check_fitted()
        return growth.n_parameters(self._net) / self.initial_parameters_

    def subnetworks(self) -> Subnetworks:
        """The learned tasks' subnetworks, bound to the model.

        Returns
        -------
        rerelrp.subnetworks.Subnetworks
            A view of S_0..S_T-1 that runs inputs through any union of them.
        """
        return Subnetworks(self._net, self.units_, self.masks_, self.tasks_, self.batch_size, self.composite_)

    memory_ = property(lambda self: self.recognizer_.memory, doc="What the recognizer keeps of past tasks.")
    novelty_memory_ = property(lambda self: getattr(self.recognizer_, "low", None),
                               doc="The first-layer statistics of the unknown answer (None without it).")

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything needed to predict and to go on learning, built from the components' own states.

        Returns
        -------
        dict
            ``{"meta": JSON values, "tensors": {name: CPU tensor}, "estimators": {name: scikit-learn object}}``
            (:mod:`rerelrp.persist` writes it to a file). Options that cannot be stored safely (a custom optimizer
            factory or zennit composite) are marked :data:`rerelrp.options.UNSAVED`.
        """
        self._check_fitted()
        recognizer, tensors, estimators = self.recognizer_.state_dict()
        input_memory = None
        if self.input_recognizer_ is not None:
            input_memory, input_tensors = self.input_recognizer_.state_dict()
            tensors.update(input_tensors)
        tensors.update({f"model.{k}": v.detach().cpu().contiguous() for k, v in self._net.state_dict().items()})
        tensors.update({f"mask.{t}.{i}": mask.cpu().contiguous()
                        for t, keep in enumerate(self.masks_) for i, mask in enumerate(keep)})
        tensors.update({f"frozen.{k}": v for k, v in self.frozen_.state_dict(self._net).items()})
        tensors.update({f"novelty.{t}": torch.from_numpy(np.ascontiguousarray(q, np.float64))
                        for t, q in enumerate(self.novelty_quantiles_)})
        saved = options.encode({k: v for k, v in self.get_params(deep=False).items() if k != "model"})
        if self.detector is not None:  # deep=False: a detector's own parameters, as 'detector__C', are not options
            estimators["detector"] = self.detector
        meta = {"architecture": architecture.architecture(self._net), "options": saved, "tasks": self.tasks_,
                "input_shape": list(self.input_shape_),
                "input_range": None if self.input_range_ is None else list(self.input_range_),
                "fit_times": self.fit_times_, "n_features": recognizer.pop("n_features"),
                "widths": {layer.name: layer.n_units for layer in self.units_.layers}, "growth": self.growth_,
                "warnings": [list(w) for w in self.warnings_], "detector_space": self.detector_space_,
                "initial_sizes": self.initial_sizes_, "initial_parameters": self.initial_parameters_,
                "prune_results": [r.to_dict() for r in self.prune_results_], **recognizer,
                "modules": architecture.modules(self._net)}
        if input_memory is not None:
            meta["input_memory"] = input_memory
        return {"meta": meta, "tensors": tensors, "estimators": estimators}

    def load_state_dict(self, state: dict) -> "ReReLRP":
        """Become the learner :meth:`state_dict` described, around ``model`` (same architecture, or the widths it
        had before it grew; its weights are overwritten). The state's description is checked against its tensors before
        the model is grown (:func:`rerelrp.architecture.check_saved`); a refused state leaves the model's widths and
        weights as they were.

        Parameters
        ----------
        state : dict
            What :meth:`state_dict` returned.

        Returns
        -------
        ReReLRP
            ``self``.

        Raises
        ------
        ValueError
            (or KeyError, IndexError, TypeError for missing or malformed entries) naming what does not fit: tasks that
            are not disjoint sets of output rows, masks of the wrong type or length, units or head rows of learned tasks
            left unfrozen, non-finite weights, memory or calibration.
        """
        ownership.check(self._net, self, "load a state into it (its weights would be overwritten)")
        architecture.check_saved(state["meta"], state["tensors"])
        before = growth.snapshot(self._net)
        try:
            return self._load_state(state)
        except BaseException:
            growth.restore(self._net, before)
            raise

    def _load_state(self, state: dict) -> "ReReLRP":
        meta, tensors = state["meta"], state["tensors"]
        architecture.widen_to_saved(self._net, meta["widths"], meta.get("growth"), meta.get("initial_sizes"))
        architecture.check(meta["architecture"], self._net, "the state", meta.get("modules"))
        self._net.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        self._start()
        self.tasks_ = capacity.check_tasks(meta["tasks"], self.units_.output.out_features)
        self.masks_ = [[tensors[f"mask.{t}.{i}"].to(self.device_) for i in range(len(self.units_.layers))]
                       for t in range(len(self.tasks_))]
        capacity.check_masks(self.masks_, self.units_.sizes)
        self.frozen_.load_state_dict({k[len("frozen."):]: v for k, v in tensors.items() if k.startswith("frozen.")},
                                     self._net)
        self.frozen_.check_covers(capacity.kept_by(self.masks_, self.units_.sizes),
                                  [c for classes in self.tasks_ for c in classes], self._net)
        for name, value in self._net.state_dict().items():
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise ValueError(f"tensors.safetensors holds NaN or Inf in model.{name}")
        self.recognizer_.load_state_dict(meta, tensors, state["estimators"], self.tasks_, self.units_)
        self.input_shape_ = tuple(meta["input_shape"])
        if meta.get("input_memory") is not None:  # kept with input_weight > 0 at the first task
            self.input_recognizer_ = InputRecognizer(random_state=self.random_state)  # its kind is in the index
            self.input_recognizer_.load_state_dict(meta["input_memory"], tensors, self.tasks_, self.input_shape_)
            if self.input_recognizer_.kind != self.input_filters:
                raise ValueError(f"input_filters={self.input_filters!r}, but meta.json holds input statistics of "
                                 f"{self.input_recognizer_.kind} filters: load it with "
                                 f"input_filters={self.input_recognizer_.kind!r}")
        elif self.input_weight > 0:
            raise ValueError(f"input_weight={self.input_weight}, but meta.json holds no input statistics (the learner "
                             "was saved with input_weight=0): load it with input_weight=0")
        self.novelty_quantiles_ = novelty.check_quantiles(
            [tensors[f"novelty.{t}"].numpy() for t in range(len(self.tasks_))] if meta.get("novelty_memory") else [])
        self.input_range_ = tuple(meta["input_range"]) if meta.get("input_range") else None  # saved before it was kept
        self.prune_results_ = [PruneResult.from_dict(r, keep) for r, keep in zip(meta["prune_results"], self.masks_)]
        self.fit_times_ = meta["fit_times"]
        self.growth_ = meta.get("growth") or [[0] * len(self.units_.layers) for _ in self.tasks_]
        self.warnings_ = [(int(t), str(kind), str(text)) for t, kind, text in meta.get("warnings", [])]
        self.initial_sizes_ = meta.get("initial_sizes") or self.units_.sizes
        self.initial_parameters_ = meta.get("initial_parameters") or self.initial_parameters_
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state_dict` to one zip file, atomically (:func:`rerelrp.persist.write`). In a process
        group, rank 0 writes and every rank waits for it.

        Parameters
        ----------
        path : str or os.PathLike
            Where to write; an existing file is replaced only once the new one is complete.

        Returns
        -------
        pathlib.Path
            The path written.
        """
        if getattr(self, "_open_task", None) is not None:
            raise RuntimeError(f"task {self._open_task} is still being trained: save after its training() context")
        if not is_distributed():
            with model_lock(self._net):
                return persist.write(path, **self.state_dict())
        written = persist.write(path, **self.state_dict()) if is_rank0() else Path(path)  # rank 0 writes once
        torch.distributed.barrier()
        return written

    def set_params(self, **params) -> "ReReLRP":
        """Set options as scikit-learn's ``set_params`` does, validated at once (:func:`rerelrp.options.validate`).
        Once a task is learned, ``model``, ``device``, ``recognizer`` and ``detector_space`` cannot change (the masks,
        freeze masks and memory belong to them): save and ``rerelrp.load`` with ``device=...`` to move a learner.
        ``input_weight`` can change only where the first task kept input statistics (it was above 0 then).

        Parameters
        ----------
        **params
            Options of :class:`ReReLRP` by name.

        Returns
        -------
        ReReLRP
            ``self``.

        Raises
        ------
        rerelrp.InvalidParameterError
            (a ``ValueError`` and a ``TypeError``) naming an invalid value; every option is then left as it was.
        """
        previous = self.get_params(deep=False)
        # the given options alone, model and device against their values before this call (nothing else records
        # them); a nested estimator's own parameters ('detector__C') are scikit-learn's to check
        options.validate({k: v for k, v in params.items() if "__" not in k},
                         fitted={k: previous[k] for k in ("model", "device")} if hasattr(self, "tasks_") else None)
        try:
            super().set_params(**params)
            self._check_params()  # all options together: the rules between them, and the fitted ones
        except BaseException:
            super().set_params(**previous)
            raise
        return self

    def _check_params(self) -> None:
        """Validate every option (:func:`rerelrp.options.validate`); once a task is learned, ``recognizer``,
        ``detector_space`` and ``composite`` against those the memory and the masks were built with, and
        ``input_weight`` stays 0 where no input statistics were kept, and ``input_filters`` stays what the first task's
        input statistics were kept with."""
        fitted, params = None, self.get_params(deep=False)
        if hasattr(self, "recognizer_"):
            fitted = {"recognizer": "gaussian" if isinstance(self.recognizer_, GaussianRecognizer) else "paper",
                      "detector_space": self.detector_space_, "composite": self.composite_}
            if self.input_recognizer_ is None:
                fitted["input_weight"] = 0.0
            else:
                fitted["input_filters"] = self.input_recognizer_.kind
            options.validate(params)  # "auto" is compared as what it resolves to, once it is a valid option
            params["detector_space"] = self._resolved_space(params["detector_space"])
        options.validate(params, fitted=fitted)

    # ------------------------------------------------------------------ internals
    @property
    def _retrain_epochs(self) -> int:
        """Epochs of retraining after each pruning round: ``retrain_epochs``, or a tenth of ``epochs`` (>= 1)."""
        return max(1, self.epochs // 10) if self.retrain_epochs is None else self.retrain_epochs

    @property
    def _net(self) -> nn.Module:
        """The network rerelrp reads: ``model``, or the module a DistributedDataParallel ``model`` wraps."""
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model

    def _start(self) -> None:
        if isinstance(self.model, nn.DataParallel):
            raise TypeError("torch.nn.DataParallel is not supported (its replicas would each need the masks and hooks): "
                            "use torch.nn.parallel.DistributedDataParallel, one process per device")
        ownership.check(self._net, self)  # another learner's frozen units: refused before anything is set
        self.units_ = find_units(self._net)
        self.initial_sizes_ = self.units_.sizes
        self.initial_parameters_ = growth.n_parameters(self._net)
        self.device_ = torch.device(self.device) if self.device is not None else next(self._net.parameters()).device
        self._net.to(self.device_)
        self.composite_ = self.composite
        self._growth_paths = growth.growth_paths(self._net, self.units_)  # traced before any forward
        self.grow_ = growth.resolve(self.grow, self._growth_paths, isinstance(self.model, DistributedDataParallel))[0]
        self.detector_space_ = self._resolved_space(self.detector_space)
        self.frozen_ = FrozenParameters(self.units_)
        self.recognizer_ = make_recognizer(self.recognizer, self.detector_space_, self.n_features, self.n_components,
                                           self.detector, self.random_state)
        self.input_recognizer_ = InputRecognizer(self.input_filters, self.random_state) if self.input_weight > 0 \
            else None
        self.tasks_: list[list[int]] = []
        self.masks_: list[list[torch.Tensor]] = []
        self.prune_results_: list[PruneResult] = []
        self.fit_times_: list[dict[str, float]] = []
        self.growth_: list[list[int]] = []
        self.warnings_: list[tuple[int, str, str]] = []
        self.novelty_quantiles_: list[np.ndarray] = []
        ownership.claim(self._net, self)  # last: the learner owns its model from now on

    def _resolved_space(self, option: str) -> str:
        """The detector space ``option`` names for this model (:func:`rerelrp.spaces.resolve`)."""
        reader = getattr(self._growth_paths[self.units_.layers[-1].name], "reader", None)
        return spaces.resolve(option, self.recognizer, self.units_, reader)

    def _check_fitted(self) -> None:
        if not getattr(self, "tasks_", None):
            raise NotFittedError("this ReReLRP learner has learned no task yet: call fit_task first")

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` checked, on the learner's device, in the dtype of the model's parameters (float64 or float16
        inputs are converted, as scikit-learn converts arrays)."""
        self._check_fitted()
        check_input(x, self.input_shape_)
        return x.to(self.device_, next(self._net.parameters()).dtype)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """This thread's turn on the model: the masks are hooks on the shared modules."""
        with model_lock(self._net), TRACE_LOCK.shared():
            yield

    def _per_batch(self, x: Batches, answer) -> torch.Tensor:
        """``answer`` of the checked tensor ``x``, or of each batch of an iterable ``x``, concatenated on the CPU."""
        def locked(batch: torch.Tensor) -> torch.Tensor:
            with self._turn():
                return answer(self._check_x(batch)).cpu()

        if isinstance(x, torch.Tensor) or not isinstance(x, Iterable) or isinstance(x, np.ndarray):
            return locked(x)  # a tensor, or something _check_x names as not one
        answers = [locked(_batch_input(batch)) for batch in x]
        if not answers:
            raise ValueError("x yielded no batch: pass a tensor (n, *input_shape) or a non-empty iterable of batches")
        return torch.cat(answers)

    def _check_task_id(self, task_id: int) -> int:
        if isinstance(task_id, bool) or not isinstance(task_id, (int, np.integer)) \
                or not 0 <= task_id < len(self.tasks_):
            raise ValueError(f"task_id must be None or an int in [0, {len(self.tasks_) - 1}], got {task_id!r}")
        return int(task_id)

    def _check_novelty(self) -> None:
        self._check_fitted()
        self._check_params()  # known_fraction may have been set since the last task
        if not self.recognizer_.supports_unknown:
            raise ValueError(f"the unknown answer (score_samples, reject=True) needs recognizer='gaussian', whose "
                             f"detectors are densities; this learner has recognizer={self.recognizer!r}")
        if len(self.novelty_quantiles_) != len(self.tasks_):
            raise ValueError("this learner has no calibration of the unknown answer for its tasks (saved by a rerelrp "
                             "without it): learn its tasks again to use score_samples or reject=True")

    def _known(self, x: torch.Tensor, m: int) -> torch.Tensor:
        """Task-aware classes ``(n,)`` of task m, -1 where an input is not typical of task m."""
        own, low, conf, classes = self.recognizer_.measures(self.subnetworks(), x, m)
        _, known = novelty.judge(own, low, conf, np.full(len(x), m), self.novelty_quantiles_, self.known_fraction)
        return torch.where(torch.as_tensor(known, device=x.device), classes, torch.full_like(classes, -1))

    def _route(self, x: torch.Tensor, stop_early: bool = True, heads: bool = True, novel: bool = False,
               reject: bool = False) -> Route:
        return route(self.recognizer_, self.subnetworks(), x, stop_early=stop_early, heads=heads,
                     novel=novel or reject, quantiles=self.novelty_quantiles_,
                     known_fraction=self.known_fraction if reject else None, prior=self._prior(x))

    def _prior(self, x: torch.Tensor) -> np.ndarray | None:
        """The log prior ``(n, T)`` the input recognizer adds to the chain's log task scores (None without it, and
        with one task, where there is nothing to recognize)."""
        if self.input_recognizer_ is None or not self.input_weight or len(self.tasks_) < 2:
            return None
        return self.input_weight * self.input_recognizer_.log_posterior(x)


def _batch_input(batch) -> torch.Tensor:
    """The input of one batch of an iterable: the batch itself, or the first element of a tuple or list."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"each batch must be a tensor, or a tuple/list whose first element is the input tensor; "
                        f"got {type(batch).__name__}")
    return batch


@contextlib.contextmanager
def _timed(times: dict[str, float], stage: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        times[stage] += time.perf_counter() - start
