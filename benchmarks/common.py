"""What the benchmarks share: backbones, methods, the evaluation protocol, reports.

Every method sees the same backbone (a fresh copy of the same initial
weights), the same data, epochs, batch size, optimizer (Adam) and seed.
Baselines come from Avalanche (``avalanche-lib``): Naive (fine-tuning),
JointTraining (all data seen so far, a fresh network after each task), EWC,
LwF and Replay with a 200-sample buffer. Class-incremental predictions of a
baseline are the argmax over the classes seen so far; task-aware ones the
argmax within the task's classes.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingClassifier
from tqdm.auto import tqdm

import rerelrp
from rerelrp.persist import bytes_beyond_weights
from rerelrp.recognize import RECOGNIZERS, default_detector

METHODS = ("rerelrp", "finetune", "joint", "ewc", "lwf", "replay")
#: Baseline hyperparameters, taken from the literature and the Avalanche examples, not tuned on test data;
#: ``--tune`` picks them on validation data instead.
#: The learner's own defaults, named in --help.
LEARNER_DEFAULTS = {name: p.default for name, p in inspect.signature(rerelrp.ReReLRP).parameters.items()}
DEFAULT_HPARAMS = {"ewc": {"ewc_lambda": 1000.0}, "lwf": {"alpha": 1.0, "temperature": 2.0},
                   "replay": {"mem_size": 200}}
TUNE_GRID = {"ewc": [{"ewc_lambda": v} for v in (10.0, 1000.0, 100000.0)],
             "lwf": [{"alpha": a, "temperature": 2.0} for a in (0.5, 1.0, 2.0)]}


# ----------------------------------------------------------------------------- backbones
def small_cnn(in_channels: int, n_classes: int, side: int = 28) -> nn.Sequential:
    """Two 3x3 conv blocks (16 and 32 channels, ReLU, 2x2 max-pool), a 128-unit dense layer, the output layer."""
    flat = 32 * (((side - 2) // 2 - 2) // 2) ** 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, n_classes))


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 64, seed: int = 0) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- the stream
@dataclass
class Stream:
    """A class-incremental stream: per task, ``(x, y)`` tensors of its train, val and test data."""

    name: str
    tasks: list[list[int]]
    train: list[tuple[torch.Tensor, torch.Tensor]]
    val: list[tuple[torch.Tensor, torch.Tensor]]
    test: list[tuple[torch.Tensor, torch.Tensor]]
    n_classes: int
    task_names: list[str]
    note: str = ""

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train[0][0].shape[1:])

    def subsample(self, per_task: int, seed: int) -> "Stream":
        """The same stream with at most ``per_task`` samples per task and split (for --quick)."""
        g = torch.Generator().manual_seed(seed)

        def cut(parts):
            return [(x[i], y[i]) for x, y in parts for i in [torch.randperm(len(y), generator=g)[:per_task]]]

        return Stream(self.name, self.tasks, cut(self.train), cut(self.val), cut(self.test), self.n_classes,
                      self.task_names, self.note)


# ----------------------------------------------------------------------------- methods
def detectors() -> dict[str, BaseEstimator | None]:
    """Detector choices for rerelrp's chain, by --detector name (None: the learner's default)."""
    return {
        "default": None,
        "paper-forest": default_detector().set_params(n_estimators=300, max_depth=40),
        "hgb": HistGradientBoostingClassifier(),
    }


class ReReLRPMethod:
    """rerelrp with its default options; epochs, seed and device from the run; recognizer options by name
    (None: the learner's default)."""

    name = "rerelrp"

    def __init__(self, model: nn.Module, *, epochs: int, seed: int, device: str, batch_size: int, lr: float,
                 progress: bool, recognizer: str = "gaussian", detector: str = "default",
                 n_features: int | None = None, n_components: int | None = None, min_keep: float | None = None, **_):
        options = {k: v for k, v in (("n_features", n_features), ("n_components", n_components),
                                     ("min_keep", min_keep)) if v is not None}
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


class AvalancheMethod:
    """An Avalanche strategy trained experience by experience on the same backbone."""

    def __init__(self, name: str, model: nn.Module, *, epochs: int, seed: int, device: str, batch_size: int,
                 lr: float, progress: bool, hparams: dict, **_):
        self.name, self.model, self.initial = name, model, copy.deepcopy(model)
        self.epochs, self.seed, self.device, self.batch_size, self.lr = epochs, seed, device, batch_size, lr
        self.hparams = hparams
        self.benchmark = None
        self.strategy = None if name == "joint" else self._strategy(self.model)
        self.tasks: list[list[int]] = []

    def _strategy(self, model: nn.Module):
        # Avalanche 0.6 chatter: deprecations inside its own code, no loggers (on purpose), no QP solver (GEM only)
        warnings.filterwarnings("ignore", message=r"(Call to deprecated|No loggers specified|no QP solver)")
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


# ----------------------------------------------------------------------------- protocol
@dataclass
class StreamResult:
    """acc[t][u]: accuracy on task u's evaluation data after learning task t (u <= t)."""

    method: str
    seed: int
    hparams: dict = field(default_factory=dict)
    tag: list[list[float]] = field(default_factory=list)
    taw: list[list[float]] = field(default_factory=list)
    task_recognition: list[float] = field(default_factory=list)
    free_capacity: list[float] = field(default_factory=list)
    stage_seconds: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    predict_seconds: float = 0.0
    bytes_kept: int = 0

    @staticmethod
    def average(acc: list[list[float]]) -> list[float]:
        return [float(np.mean(row)) for row in acc]

    @staticmethod
    def forgetting(acc: list[list[float]]) -> list[float]:
        """Mean over u < t of max_{s<t} acc[s][u] - acc[t][u], for t >= 1."""
        return [float(np.mean([max(acc[s][u] for s in range(u, t)) - acc[t][u] for u in range(t)]))
                for t in range(1, len(acc))]


def run_stream(method, stream: Stream, seed: int, split: str = "test") -> StreamResult:
    """Learn the stream's tasks in order; after each, measure TAg/TAw accuracy on every seen task's ``split``."""
    result = StreamResult(method.name, seed, getattr(method, "hparams", {}))
    evaluation = getattr(stream, split)
    for t in range(len(stream.tasks)):
        start = time.perf_counter()
        method.fit_task(t, stream)
        result.train_seconds += time.perf_counter() - start
        x_all = torch.cat([evaluation[u][0] for u in range(t + 1)])
        start = time.perf_counter()
        pred = method.predict(x_all)
        result.predict_seconds = time.perf_counter() - start
        bounds = np.cumsum([0] + [len(evaluation[u][1]) for u in range(t + 1)])
        result.tag.append([float((pred[bounds[u]:bounds[u + 1]] == evaluation[u][1]).float().mean())
                           for u in range(t + 1)])
        result.taw.append([float((method.predict_task_aware(evaluation[u][0], u) == evaluation[u][1]).float().mean())
                           for u in range(t + 1)])
        if isinstance(method, ReReLRPMethod):
            learner = method.learner
            truth = torch.cat([torch.full((len(evaluation[u][1]),), u) for u in range(t + 1)])
            result.task_recognition.append(float((learner.predict_task(x_all) == truth).float().mean()))
            result.free_capacity.append(learner.free_capacity()["overall"])
            result.stage_seconds.append(dict(learner.fit_times_[-1]))
    result.bytes_kept = method.bytes_kept()
    return result


def tune(name: str, stream: Stream, model_fn: Callable[[], nn.Module], seed: int, **run) -> dict:
    """Pick a baseline's hyperparameters by final average TAg accuracy on the validation data."""
    if name not in TUNE_GRID:
        return DEFAULT_HPARAMS.get(name, {})
    scores = []
    for hp in TUNE_GRID[name]:
        torch.manual_seed(seed)
        result = run_stream(make_method(name, model_fn(), hp, seed=seed, **run), stream, seed, split="val")
        scores.append(StreamResult.average(result.tag)[-1])
    return TUNE_GRID[name][int(np.argmax(scores))]


def run_all(stream: Stream, model_fn: Callable[[], nn.Module], methods: Sequence[str], seeds: Sequence[int],
            tune_baselines: bool, **run) -> tuple[list[StreamResult], rerelrp.ReReLRP | None]:
    """Every method on every seed; the same initial weights for every method of a seed.

    Returns the results and the last seed's rerelrp learner (None if rerelrp did not run)."""
    results, learner = [], None
    for seed in seeds:
        torch.manual_seed(seed)
        initial = model_fn()
        for name in tqdm(methods, desc=f"seed {seed}", disable=not run.get("progress", True)):
            hp = tune(name, stream, lambda: copy.deepcopy(initial), seed, **run) if tune_baselines else None
            torch.manual_seed(seed)
            method = make_method(name, copy.deepcopy(initial), hp, seed=seed, **run)
            results.append(run_stream(method, stream, seed))
            learner = method.learner if isinstance(method, ReReLRPMethod) else learner
            last = results[-1]
            tqdm.write(f"  {name:8s} seed {seed}: TAg {last.average(last.tag)[-1]:.3f}  "
                       f"TAw {last.average(last.taw)[-1]:.3f}  ({last.train_seconds:.0f}s train)")  # above the bar
    return results, learner


# ----------------------------------------------------------------------------- reports
def _mean_std(values: Sequence[float], scale: float = 100.0) -> str:
    values = np.asarray(values, dtype=float) * scale
    return f"{values.mean():.1f} ± {values.std():.1f}" if len(values) > 1 else f"{values.mean():.1f}"


def markdown_table(results: Sequence[StreamResult], methods: Sequence[str]) -> str:
    """Final TAg/TAw average accuracy, forgetting, task recognition, bytes kept and times; mean ± std over seeds."""
    lines = ["| method | TAg acc (%) | TAw acc (%) | TAg forgetting (pts) | TAw forgetting (pts) | task recognition (%) "
             "| free capacity (%) | kept beyond weights (KiB) | train (s) | predict (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in methods:
        rs = [r for r in results if r.method == name]
        if not rs:
            continue
        rec = _mean_std([r.task_recognition[-1] for r in rs]) if rs[0].task_recognition else "–"
        free = _mean_std([r.free_capacity[-1] for r in rs]) if rs[0].free_capacity else "–"
        forget = {m: _mean_std([(r.forgetting(getattr(r, m)) or [0.0])[-1] for r in rs]) for m in ("tag", "taw")}
        lines.append(
            f"| {name} | {_mean_std([r.average(r.tag)[-1] for r in rs])} | {_mean_std([r.average(r.taw)[-1] for r in rs])} "
            f"| {forget['tag']} | {forget['taw']} | {rec} | {free} "
            f"| {np.mean([r.bytes_kept for r in rs]) / 1024:.1f} | {_mean_std([r.train_seconds for r in rs], 1)} "
            f"| {_mean_std([r.predict_seconds for r in rs], 1)} |")
    return "\n".join(lines)


def plot_results(results: Sequence[StreamResult], stream: Stream, methods: Sequence[str], out: Path) -> list[Path]:
    """Average accuracy after each task (TAg and TAw), rerelrp's final accuracy matrix, its free capacity."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    T = len(stream.tasks)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, matrix, title in zip(axes, ("tag", "taw"), ("task-agnostic (no task id)", "task-aware (task id given)")):
        for name in methods:
            curves = np.array([StreamResult.average(getattr(r, matrix)) for r in results if r.method == name])
            if len(curves):
                mean, std = curves.mean(0) * 100, curves.std(0) * 100
                ax.plot(range(1, T + 1), mean, marker="o", label=name, linewidth=2.5 if name == "rerelrp" else 1.5)
                ax.fill_between(range(1, T + 1), mean - std, mean + std, alpha=0.15)
        ax.set_title(f"{stream.name}: {title}")
        ax.set_xlabel("tasks learned")
        ax.set_xticks(range(1, T + 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("average accuracy over tasks seen (%)")
    axes[1].legend()
    fig.tight_layout()
    paths.append(out / "accuracy_per_task.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    ours = [r for r in results if r.method == "rerelrp"]
    if ours:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        matrix = np.full((T, T), np.nan)
        for t in range(T):
            matrix[t, :t + 1] = np.mean([r.tag[t] for r in ours], axis=0) * 100
        im = axes[0].imshow(matrix, vmin=0, vmax=100, cmap="viridis")
        for (i, j), v in np.ndenumerate(matrix):
            if not np.isnan(v):
                axes[0].text(j, i, f"{v:.0f}", ha="center", va="center", color="w" if v < 60 else "k")
        axes[0].set_xticks(range(T), stream.task_names, rotation=20)
        axes[0].set_yticks(range(T), [f"after {n}" for n in stream.task_names])
        axes[0].set_title("rerelrp task-agnostic accuracy (%) per task")
        fig.colorbar(im, ax=axes[0])
        free = np.array([r.free_capacity for r in ours]) * 100
        mean, std = free.mean(0), free.std(0)
        axes[1].bar(range(1, T + 1), mean, yerr=[np.minimum(std, mean), np.minimum(std, 100 - mean)],
                    color="tab:green")  # ± one std over seeds, clipped to [0, 100]
        axes[1].set_xticks(range(1, T + 1), stream.task_names, rotation=20)
        axes[1].set_ylim(0, 100)
        axes[1].set_ylabel("units still free (%)")
        axes[1].set_title("rerelrp free capacity after each task")
        fig.tight_layout()
        paths.append(out / "rerelrp_matrix_and_capacity.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def _image(x: torch.Tensor) -> np.ndarray:
    """An input as something imshow draws: (C, H, W) -> (H, W[, 3]); a flat square vector -> (side, side)."""
    if x.dim() == 1:
        side = int(round(len(x) ** 0.5))
        return x.reshape(side, side).numpy()
    if x.dim() == 3:
        return x.permute(1, 2, 0).numpy() if x.shape[0] == 3 else x[0].numpy()
    return x.numpy()


def plot_heatmaps(learner: rerelrp.ReReLRP, stream: Stream, out: Path, per_task: int = 4) -> Path:
    """LRP heatmaps of a few test images per task from ``learner.explain``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(stream.tasks)
    fig, axes = plt.subplots(T, 2 * per_task, figsize=(2 * per_task * 1.3, T * 1.5))
    axes = np.atleast_2d(axes)
    for t in range(T):
        x, y = stream.test[t][0][:per_task], stream.test[t][1][:per_task]
        heat = learner.explain(x)
        heat = heat.sum(1) if heat.dim() == 4 else heat  # relevance summed over colour channels
        pred = learner.predict(x)
        for i in range(len(x)):
            axes[t, 2 * i].imshow(_image(x[i]), cmap="gray")
            axes[t, 2 * i].set_title(f"y={int(y[i])} ŷ={int(pred[i])}", fontsize=7)
            bound = float(heat[i].abs().max()) or 1.0
            axes[t, 2 * i + 1].imshow(_image(heat[i]), cmap="bwr", vmin=-bound, vmax=bound)
        axes[t, 0].set_ylabel(stream.task_names[t], fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("rerelrp.explain: input relevance of the predicted class (red +, blue −)", fontsize=9)
    fig.tight_layout()
    path = out / "lrp_heatmaps.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def environment(device: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    info = {"python": platform.python_version(), "rerelrp": rerelrp.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device}
    for package in ("torch", "torchvision", "zennit", "scikit-learn", "numpy", "medmnist", "avalanche-lib"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# ----------------------------------------------------------------------------- command line
def parser(description: str, default_epochs: int, quick_epochs: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-root", default=None,
                   help="folder with the data files (mnist/, medmnist/); default: $RERELRP_DATA, else the "
                        "data library's own default folder")
    p.add_argument("--out", default=None, help="folder for results.json, results.md and the PNG plots "
                                               "(default: results/<benchmark>)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds; each runs every method once")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"training epochs per task for every method (default {default_epochs}; {quick_epochs} with --quick)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size for every method")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate for every method")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                   help=f"methods to run, from: {', '.join(METHODS)}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--tune", action="store_true",
                   help="pick EWC's lambda and LwF's alpha on the validation data (3 extra runs each) instead of "
                        "the literature defaults")
    p.add_argument("--download", action="store_true", help="let the data library download missing files")
    p.add_argument("--quick", action="store_true",
                   help="a reduced run for CI (a few hundred samples per task, few epochs): checks the pipeline, "
                        "its numbers mean little")
    p.add_argument("--recognizer", default="gaussian", choices=RECOGNIZERS,
                   help="rerelrp's task recognizer: gaussian (class-conditional Gaussians of activations through "
                        "the subnetworks, the default) or paper (forests on relevance vectors, as published)")
    p.add_argument("--detector", default="default", choices=list(detectors()),
                   help="with --recognizer paper, the detectors: a forest of 100 trees of depth 12, the paper's "
                        "forest (300 trees of depth 40), or scikit-learn's histogram gradient boosting")
    p.add_argument("--n-features", type=int, default=None,
                   help=f"units each rerelrp detector reads (default: the learner's, {LEARNER_DEFAULTS['n_features']})")
    p.add_argument("--n-components", type=int, default=None,
                   help=f"most Gaussian mixture components per class with --recognizer gaussian (default: the "
                        f"learner's, {LEARNER_DEFAULTS['n_components']}; 1: one Gaussian per class)")
    p.add_argument("--min-keep", type=float, default=None,
                   help=f"fraction of each layer every rerelrp task keeps (default: the learner's, "
                        f"{LEARNER_DEFAULTS['min_keep']}; 0: the paper's pruning)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(args: argparse.Namespace, stream_fn: Callable[[argparse.Namespace], Stream],
         model_fn: Callable[[Stream], nn.Module], default_epochs: int, quick_epochs: int, quick_per_task: int) -> int:
    """Run every method on the stream, write JSON/Markdown/PNGs to --out, print the table and the wall time."""
    wall = time.perf_counter()
    try:
        stream = stream_fn(args)
    except FileNotFoundError as error:
        print(f"error: {error}; name the data folder with --data-root DIR or the environment variable RERELRP_DATA "
              f"(a folder holding mnist/ and medmnist/), or pass --download where there is internet", file=sys.stderr)
        return 2
    epochs = args.epochs or (quick_epochs if args.quick else default_epochs)
    if args.quick:
        stream = stream.subsample(quick_per_task, seed=0)
    out = Path(args.out or Path("results") / stream.name.lower().replace(" ", "-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"{stream.name}: {len(stream.tasks)} tasks {stream.task_names}, classes {stream.tasks}; "
          f"{sum(len(y) for _, y in stream.train)} training images; {epochs} epochs; seeds {args.seeds}; "
          f"device {args.device}" + (f"\n{stream.note}" if stream.note else ""), flush=True)
    run = dict(epochs=epochs, device=args.device, batch_size=args.batch_size, lr=args.lr,
               progress=not args.no_progress, recognizer=args.recognizer, detector=args.detector,
               n_features=args.n_features, n_components=args.n_components, min_keep=args.min_keep)
    results, learner = run_all(stream, lambda: model_fn(stream), args.methods, args.seeds, args.tune, **run)
    table = markdown_table(results, args.methods)
    plots = plot_results(results, stream, args.methods, out)
    if learner is not None:
        plots.append(plot_heatmaps(learner, stream, out))
    payload = {"benchmark": stream.name, "tasks": stream.tasks, "task_names": stream.task_names, "note": stream.note,
               "config": {**vars(args), "epochs": epochs}, "environment": environment(args.device),
               "results": [asdict(r) for r in results], "table": table,
               "wall_seconds": time.perf_counter() - wall}
    (out / "results.md").write_text(f"# {stream.name}\n\n{table}\n")
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    print(f"\n{table}\n\nwrote {out / 'results.json'}, {out / 'results.md'}, "
          f"{', '.join(str(p) for p in plots)}\nwall time {time.perf_counter() - wall:.0f} s")
    return 0
