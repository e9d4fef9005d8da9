"""The ReReLRP learner: one shared network, one unit mask and one head per task.

``fit_task`` runs the method's stages in order (see METHOD.md):
grow (with ``grow``) -> train -> reference set -> relevance -> prune -> retrain -> freeze -> capacity -> remember ->
recognize -> calibrate (the unknown answer, :mod:`rerelrp.novelty`).
Relevance, pruning and retraining repeat for ``prune_rounds`` rounds (PackNet's prune-then-retrain, in
CPG's gradual steps), within the task's share of the free units (:mod:`rerelrp.capacity`).
Prediction without a task id reads each detector's features (by default the
activations of the subnetworks S_0..S_m together, one forward pass each; with
``recognizer="paper"`` the relevance of S_m, one LRP pass each), asks the
detector chain which task the input belongs to (stopping for an input once its
task is certain), and reads the class from that task's subnetwork and head.
"""
from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence, Union

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from zennit.core import Composite

from . import capacity, grow, novelty
from .data import check_input, prepare_task
from .dataflow import TRACE_LOCK
from .distributed import agree, from_rank0, is_distributed, is_rank0
from .freeze import FrozenParameters
from .network import (eval_mode, find_units, layer_outputs, masked, model_lock, position_grid, position_mean,
                      position_spread)
from .prune import PruneResult, drop_measure, prune_to_threshold, unit_scores
from .recognize import (DETECTOR_SPACES, RECOGNIZERS, GaussianRecognizer, TaskRecognizer, chain_scores, decided,
                        default_detector)
from .relevance import input_composite, lrp, normalize_units
from .remember import ActivationStatistics, RelevanceMemory
from .train import OptimizerFactory, TaskTraining, batchnorm_frozen, train_task

__all__ = ["ReReLRP"]

#: Inputs a prediction accepts: one tensor ``(n, *input_shape)``, or an iterable of batches (a DataLoader).
Batches = Union[torch.Tensor, Iterable]

STAGES = ("data", "grow", "train", "relevance", "prune", "retrain", "freeze", "remember", "recognize", "calibrate")
#: Fitted lists that grow by one entry per task.
_GROWING = ("tasks_", "masks_", "prune_results_", "fit_times_", "growth_", "novelty_quantiles_")


class ReReLRP(BaseEstimator):
    """Replay-free class-incremental learner that remembers and recognizes tasks with LRP.

    Parameters
    ----------
    model: classifier of Linear/Conv2d/activation/pooling(/BatchNorm) modules,
        activations as modules, registered in forward order; its last
        ``nn.Linear`` is the output layer with one row per global class id.
    epochs: training epochs per task.
    lr: learning rate.
    optimizer: factory ``(params, lr=...) -> torch.optim.Optimizer``
        (default ``torch.optim.Adam``; e.g. ``functools.partial(torch.optim.SGD, momentum=0.9)``).
    acc_drop: pruning threshold, in percentage points of validation accuracy.
    drop_confidence: one-sided confidence in [0.5, 1) at which a pruning must be shown to cost more than
        ``acc_drop`` points to be refused (a paired test on the validation images, see
        :func:`rerelrp.prune.paired_drop`); 0.5 compares the raw accuracies, as the paper does.
    drop_measure: what the threshold compares per validation image: ``"accuracy"`` (answered right, the paper's),
        ``"probability"`` (the probability of the true class, which a few hundred images measure with far less
        noise) or ``"auto"``: accuracy where ``acc_drop`` points of the task's validation images are at least 20
        images, probability below (:func:`rerelrp.prune.drop_measure`).
    min_keep: fraction of every unit layer, its most relevant units, that each task keeps whatever
        the accuracy (see :func:`rerelrp.prune.prune_to_threshold`); 0 is the paper's pruning.
    prune_rounds: rounds of relevance, pruning and retraining per task (1 with ``retrain_epochs=0``: the
        paper's single pruning).
    retrain_epochs: epochs that retrain the task's surviving free units after each pruning round, the pruned
        ones switched off (default None: a tenth of ``epochs``, at least 1; 0: no retraining).
    reset_free: re-initialise the units kept by no task before each task after the first
        (:func:`rerelrp.capacity.reset_free_units`); False: they start from the weights the earlier tasks left.
    n_tasks: how many tasks the stream will have, if known: each task then keeps at most its share of each
        layer's free units, ``free // (tasks left + 1)`` (:func:`rerelrp.capacity.task_budget`), and the capacity
        forecast warns when a layer will not last until the last task. None: no budget.
    grow: fraction of each unit layer's initial width that every task after the first finds free: a layer with
        fewer free units first grows by new units that no old subnetwork reads (:mod:`rerelrp.grow`; old
        subnetworks unchanged). 0 (default): the network never grows. A layer whose output forward does not pass
        straight to one Linear or Conv2d (a residual sum, a fixed-size reshape) cannot grow, and a warning names it.
        Not with DistributedDataParallel (its buckets hold the parameters' shapes).
    known_fraction: with ``recognizer="gaussian"``, the share of each task's validation inputs that
        ``predict(x, reject=True)`` accepts as known (:mod:`rerelrp.novelty`); the rest of the inputs below that
        task's calibrated typicality are answered -1.
    n_reference: reference samples per class for the relevance that ranks units (paper: 132; 500
        gave 4 points more task-agnostic accuracy on Split MNIST validation data, 0.874 against 0.832).
    n_features: units (or principal components) each task detector reads (paper: 40). The side memory grows with
        its square: on 20 ten-class Permuted MNIST tasks 16 kept 2.0 MiB against 48's 10.0 MiB, at 99.5 % task
        recognition against 99.97 %; on Split MNIST 32 recognized 0.6 points worse than 48 (README).
    n_components: with ``recognizer="gaussian"``, the most Gaussian mixture components per class (the number is
        chosen by BIC per class; see :class:`rerelrp.remember.ClassStatistics`). 4 recognized Split MNIST
        validation data 1 point better than 1 (97.4 % against 96.4 %, 2 seeds).
    detector_space: with ``recognizer="gaussian"``, what detector m reads through S_0..S_m: ``"units"`` (default),
        the ``n_features`` units of the last hidden unit layer that vary most on task m's data; ``"head"``, the
        ``n_features`` principal components, on task m's data, of the vector the output layer reads. Use ``"head"``
        for residual networks (ResNet), whose last hidden unit layer is a convolution before the block's residual
        addition: on ResNet-18 its outputs through PneumoniaMNIST's subnetwork varied along about two directions,
        and the medical stream's tasks were recognized at 59 % (README, Results). ``"layers"``: the ``n_features``
        principal components, on task m's data, of every unit layer's outputs together (the first layer's channel
        means and spreads over positions, every later convolution's channel means over a 2 x 2 grid of positions,
        dense layers as they are), each column scaled to unit variance there. On Split MNIST with the small CNN
        it recognized tasks 0.4-1.0 points better than ``"units"`` in four class orders (README, Recognition), at
        1.6-2 times the bytes (about one 200-image replay buffer at T = 5: its first detectors read ``n_features``
        components where the default's read the few units task 0 keeps, and each keeps its axes); the axes grow
        with the width of every layer, which makes it costly for wide networks.
    recognizer: ``"gaussian"`` (default): class-conditional Gaussian mixtures of activations through
        S_0..S_m (:class:`rerelrp.recognize.GaussianRecognizer`); ``"paper"``: the paper's forests on
        relevance vectors (:class:`rerelrp.recognize.TaskRecognizer`).
    val_fraction: share of a task held out for pruning when no ``val_loader`` is given.
    composite: zennit composite for LRP (default: EpsilonPlusFlat's rules with the model's canonizers; see
        :func:`rerelrp.relevance.lrp`).
    detector: with ``recognizer="paper"``, an unfitted scikit-learn classifier for the detector chain
        (default: a RandomForestClassifier of 100 trees of depth 12, see
        :func:`rerelrp.recognize.default_detector`).
    batch_size: samples per pass during relevance, pruning and prediction.
    device: where to train and predict (default: where the model's parameters are).
    random_state: seed of splits, reference draws, training shuffles and detectors.
    progress: show tqdm progress bars.

    Attributes
    ----------
    tasks_: list of the sorted class ids of each learned task.
    masks_: per task, one bool tensor ``(n_units,)`` per unit layer: the kept units of S_t.
    prune_results_: per task, the :class:`rerelrp.prune.PruneResult` of its last pruning round (``accuracy``:
        after retraining).
    fit_times_: per task, seconds spent in each stage of ``fit_task``.
    novelty_quantiles_: per task, :func:`rerelrp.novelty.calibrate`'s ``(4, 101)`` quantiles of its validation
        inputs' log-likelihoods (own detector space; first layer's statistics), head confidence and typicality
        (empty with ``recognizer="paper"``).
    novelty_memory_: the first unit layer's statistics per task and class (:class:`rerelrp.novelty.LowLevelStatistics`;
        None with ``recognizer="paper"``).
    growth_: per task, the units added to each unit layer before it (all 0 without ``grow``).
    initial_sizes_: units per unit layer before the first task; ``initial_parameters_``: parameter entries then
        (see :meth:`parameter_growth`).
    memory_: what is kept of past data: :class:`rerelrp.remember.ActivationStatistics`, or
        :class:`rerelrp.remember.RelevanceMemory` with ``recognizer="paper"``.
    detector_space_: the ``detector_space`` the memory was built in (fixed by the first task).
    recognizer_: the detector chain: :class:`rerelrp.recognize.GaussianRecognizer`, or
        :class:`rerelrp.recognize.TaskRecognizer` with ``recognizer="paper"``.
    input_shape_: shape of one input, without the batch dimension.
    input_range_: ``(low, high)``, the smallest and largest input value of the training data so far: the
        bounds of the first layer's ZBox rule in :meth:`explain` (None for a learner saved before it existed,
        which bounds each call by its inputs' range).
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
        grow: float = 0.0,
        known_fraction: float = 0.95,
        n_reference: int = 500,
        n_features: int = 48,
        n_components: int = 4,
        detector_space: str = "units",
        recognizer: str = "gaussian",
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
        self.detector_space = detector_space
        self.recognizer = recognizer
        self.val_fraction = val_fraction
        self.composite = composite
        self.detector = detector
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.progress = progress

    # ------------------------------------------------------------------ learning
    def fit_task(self, loader: DataLoader, val_loader: Iterable | None = None) -> "ReReLRP":
        """Learn one more task from ``loader`` (batches ``(x, y)``, ``y`` global class ids) in rerelrp's own loop:
        ``epochs`` passes of ``optimizer`` at ``lr`` over the task's head, inside :meth:`training`.

        ``val_loader``: the task's validation data for the pruning threshold;
        None holds out a stratified ``val_fraction`` of ``loader``'s dataset.
        Returns ``self``.
        """
        with self.training(loader, val_loader) as task, torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(task.seed)
            train_task(self.model, task.loader, task.classes, epochs=self.epochs, lr=self.lr,
                       optimizer=self.optimizer, device=self.device_, progress=self.progress,
                       description=f"task {task.index} train")
        return self

    @contextlib.contextmanager
    def training(self, loader: DataLoader, val_loader: Iterable | None = None) -> Iterator[TaskTraining]:
        """Learn one more task in your own training loop, run inside this context.

        On entry the task's data is read and checked (as by :meth:`fit_task`) and a :class:`TaskTraining` is
        returned: its ``classes``, the ``loader`` to train on (``loader`` itself, with its own sampler, when a
        ``val_loader`` is given; else the training share) and ``loss(logits, y)``, the cross-entropy over the
        task's head. Inside, any optimizer that steps the model's parameters leaves frozen entries bit-identical,
        and after the first task BatchNorm statistics stay fixed even under ``model.train()``. On leaving the
        context normally the method's other stages run (reference set, relevance, pruning, freezing, memory,
        detectors); the retraining between pruning rounds runs in rerelrp's own loop over the task's ``loader``
        (``optimizer``, ``lr``, ``retrain_epochs``): ``retrain_epochs=0`` keeps every optimizer step in yours. If the
        loop or a stage raises, or is interrupted, the learner and the model's parameters and buffers are put back
        as they were before the task, and the error propagates. With ``grow``, the model may grow on entry: build
        the optimizer inside the context, over the parameters as they are then.
        """
        self._check_params()
        with model_lock(self._net):  # other threads' calls wait for the task (they would see its hooks)
            if getattr(self, "_open_task", None) is not None:
                raise RuntimeError(f"task {self._open_task} is still being trained: a training() context was entered "
                                   "and not left; leave it (end the with block) before learning another task")
            first = not hasattr(self, "tasks_")
            if first:
                self._start()
            if self.grow > 0 and getattr(self, "_growth_paths", None) is None:  # traced before any forward
                self._growth_paths = grow.growth_paths(self._net, self.units_)
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
        """The stages of METHOD.md around the caller's training (stage 1)."""
        t = len(self.tasks_)
        seed = self.random_state + 1000 * t
        times = dict.fromkeys(STAGES, 0.0)
        with _timed(times, "grow"):
            self._grow(seed)
        if t > 0 and self.free_capacity()["overall"] == 0.0:  # the forecast warned before, unless the stream outgrew n_tasks
            warnings.warn(
                f"capacity exhausted: all {self.units_.total} units are kept by the {t} tasks learned so far, so "
                f"task {t} can train only its own head rows; use a wider model, or a larger acc_drop "
                f"(now {self.acc_drop} points) for the tasks to come, or grow > 0", RuntimeWarning, stacklevel=5)
        with _timed(times, "data"):
            task = prepare_task(
                loader, val_loader, n_outputs=self.units_.output.out_features,
                learned=[c for classes in self.tasks_ for c in classes],
                input_shape=getattr(self, "input_shape_", None), val_fraction=self.val_fraction,
                n_reference=self.n_reference, seed=seed)
            dtype = next(self._net.parameters()).dtype
            if task.train_x.dtype != dtype:
                raise TypeError(f"the task's inputs are {task.train_x.dtype} but the model's parameters are {dtype}: "
                                f"give the loader inputs of {dtype} (e.g. x.to({dtype})), or convert the model")
            if t == 0:
                self._check_model_accepts(task.val_x[:1])
            agree(task.classes, f"the classes of task {t}")
        # 1. Train (the caller's loop) on the task's head, the free units freshly initialised; frozen entries are
        #    restored after every step.
        if t > 0 and self.reset_free:
            capacity.reset_free_units(self.units_, self.masks_, seed)  # the same seed on every rank
        if t > 0:
            self._refresh_free_statistics(task.train_x, seed)
        statistics = batchnorm_frozen(self.units_.batchnorms) if t > 0 else contextlib.nullcontext()
        with _timed(times, "train"), self.frozen_.enforced(self.model), statistics:
            yield TaskTraining(t, tuple(task.classes), task.train, seed)
        diverged = [name for name, p in self._net.named_parameters() if not torch.isfinite(p).all()]
        if diverged:
            raise RuntimeError(f"training of task {t} diverged: {', '.join(diverged[:3])} hold NaN or Inf; the task is "
                               f"not learned and the learner is as before it. Lower lr (now {self.lr}) or scale the "
                               "inputs")
        # 2. Reference set: drawn by prepare_task from the training share.
        ref_x, ref_y = task.ref_x.to(self.device_), task.ref_y.to(self.device_)
        # 3-4. Relevance, pruning and retraining, in rounds.
        result = self._prune(task, ref_x, ref_y, seed, times)
        self.tasks_.append(task.classes)
        self.masks_.append([k.to(self.device_) for k in result.keep])
        self.prune_results_.append(result)
        # 5. Freeze the kept units and the head (and BatchNorm and gates after the first task).
        with _timed(times, "freeze"):
            self.frozen_.freeze_units(result.keep)
            self.frozen_.freeze_head(task.classes)
            if t == 0:
                self.frozen_.freeze_shared()
        # Capacity: warn before a layer runs out, and when the budget cost accuracy.
        for message in self._capacity_warnings(result):
            warnings.warn(message, RuntimeWarning, stacklevel=5)
        # 6-7 run on rank 0 only when distributed, and every rank takes its memory and detectors.
        def remember_and_recognize():
            # 6. Remember: the task's statistics (or its reference samples' relevance) through every subnetwork.
            with _timed(times, "remember"):
                self._remember(task, ref_x)
            # 7. Recognize: rebuild the detector chain.
            with _timed(times, "recognize"):
                self.recognizer_.fit(self.memory_, self.tasks_)
                if self.novelty_memory_ is not None:
                    self.novelty_memory_.fit(self.tasks_)
            # 8. Calibrate the unknown answer on the task's validation inputs.
            with _timed(times, "calibrate"):
                quantiles = self._calibrate(task)
            return self.memory_, self.recognizer_, self.novelty_memory_, quantiles

        self.memory_, self.recognizer_, self.novelty_memory_, quantiles = from_rank0(remember_and_recognize)
        if quantiles is not None:
            self.novelty_quantiles_ = self.novelty_quantiles_ + [quantiles]
        self.input_shape_ = task.input_shape
        low, high = float(task.train_x.min()), float(task.train_x.max())
        previous = getattr(self, "input_range_", None) or (low, high)
        self.input_range_ = (min(previous[0], low), max(previous[1], high))
        self.fit_times_.append(times)

    def _refresh_free_statistics(self, train_x: torch.Tensor, seed: int) -> None:
        """BatchNorm statistics of the free channels from up to 256 of the task's training inputs (drawn from
        ``seed``), measured on rank 0 and taken by every rank (:func:`rerelrp.capacity.refresh_free_statistics`)."""
        norms = [layer.closing for layer in self.units_.layers if layer.closing is not layer.module]
        if not norms:
            return

        def measure():
            rows = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))[:256]
            capacity.refresh_free_statistics(self._net, self.units_, self.masks_, train_x[rows].to(self.device_))
            return [(n.running_mean.clone(), n.running_var.clone()) for n in norms]

        for norm, (mean, var) in zip(norms, from_rank0(measure)):
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)

    def _grow(self, seed: int) -> None:
        """Stage 0 with ``grow``: give every unit layer ``ceil(grow * initial width)`` free units, growing those
        that have fewer (new rows drawn from ``seed``); warns, once per reason, for a layer that cannot grow."""
        t = len(self.tasks_)
        added = [0] * len(self.units_.layers)
        if t > 0 and self.grow > 0:
            frozen = capacity.kept_by(self.masks_, self.units_.sizes)
            needed = grow.units_to_add([len(f) - int(f.sum()) for f in frozen], self.initial_sizes_, self.grow)
            paths = self._growth_paths
            with torch.random.fork_rng(devices=self._rng_devices()):
                torch.manual_seed(seed)
                for i, (layer, n) in enumerate(zip(self.units_.layers, needed)):
                    path = paths.get(layer.name)
                    if isinstance(path, str):
                        warnings.warn(f"unit layer '{layer.name}' cannot grow: {path}. It keeps its width and its "
                                      "free units only", RuntimeWarning, stacklevel=6)
                    elif n:
                        grow.grow_layer(layer.module, path, n, self.frozen_)
                        added[i] = n
            self.masks_ = grow.grow_masks(self.masks_, added)
        self.growth_.append(added)

    def _prune(self, task, ref_x: torch.Tensor, ref_y: torch.Tensor, seed: int, times: dict) -> PruneResult:
        """Stages 3-4 in rounds: relevance of every unit through head t (from the true class's logit, through
        the survivors so far), pruning of free units to the threshold within the task's budget, and
        retraining of the survivors with the pruned units switched off. When distributed, relevance and pruning
        run on rank 0 (the weights agree, so would the result) and retraining on every rank over its own shard."""
        t = len(self.tasks_)
        val_x, val_y = task.val_x.to(self.device_), task.val_y.to(self.device_)
        column = (val_y[:, None] == torch.as_tensor(list(task.classes), device=val_y.device)).int().argmax(1)
        measure = drop_measure(self.drop_measure, len(val_y), self.acc_drop)

        def score(logits: torch.Tensor) -> torch.Tensor:  # per image: answered right, or the true class's probability
            if measure == "probability":
                return logits.softmax(1).gather(1, column[:, None])[:, 0].cpu()
            return (logits.argmax(1) == column).cpu()

        def correct(keep) -> torch.Tensor:
            return score(self._head_logits(val_x, task.classes, keep))

        frozen = capacity.kept_by(self.masks_, self.units_.sizes)
        free_per_layer = [n - int(f.sum()) for n, f in zip(self.units_.sizes, frozen)]
        budget = capacity.task_budget(free_per_layer, t, self.n_tasks)

        def unpruned() -> torch.Tensor:
            logits = self._head_logits(val_x, task.classes, None)
            self._warn_at_chance((logits.argmax(1) == column).cpu(), val_y, sum(free_per_layer))
            return score(logits)

        base = from_rank0(unpruned)
        result = None
        for r in range(self.prune_rounds):
            def prune_round(previous: PruneResult | None = result, first: bool = r == 0) -> PruneResult:
                with _timed(times, "relevance"):
                    rel = lrp(self._net, self.units_, ref_x, task.classes, target=ref_y,
                              keep=None if previous is None else previous.keep, composite=self.composite_,
                              batch_size=self.batch_size)
                with _timed(times, "prune"):
                    return prune_to_threshold(
                        unit_scores(rel.units), self.units_.sizes, correct, self.acc_drop, self.min_keep,
                        frozen=frozen, pruned=None if first else [~k for k in previous.keep], budget=budget,
                        confidence=self.drop_confidence, base=base, measure=measure)

            result = from_rank0(prune_round)
            if self._retrain_epochs:
                with _timed(times, "retrain"):
                    self._retrain(task, result.keep, seed + 1 + r)
        if self._retrain_epochs:
            result.accuracy = from_rank0(lambda: float(correct(result.keep).float().mean()))
        return result

    def _warn_at_chance(self, base: torch.Tensor, val_y: torch.Tensor, free: int) -> None:
        """Warns when ``base``, the unpruned network's per-image correctness ``(n_val,)`` (bool), is no better than
        always answering the task's most frequent class."""
        if not capacity.above_chance(base, val_y):
            warnings.warn(
                f"task {len(self.tasks_)} reached {float(base.float().mean()):.1%} validation accuracy before "
                f"pruning, no better than always answering its most frequent class; {free} of {self.units_.total} "
                "units were free for it. It is learned as it is: to leave later tasks more room, set n_tasks (a "
                "budget per task) or a larger acc_drop from the first task on, or use a wider model or more epochs",
                RuntimeWarning, stacklevel=7)

    def _retrain(self, task, keep: list[torch.Tensor], seed: int) -> None:
        """Train the task again in rerelrp's loop with only the units of ``keep`` on: the survivors of the
        pruning take over the work of the pruned units, which stay free for later tasks (PackNet). Through
        ``model`` as given, so that DistributedDataParallel averages the ranks' gradients as in training."""
        t = len(self.tasks_)
        statistics = batchnorm_frozen(self.units_.batchnorms) if t > 0 else contextlib.nullcontext()
        with self.frozen_.enforced(self.model), statistics, masked(self.units_, keep), \
                torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(seed)
            train_task(self.model, task.train, task.classes, epochs=self._retrain_epochs, lr=self.lr,
                       optimizer=self.optimizer, device=self.device_, progress=self.progress,
                       description=f"task {t} retrain")

    def _capacity_warnings(self, result: PruneResult) -> list[str]:
        t = len(self.tasks_) - 1
        messages = []
        if result.over_threshold:
            measured = "validation accuracy" if result.measure == "accuracy" else \
                "mean validation probability of the true class"
            messages.append(
                f"task {t} needed more than its budget of {sum(result.budget)} free units ({result.budget} per unit "
                f"layer, n_tasks={self.n_tasks}): "
                f"its subnetwork reaches {result.accuracy:.1%} {measured} against {result.base_accuracy:.1%} "
                "unpruned, more than acc_drop below it; a wider model leaves every task more room")
        # with grow, each layer grows before it runs out (or warns that it cannot)
        forecast = None if self.grow > 0 else capacity.running_out(self.units_, self.masks_, self.n_tasks, self.growth_)
        if forecast:
            messages.append(forecast)
        return messages

    def _checkpoint(self) -> dict:
        """What :meth:`_rollback` needs to put the learner and its model back as they are now."""
        return {"model": {k: v.detach().clone() for k, v in self._net.state_dict().items()},
                "data": {k: v.data for k, v in self._net.state_dict(keep_vars=True).items()},
                "learner": {name: copy.copy(getattr(self, name)) for name in _GROWING},
                "frozen": {p: m.clone() for p, m in self.frozen_.masks.items()},
                "memory": copy.deepcopy((self.memory_, self.recognizer_, self.novelty_memory_)),
                "input": (getattr(self, "input_shape_", None), getattr(self, "input_range_", None))}

    def _rollback(self, before: dict, first: bool) -> None:
        with torch.no_grad():
            for key, value in self._net.state_dict(keep_vars=True).items():
                if value.shape != before["model"][key].shape:  # grown by this task: back to the old tensor
                    value.data = before["data"][key]
                value.data.copy_(before["model"][key])
        grow.sync_sizes(*self._net.modules())
        if first:  # back to unfitted
            for name in [n for n in vars(self) if n.endswith("_") and not n.startswith("_")]:
                delattr(self, name)
            return
        for name, value in before["learner"].items():
            setattr(self, name, value)
        self.frozen_.masks = before["frozen"]
        self.memory_, self.recognizer_, self.novelty_memory_ = before["memory"]
        self.input_shape_, self.input_range_ = before["input"]

    # ---------------------------------------------------------------- prediction
    def predict(self, x: Batches, task_id: int | None = None, reject: bool = False) -> torch.Tensor:
        """Global class ids ``(n,)`` for inputs ``x`` of shape ``(n, *input_shape)``.

        ``task_id=None``: task-agnostic (the detector chain picks the task).
        ``task_id=t``: task-aware, the argmax within task t's classes of subnetwork t.
        ``reject=True`` (``recognizer="gaussian"``): -1 for inputs of no learned task: those whose typicality
        under the task they are recognized as (or task ``task_id``; see :meth:`score_samples`) is below the level
        that accepts a ``known_fraction`` of that task's validation inputs (:mod:`rerelrp.novelty`).
        ``x`` may also be a DataLoader or any iterable of batches (tensors, or tuples whose first element is
        the input): it is answered batch by batch, holding one batch at a time, with the answers of the
        concatenated tensor (scores up to floating-point rounding, which depends on the batch size).
        """
        self._check_fitted()
        if task_id is not None:
            task_id = self._check_task_id(task_id)
            if reject:
                self._check_novelty()
                return self._per_batch(x, lambda b: self._predict_known(b, task_id))
            return self._per_batch(x, lambda b: self._predict_head(b, task_id))
        if reject:
            self._check_novelty()
        return self._per_batch(x, lambda b: self._route(b, reject=reject).predictions)

    def predict_task(self, x: Batches, reject: bool = False) -> torch.Tensor:
        """Recognized task index ``(n,)`` of each input: the argmax of :meth:`predict_proba_task`; with ``reject``,
        -1 for inputs that are not typical of the task they are recognized as (see :meth:`predict`).
        ``x``: a tensor or an iterable of batches, as for :meth:`predict`."""
        if reject:
            self._check_novelty()
        return self._per_batch(x, lambda b: self._route(b, heads=False, reject=reject).task)

    def score_samples(self, x: Batches) -> torch.Tensor:
        """Novelty scores ``(n,)`` (float64): how typical each input is of the task it is recognized as, higher =
        more typical (scikit-learn's convention): its log-likelihoods under that task's class mixtures (last hidden
        layer) and under its classes' first-layer statistics, and the confidence of the task's head, each
        standardized on the task's validation inputs and combined (:func:`rerelrp.novelty.typicality`:
        ``z_own + z_conf + min(z_low + 1, 0)``), then standardized again: 0 at
        the median of the task's validation inputs and -1 at their 5 % quantile (:func:`rerelrp.novelty.standardize`),
        so that scores of different tasks compare. No more passes than :meth:`predict`. ``x``: a tensor or an
        iterable of batches, as for :meth:`predict`. Needs ``recognizer="gaussian"``."""
        self._check_novelty()
        return self._per_batch(x, lambda b: torch.from_numpy(self._route(b, heads=False, novel=True).score))

    def predict_proba_task(self, x: Batches) -> torch.Tensor:
        """Chain scores ``(n, T)`` (float64, CPU, like every answer of the learner a CPU tensor), one column
        per learned task; rows sum to 1. ``x``: a tensor or an iterable of batches, as for :meth:`predict`."""
        return self._per_batch(
            x, lambda b: torch.from_numpy(chain_scores(self._route(b, stop_early=False, heads=False).p)))

    def explain(self, x: Batches) -> torch.Tensor:
        """Input relevance, same shape as ``x``, for the predicted class through the recognized task's subnetwork.

        The first layer's ZBox rule is bounded by ``input_range_``, the smallest and largest input value of the
        training data, so an input's heatmap does not depend on the batch it comes in. ``x``: a tensor or an
        iterable of batches, as for :meth:`predict`."""
        return self._per_batch(x, self._explain_batch)

    def _explain_batch(self, x: torch.Tensor) -> torch.Tensor:
        _, task, predictions, _ = self._route(x)
        composite = self.composite_
        if composite is None and self.input_range_ is not None:
            composite = input_composite(self.units_, *self.input_range_)
        heatmap = torch.zeros_like(x)
        for m in task.unique().tolist():
            rows = (task == m).nonzero()[:, 0]
            heatmap[rows] = lrp(self._net, self.units_, x[rows], self.tasks_[m], target=predictions[rows],
                                keep=self.masks_[m], composite=composite, batch_size=self.batch_size,
                                with_input=True).input
        return heatmap

    def free_capacity(self) -> dict:
        """Fraction of units kept by no finished task: ``{"overall": float, "per_layer": {name: float}}``."""
        self._check_fitted()
        return capacity.free_capacity(self.units_, self.masks_)

    def capacity_report(self) -> list[dict]:
        """Per task and unit layer, the layer's width then, the units added before the task, and the units the task
        kept, took new from the free pool, reused, and left free (see :func:`rerelrp.capacity.capacity_report`):
        a list of dicts, one row each."""
        self._check_fitted()
        return capacity.capacity_report(self.units_, self.masks_, self.growth_)

    def parameter_growth(self) -> float:
        """Parameter entries of the model now as a multiple of before the first task (1.0 without ``grow``)."""
        self._check_fitted()
        return grow.n_parameters(self._net) / self.initial_parameters_

    def save(self, path: str | os.PathLike) -> Path:
        """Save everything needed to predict and to go on learning to ``path`` (see :func:`rerelrp.persist.save`).
        In a process group, rank 0 writes and every rank waits for it."""
        from .persist import save

        if getattr(self, "_open_task", None) is not None:
            raise RuntimeError(f"task {self._open_task} is still being trained: save after its training() context")
        if not is_distributed():
            with model_lock(self._net):
                return save(self, path)
        written = save(self, path) if is_rank0() else Path(path)  # every rank holds the same learner: write once
        torch.distributed.barrier()
        return written

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
        self.units_ = find_units(self._net)
        self.initial_sizes_ = self.units_.sizes
        self.initial_parameters_ = grow.n_parameters(self._net)
        self.device_ = torch.device(self.device) if self.device is not None else next(self._net.parameters()).device
        self._net.to(self.device_)
        self.composite_ = self.composite
        self.detector_space_ = self.detector_space
        self.frozen_ = FrozenParameters(self.units_)
        if self.recognizer == "gaussian":
            self.memory_ = ActivationStatistics(self.n_features, self.n_components, self.random_state)
            self.recognizer_ = GaussianRecognizer()
            self.novelty_memory_ = novelty.LowLevelStatistics(self.n_features, self.random_state)
        else:
            self.novelty_memory_ = None
            self.memory_ = RelevanceMemory(self.n_features)
            detector = default_detector() if self.detector is None else self.detector
            self.recognizer_ = TaskRecognizer(detector, random_state=self.random_state)
        self.tasks_: list[list[int]] = []
        self.masks_: list[list[torch.Tensor]] = []
        self.prune_results_: list[PruneResult] = []
        self.fit_times_: list[dict[str, float]] = []
        self.growth_: list[list[int]] = []
        self.novelty_quantiles_: list[np.ndarray] = []

    def set_params(self, **params) -> "ReReLRP":
        """Set options as scikit-learn's ``set_params`` does, validated at once: an invalid value raises
        ``ValueError`` naming it and leaves every option as it was. Once a task is learned, ``model``, ``device`` and
        ``recognizer`` cannot change (the masks, freeze masks and memory belong to them): save and ``rerelrp.load``
        with ``device=...`` to move a learner."""
        if hasattr(self, "tasks_"):
            fixed = [k for k in ("model", "device", "recognizer") if k in params and params[k] is not getattr(self, k)
                     and params[k] != getattr(self, k)]
            if fixed:
                raise ValueError(f"{', '.join(fixed)} cannot change once a task is learned (the masks, freeze masks "
                                 "and memory belong to them); save the learner and rerelrp.load it with the new value")
        previous = self.get_params(deep=False)
        super().set_params(**params)
        try:
            self._check_params()
        except (TypeError, ValueError):
            super().set_params(**previous)
            raise
        return self

    def _check_params(self) -> None:
        numbers = {"lr": self.lr, "acc_drop": self.acc_drop, "drop_confidence": self.drop_confidence,
                   "min_keep": self.min_keep, "val_fraction": self.val_fraction, "grow": self.grow,
                   "known_fraction": self.known_fraction}
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
        if isinstance(self.random_state, bool) or not isinstance(self.random_state, (int, np.integer)):
            raise ValueError(f"random_state must be an int (rerelrp's runs are reproducible by design: every split, "
                             f"draw and shuffle derives from it), got {self.random_state!r}")
        if self.device is not None:
            try:
                device = torch.device(self.device)
            except (RuntimeError, TypeError) as error:
                raise ValueError(f"device must be None or a torch device such as 'cpu' or 'cuda:0', got "
                                 f"{self.device!r}") from error
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"device={self.device!r}, but torch sees no CUDA device here "
                                 f"(torch.cuda.is_available() is False): use device='cpu' or None")
        positive = {"epochs": self.epochs, "n_reference": self.n_reference, "n_features": self.n_features,
                    "n_components": self.n_components, "batch_size": self.batch_size}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.recognizer not in RECOGNIZERS:
            raise ValueError(f"recognizer must be one of {', '.join(map(repr, RECOGNIZERS))}, got {self.recognizer!r}")
        if self.detector_space not in DETECTOR_SPACES:
            raise ValueError(f"detector_space must be one of {', '.join(map(repr, DETECTOR_SPACES))}, "
                             f"got {self.detector_space!r}")
        if self.detector_space != "units" and self.recognizer != "gaussian":
            raise ValueError(f"detector_space={self.detector_space!r} applies to recognizer='gaussian' only; the "
                             "paper's forests read relevance")
        if getattr(self, "tasks_", None) and self.detector_space != self.detector_space_:
            raise ValueError("detector_space cannot change once a task is learned: the earlier tasks' statistics "
                             "live in another space")
        if self.detector is not None and self.recognizer != "paper":
            raise ValueError(f"detector applies to recognizer='paper' only (the forests on relevance vectors); "
                             f"recognizer={self.recognizer!r} takes no detector")
        if hasattr(self, "memory_") and isinstance(self.memory_, ActivationStatistics) != (self.recognizer == "gaussian"):
            raise ValueError("recognizer cannot change once a task is learned: the memory of the earlier tasks "
                             "was kept for the other one")
        if not 0 <= self.min_keep <= 1:
            raise ValueError(f"min_keep must lie in [0, 1] (a fraction of each layer's units), got {self.min_keep!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction!r}")
        if not 0 <= self.acc_drop <= 100:
            raise ValueError(f"acc_drop must lie in [0, 100] percentage points, got {self.acc_drop!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0.5 <= self.drop_confidence < 1:
            raise ValueError(f"drop_confidence must lie in [0.5, 1) (0.5: the raw accuracy difference), "
                             f"got {self.drop_confidence!r}")
        drop_measure(self.drop_measure, 0, self.acc_drop)  # raises for a value it does not accept
        if not isinstance(self.prune_rounds, int) or self.prune_rounds < 1:
            raise ValueError(f"prune_rounds must be a positive int, got {self.prune_rounds!r}")
        if self.retrain_epochs is not None and (not isinstance(self.retrain_epochs, int) or self.retrain_epochs < 0):
            raise ValueError(f"retrain_epochs must be None or an int >= 0, got {self.retrain_epochs!r}")
        if not 0 <= self.grow < 1:
            raise ValueError(f"grow must be a float in [0, 1) (the fraction of each layer's initial width every task "
                             f"finds free; 0: no growth), got {self.grow!r}")
        if self.grow > 0 and isinstance(self.model, DistributedDataParallel):
            raise ValueError("grow > 0 is not supported with DistributedDataParallel, whose gradient buckets hold the "
                             "parameters' shapes: set grow=0, or give the model the width the stream needs")
        if not 0 < self.known_fraction <= 1:
            raise ValueError(f"known_fraction must lie in (0, 1] (the share of each task's validation inputs "
                             f"predict(reject=True) accepts), got {self.known_fraction!r}")
        if self.n_tasks is not None and (not isinstance(self.n_tasks, int) or self.n_tasks < 1):
            raise ValueError(f"n_tasks must be None or a positive int (the tasks the stream will have), "
                             f"got {self.n_tasks!r}")

    def _check_model_accepts(self, x: torch.Tensor) -> None:
        dims: dict[str, int] = {}
        handles = [layer.module.register_forward_hook(
            lambda module, inputs, output, name=layer.name: dims.__setitem__(name, output.dim()))
            for layer in self.units_.layers]
        try:
            with torch.no_grad(), eval_mode(self._net):
                out = self._net(x.to(self.device_))
        except RuntimeError as error:
            raise ValueError(f"the model cannot take inputs of shape (n, {', '.join(map(str, x.shape[1:]))}): "
                             f"{error}") from error
        finally:
            for handle in handles:
                handle.remove()
        for layer in self.units_.layers:
            if isinstance(layer.module, nn.Linear) and dims.get(layer.name, 2) != 2:
                raise TypeError(f"nn.Linear '{layer.name}' is applied to a {dims[layer.name]}-d tensor (e.g. tokens "
                                "(N, T, C)): a unit is one output feature of one input, so a Linear must see (N, "
                                "features); flatten or pool the other axes before it")
        if out.dim() != 2 or out.shape[1] != self.units_.output.out_features:
            raise TypeError(f"the model's output has shape {tuple(out.shape)}; expected (n, "
                            f"{self.units_.output.out_features}) from its last nn.Linear")

    def _rng_devices(self) -> list:
        return [self.device_] if self.device_.type == "cuda" else []

    def _check_fitted(self) -> None:
        if not getattr(self, "tasks_", None):
            raise NotFittedError("this ReReLRP learner has learned no task yet: call fit_task first")

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` checked, on the learner's device, in the dtype of the model's parameters (float64 or float16
        inputs are converted, as scikit-learn converts arrays)."""
        self._check_fitted()
        check_input(x, self.input_shape_)
        return x.to(self.device_, next(self._net.parameters()).dtype)

    def _per_batch(self, x: Batches, answer) -> torch.Tensor:
        """``answer`` of the checked tensor ``x``, or of each batch of an iterable ``x``, concatenated on the CPU."""
        def locked(batch: torch.Tensor) -> torch.Tensor:
            with model_lock(self._net), TRACE_LOCK.shared():  # the masks are hooks on the shared modules
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

    def _predict_known(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Task-aware classes ``(n,)`` of task t, -1 where an input is not typical of task t."""
        quantiles = self.novelty_quantiles_[t]
        own, low, conf, classes = self._novelty_measures(x, t)
        known = torch.as_tensor(novelty.accepted(novelty.typicality(own, low, conf, quantiles), quantiles,
                                                 self.known_fraction), device=x.device)
        return torch.where(known, classes, torch.full_like(classes, -1))

    def _check_novelty(self) -> None:
        self._check_fitted()
        self._check_params()  # known_fraction may have been set since the last task
        if self.recognizer != "gaussian":
            raise ValueError(f"the unknown answer (score_samples, reject=True) needs recognizer='gaussian', whose "
                             f"detectors are densities; this learner has recognizer={self.recognizer!r}")
        if len(self.novelty_quantiles_) != len(self.tasks_):
            raise ValueError("this learner has no calibration of the unknown answer for its tasks (saved by a rerelrp "
                             "without it): learn its tasks again to use score_samples or reject=True")

    def _head_logits(self, x: torch.Tensor, classes: Sequence[int], keep) -> torch.Tensor:
        """Logits ``(n, len(classes))`` of ``classes`` through the subnetwork ``keep``, batch by batch."""
        head = torch.as_tensor(list(classes), device=x.device)
        with torch.no_grad(), eval_mode(self._net), masked(self.units_, keep):
            return torch.cat([self._net(x[i:i + self.batch_size])[:, head] for i in range(0, len(x), self.batch_size)])

    def _predict_head(self, x: torch.Tensor, m: int) -> torch.Tensor:
        """Task-aware answers ``(n,)`` of subnetwork m: global class ids, the argmax within task m's classes."""
        return self._argmax(self._head_logits(x, self.tasks_[m], self.masks_[m]), m)

    def _unit_relevance(self, x: torch.Tensor, m: int) -> torch.Tensor:
        """Normalised unit relevance ``(n, total_units)`` of S_m, from its predicted classes."""
        rel = lrp(self._net, self.units_, x, self.tasks_[m], keep=self.masks_[m], composite=self.composite_,
                  batch_size=self.batch_size)
        return normalize_units(rel.units)

    def _union(self, m: int) -> list[torch.Tensor]:
        """Masks of the units kept by any of the tasks 0..m: frozen from task m on, so their outputs never change."""
        return [u.to(self.device_) for u in capacity.kept_by(self.masks_, self.units_.sizes, m + 1)]

    def _detector_outputs(self, x: torch.Tensor, m: int) -> torch.Tensor:
        """What the detectors read (``detector_space``) through S_0..S_m together, ``(n, `` :meth:`_detector_width`
        ``)``: the last hidden unit layer's outputs, the output layer's input, or every unit layer's outputs."""
        layers, head_input = self._detector_read()
        return torch.cat(layer_outputs(self._net, self.units_, x, self._union(m), layers, self.batch_size,
                                       head_input=head_input), 1)

    def _detector_read(self) -> tuple[dict, bool]:
        """:func:`rerelrp.network.layer_outputs`'s ``reduce`` and ``head_input`` for the detectors' space: with
        ``"layers"`` the first unit layer's :func:`rerelrp.network.position_spread` (which the unknown answer reads
        too) and every later one's :func:`rerelrp.network.position_grid`."""
        if self.detector_space == "head":
            return {}, True
        if self.detector_space == "layers":
            return {k: position_spread if k == 0 else position_grid for k in range(len(self.units_.layers))}, False
        return {-1: position_mean}, False

    def _detector_width(self) -> int:
        """Columns of :meth:`_detector_outputs`."""
        layers, head_input = self._detector_read()

        def width(layer, reduce) -> int:
            conv = isinstance(layer.module, nn.Conv2d)
            return reduce(torch.zeros((1, layer.n_units, 2, 2) if conv else (1, layer.n_units))).shape[1]

        return (sum(width(self.units_.layers[k], reduce) for k, reduce in layers.items())
                + (self.units_.output.in_features if head_input else 0))

    def _novelty_pass(self, x: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """In one pass through S_0..S_m together: the first unit layer's :func:`rerelrp.network.position_spread`
        ``(n, 2 C)`` or ``(n, U)``, what the detectors read (:meth:`_detector_outputs`), and the logits
        ``(n, len(tasks_[m]))`` of task m's classes (S_m holds every unit of S_0..S_m-1: its task-aware logits)."""
        layers, head_input = self._detector_read()
        reduce = {0: position_spread, **layers}
        *outputs, logits = layer_outputs(self._net, self.units_, x, self._union(m), reduce, self.batch_size,
                                         logits=self.tasks_[m], head_input=head_input)
        read = [outputs[list(reduce).index(k)] for k in layers] + outputs[len(reduce):]
        return outputs[0], torch.cat(read, 1), logits

    def _detector_features(self, x: torch.Tensor, m: int) -> np.ndarray:
        """Detector m's ``(n, d_m)`` features of inputs ``x``."""
        if self.recognizer == "gaussian":
            return self.memory_.select(m, self._detector_outputs(x, m))
        return self.memory_.select(m, self._unit_relevance(x, m))

    def _remember(self, task, ref_x: torch.Tensor) -> None:
        """Add the newest task t to the memory, as seen by detectors 0..t."""
        t = len(self.tasks_) - 1
        if self.recognizer == "paper":
            self.memory_.add_task([self._unit_relevance(ref_x, m) for m in range(t + 1)])
            return
        x, y = task.train_x.to(self.device_), task.train_y.to(self.device_)
        for m in range(t + 1):
            if m == t:
                spread, outputs, _ = self._novelty_pass(x, t)
                self.novelty_memory_.add_task(spread, y, task.classes, self._union(t)[0])
                self._choose_space(outputs)
            else:
                outputs = self._detector_outputs(x, m)
            for c in task.classes:
                self.memory_.add_class(m, c, self.memory_.select(m, outputs[y == c]))

    def _choose_space(self, outputs: torch.Tensor) -> None:
        """Fix the newest detector's space from its task's ``outputs`` (:meth:`_detector_outputs`): the kept units
        of the last hidden unit layer that vary most, or the principal components of the output layer's input or of
        every unit layer's outputs (standardized)."""
        if self.detector_space != "units":
            self.memory_.choose_basis(outputs, standardize=self.detector_space == "layers")
            return
        t = len(self.tasks_) - 1
        candidates = self._union(t)[-1].nonzero()[:, 0]
        if not len(candidates):
            raise RuntimeError(f"task {t} keeps no unit of the last hidden layer "
                               f"{self.units_.layers[-1].name!r}; use min_keep > 0")
        self.memory_.choose_units(candidates.cpu(), outputs.cpu())

    def _calibrate(self, task) -> np.ndarray | None:
        """:func:`rerelrp.novelty.calibrate`'s ``(4, 101)`` quantiles of the newest task's validation inputs (None
        with ``recognizer="paper"``, whose forests are not densities)."""
        if self.recognizer != "gaussian":
            return None
        t = len(self.tasks_) - 1
        return novelty.calibrate(*self._novelty_measures(task.val_x.to(self.device_), t)[:3])

    def _novelty_measures(self, x: torch.Tensor, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
        """``own``, ``low`` and ``conf`` ``(n,)`` of inputs under task m (:mod:`rerelrp.novelty`): log-likelihoods
        under its classes in detector m's space and under its first layer's statistics, and its head's confidence;
        and task m's task-aware classes ``(n,)`` (global ids): all from one pass."""
        spread, last, logits = self._novelty_pass(x, m)
        own = self.recognizer_.task_loglik(m, self.memory_.select(m, last), slice(m, m + 1))[:, 0]
        return own, self.novelty_memory_.loglik(m, spread), novelty.confidence(logits), self._argmax(logits, m)

    def _argmax(self, logits: torch.Tensor, m: int) -> torch.Tensor:
        """Global class ids ``(n,)`` of the top columns of task m's ``(n, len(tasks_[m]))`` logits."""
        return torch.as_tensor(self.tasks_[m], device=logits.device)[logits.argmax(1)]

    def _route(self, x: torch.Tensor, stop_early: bool = True, novel: bool = False, heads: bool = True,
               reject: bool = False) -> "_Route":
        """Run the detector chain: probabilities ``(n, T-1)``, argmax task ``(n,)``, its predicted class ``(n,)``
        (with ``heads``) and, with ``novel`` or ``reject``, the :func:`rerelrp.novelty.standardize` score ``(n,)`` of
        each row under its recognized task; ``reject`` answers -1 (task and class) for rows below their task's
        threshold. With ``novel`` or ``reject`` the classes come from the logits that the detector passes read
        (through S_0..S_m, which is subnetwork m): no head pass at all.

        With ``stop_early`` the chain stops for the rows whose best task is already certain
        (:func:`rerelrp.recognize.decided`; their later probabilities are NaN): a row recognized as task
        m < T - 1 costs m + 1 detector passes instead of T - 1, with the same task and class. The class is
        the argmax inside head m of subnetwork m, for the task m the row is recognized as. A row's score under
        task m < T - 1 comes from detector m's pass, which also reads the first unit layer; rows recognized as
        task T - 1 take one more pass, through S_0..S_T-1.
        """
        novel = novel or reject
        T, n = len(self.tasks_), len(x)
        task = torch.full((n,), T - 1, dtype=torch.long)
        p = np.full((n, T - 1), np.nan)
        # row's measures under task m through S_0..S_m: log-likelihoods in detector m's space and of the first
        # layer, and head m's confidence; and head m's class
        own, low, conf = (np.full((n, T), np.nan) for _ in range(3)) if novel else (None, None, None)
        classes = torch.full((n, T), -1, dtype=torch.long, device=x.device) if novel else None
        rows = np.arange(n)
        for m in range(T - 1):
            if novel:
                spread, outputs, logits = self._novelty_pass(x[rows], m)
                loglik = self.recognizer_.task_loglik(m, self.memory_.select(m, outputs))
                own[rows, m], low[rows, m] = loglik[:, 0], self.novelty_memory_.loglik(m, spread)
                conf[rows, m], classes[rows, m] = novelty.confidence(logits), self._argmax(logits, m)
                p[rows, m] = self.recognizer_.proba(loglik)
            else:
                features = self._detector_features(x[rows], m)
                p[rows, m] = self.recognizer_.detector_proba(m, features)
            scores = chain_scores(p[rows, :m + 1])
            last = m == T - 2  # the whole chain is known: every row is done
            done = decided(scores) if stop_early and not last else np.full(len(rows), last)
            task[rows[done]] = torch.as_tensor(scores[done].argmax(1))
            rows = rows[~done]
            if not len(rows):
                break
        score = None
        if novel:
            last = (task == T - 1).nonzero()[:, 0].numpy()
            if len(last):
                where = torch.as_tensor(last, device=x.device)
                own[last, T - 1], low[last, T - 1], conf[last, T - 1], classes[where, T - 1] = self._novelty_measures(
                    x[where], T - 1)
            chosen = np.arange(n), task.numpy()
            score = np.empty(n)
            for m in task.unique().tolist():
                members = (task == m).numpy()
                quantiles = self.novelty_quantiles_[m]
                typical = novelty.typicality(own[chosen][members], low[chosen][members], conf[chosen][members],
                                             quantiles)
                score[members] = novelty.standardize(typical, quantiles)
                if reject:
                    known = novelty.accepted(typical, quantiles, self.known_fraction)
                    task[np.flatnonzero(members)[~known]] = -1
        predictions = None
        if heads and novel:
            recognized = task.to(x.device)
            predictions = torch.where(recognized >= 0, classes.gather(1, recognized.clamp(min=0)[:, None])[:, 0], -1)
        elif heads:
            predictions = torch.full((n,), -1, dtype=torch.long, device=x.device)
            for m in [m for m in task.unique().tolist() if m >= 0]:
                members = (task == m).nonzero()[:, 0].to(x.device)
                predictions[members] = self._predict_head(x[members], m)
        return _Route(p, task.to(x.device), predictions, score)


class _Route(NamedTuple):
    """What :meth:`ReReLRP._route` answers for a batch of n inputs."""

    p: np.ndarray  #: (n, T-1) detector probabilities (NaN after the chain stopped for a row)
    task: torch.Tensor  #: (n,) recognized task (-1: rejected)
    predictions: torch.Tensor | None  #: (n,) global class id (-1: rejected); None without heads
    score: np.ndarray | None  #: (n,) novelty score under the recognized task; None unless asked for


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

