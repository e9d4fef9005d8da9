"""The methods a benchmark compares: rerelrp, and Avalanche baselines on the same backbone.

Baselines come from Avalanche (``avalanche-lib``): Naive (fine-tuning), JointTraining (all data seen so
far, a fresh network after each task), EWC, LwF and Replay with a 200-sample buffer. Class-incremental
predictions of a baseline are the argmax over the classes seen so far; task-aware ones the argmax within the
task's classes.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import inspect
import os
import warnings
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingClassifier

import rerelrp
from benchmarks.memory import bytes_beyond_weights
from rerelrp.recognize import default_detector

from benchmarks.stream import Stream, loader


METHODS = ("rerelrp", "finetune", "joint", "ewc", "lwf", "replay")
#: Baseline hyperparameters, taken from the literature and the Avalanche examples, not tuned on test data;
#: ``--tune`` picks them on validation data instead.
#: The learner's own defaults, named in --help.
LEARNER_DEFAULTS = {name: p.default for name, p in inspect.signature(rerelrp.ReReLRP).parameters.items()}
DEFAULT_HPARAMS = {"ewc": {"ewc_lambda": 1000.0}, "lwf": {"alpha": 1.0, "temperature": 2.0},
                   "replay": {"mem_size": 200}}
TUNE_GRID = {"ewc": [{"ewc_lambda": v} for v in (10.0, 1000.0, 100000.0)],
             "lwf": [{"alpha": a, "temperature": 2.0} for a in (0.5, 1.0, 2.0)]}


def detectors() -> dict[str, BaseEstimator | None]:
    """Detector choices for rerelrp's chain, by --detector name (None: the learner's default)."""
    return {
        "default": None,
        "paper-forest": default_detector().set_params(n_estimators=300, max_depth=40),
        "hgb": HistGradientBoostingClassifier(),
    }


class ReReLRPMethod:
    """rerelrp with its default options; epochs, seed and device from the run; the recognizer and detector by
    name; ``options``: other learner options (see :class:`rerelrp.ReReLRP`)."""

    name = "rerelrp"

    def __init__(self, model: nn.Module, *, epochs: int, seed: int, device: str, batch_size: int, lr: float,
                 progress: bool, recognizer: str = "gaussian", detector: str = "default",
                 options: dict | None = None, **_):
        options = options or {}
        self.learner = rerelrp.ReReLRP(model, epochs=epochs, lr=lr, random_state=seed, device=device,
                                       progress=progress, recognizer=recognizer,
                                       detector=detectors()[detector] if recognizer == "paper" else None, **options)
        self.batch_size, self.seed = batch_size, seed

    def fit_task(self, t: int, stream: Stream) -> None:
        x, y = stream.train[t]
        self.learner.fit_task(loader(x, y, self.batch_size, seed=self.seed + t), val_loader=[stream.val[t]])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.learner.predict(x)

    def predict_task_aware(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return self.learner.predict(x, task_id=t)

    def bytes_kept(self) -> int:
        """Bytes that ``save()`` writes beyond the model's weights (masks, memory, detectors, description)."""
        return bytes_beyond_weights(self.learner)


@contextlib.contextmanager
def quiet_avalanche():
    """Within the context, drop the warnings Avalanche 0.6 raises about itself: deprecations of its own internals
    (forced to show by the ``deprecated`` package, whatever the filters), missing loggers (left out on purpose)
    and a missing QP solver (GEM's only). Every other warning shows as usual; the filters are restored on exit."""
    root = os.path.dirname(importlib.util.find_spec("avalanche").origin)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(Call to deprecated|No loggers specified|no QP solver)")
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if not str(filename).startswith(root):
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


class AvalancheMethod:
    """An Avalanche strategy trained experience by experience on the same backbone."""

    def __init__(self, name: str, model: nn.Module, *, epochs: int, seed: int, device: str, batch_size: int,
                 lr: float, progress: bool, hparams: dict, **_):
        self.name, self.model, self.initial = name, model, copy.deepcopy(model)
        self.epochs, self.seed, self.device, self.batch_size, self.lr = epochs, seed, device, batch_size, lr
        self.hparams = hparams
        self.benchmark = None
        with quiet_avalanche():
            self.strategy = None if name == "joint" else self._strategy(self.model)
        self.tasks: list[list[int]] = []

    def _strategy(self, model: nn.Module):
        from avalanche.training.plugins import EvaluationPlugin
        from avalanche.training.supervised import EWC, JointTraining, LwF, Naive, Replay

        kinds = {"finetune": Naive, "joint": JointTraining, "ewc": EWC, "lwf": LwF, "replay": Replay}
        return kinds[self.name](
            model=model, optimizer=torch.optim.Adam(model.parameters(), lr=self.lr),
            criterion=nn.CrossEntropyLoss(), train_mb_size=self.batch_size, train_epochs=self.epochs,
            eval_mb_size=512, device=self.device, evaluator=EvaluationPlugin(loggers=[]), **self.hparams)

    def _experiences(self, stream: Stream):
        if self.benchmark is None:
            from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark

            def dataset(parts):
                x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
                data = TensorDataset(x, y)
                data.targets = y.tolist()
                return data

            self.benchmark = nc_benchmark(
                dataset(stream.train), dataset(stream.test), n_experiences=len(stream.tasks), task_labels=False,
                fixed_class_order=[c for task in stream.tasks for c in task],
                per_exp_classes={i: len(task) for i, task in enumerate(stream.tasks)}, seed=self.seed)
        return self.benchmark.train_stream

    def fit_task(self, t: int, stream: Stream) -> None:
        with quiet_avalanche():
            experiences = self._experiences(stream)
            self.tasks.append(stream.tasks[t])
            torch.manual_seed(self.seed + t)
            if self.name == "joint":  # a fresh network on everything seen so far
                self.model.load_state_dict(self.initial.state_dict())
                self._strategy(self.model).train(experiences[:t + 1], eval_streams=[])
            else:
                self.strategy.train(experiences[t], eval_streams=[])

    def _argmax(self, x: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
        head = torch.as_tensor(list(classes))
        self.model.eval()
        with torch.no_grad():
            logits = torch.cat([self.model(x[i:i + 512].to(self.device)).cpu() for i in range(0, len(x), 512)])
        return head[logits[:, head].argmax(1)]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self._argmax(x, [c for task in self.tasks for c in task])

    def predict_task_aware(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return self._argmax(x, self.tasks[t])

    def bytes_kept(self) -> int:
        """What the strategy's plugins keep: replay's buffer images and labels; EWC's weights and importances
        (one set per task in Avalanche's default "separate" mode); LwF's previous network."""
        def size(tensors) -> int:
            return sum(int(t.numel() * t.element_size()) for t in tensors)

        for plugin in self.strategy.plugins if self.strategy is not None else []:
            if hasattr(plugin, "storage_policy"):
                return sum(size([x]) + 8 for x, *_ in plugin.storage_policy.buffer)
            if hasattr(plugin, "saved_params"):
                return size(p.data for per_task in (*plugin.saved_params.values(), *plugin.importances.values())
                            for p in per_task.values())
            if hasattr(plugin, "lwf"):
                previous = plugin.lwf.prev_model
                return 0 if previous is None else size(previous.parameters())
        return 0


def make_method(name: str, model: nn.Module, hparams: dict | None = None, **run) -> ReReLRPMethod | AvalancheMethod:
    if name == "rerelrp":
        return ReReLRPMethod(model, **run)
    return AvalancheMethod(name, model, hparams=DEFAULT_HPARAMS.get(name, {}) if hparams is None else hparams, **run)
