"""Shared pieces of the benchmarks: models, methods, the evaluation protocol, reports."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rerelrp
from rerelrp.train import train_task


def mlp(n_in: int, n_classes: int, hidden: int = 128) -> nn.Sequential:
    """The MLP n_in-hidden-hidden-n_classes with ReLU modules."""
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_classes))


def small_cnn(in_channels: int, n_classes: int, side: int = 28) -> nn.Sequential:
    """Two 3x3 conv blocks (16, 32 channels, max-pool) and a 128-unit dense layer."""
    flat = 32 * (((side - 2) // 2 - 2) // 2) ** 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, n_classes))


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 64, seed: int = 0) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


class Method(Protocol):
    name: str

    def fit_task(self, x: torch.Tensor, y: torch.Tensor, classes: list[int]) -> None: ...
    def predict(self, x: torch.Tensor) -> torch.Tensor: ...
    def predict_task_aware(self, x: torch.Tensor, t: int) -> torch.Tensor: ...


class ReReLRPMethod:
    """rerelrp with its default options (epochs and seed from the run)."""

    name = "rerelrp"

    def __init__(self, model: nn.Module, epochs: int, seed: int, device: str, progress: bool, batch_size: int = 64):
        self.learner = rerelrp.ReReLRP(model, epochs=epochs, random_state=seed, device=device, progress=progress)
        self.seed, self.batch_size = seed, batch_size

    def fit_task(self, x, y, classes):
        self.learner.fit_task(loader(x, y, self.batch_size, seed=self.seed))

    def predict(self, x):
        return self.learner.predict(x)

    def predict_task_aware(self, x, t):
        return self.learner.predict(x, task_id=t)


class FineTuning:
    """Plain fine-tuning: the same network trained task after task, cross-entropy over all classes seen."""

    name = "finetune"

    def __init__(self, model: nn.Module, epochs: int, seed: int, device: str, progress: bool, batch_size: int = 64,
                 lr: float = 1e-3):
        self.model, self.epochs, self.seed, self.device, self.progress = model.to(device), epochs, seed, device, progress
        self.batch_size, self.lr = batch_size, lr
        self.tasks: list[list[int]] = []

    def fit_task(self, x, y, classes):
        self.tasks.append(list(classes))
        torch.manual_seed(self.seed + len(self.tasks))
        train_task(self.model, loader(x, y, self.batch_size, seed=self.seed), self.seen, epochs=self.epochs, lr=self.lr,
                   device=self.device, progress=self.progress, description=f"{self.name} task {len(self.tasks) - 1}")

    @property
    def seen(self) -> list[int]:
        return [c for classes in self.tasks for c in classes]

    def _argmax(self, x, classes):
        head = torch.as_tensor(classes)
        with torch.no_grad():
            self.model.eval()
            logits = torch.cat([self.model(x[i:i + 512].to(self.device)).cpu() for i in range(0, len(x), 512)])
        return head[logits[:, head].argmax(1)]

    def predict(self, x):
        return self._argmax(x, self.seen)

    def predict_task_aware(self, x, t):
        return self._argmax(x, self.tasks[t])


@dataclass
class StreamResult:
    """Accuracy matrices acc[t][u] (after task t, on test data of task u <= t) and timings."""

    method: str
    seed: int
    tag: list[list[float]] = field(default_factory=list)
    taw: list[list[float]] = field(default_factory=list)
    task_recognition: list[float] = field(default_factory=list)
    free_capacity: list[float] = field(default_factory=list)
    fit_seconds: list[float] = field(default_factory=list)
    stage_seconds: list[dict] = field(default_factory=list)
    predict_seconds: float = 0.0

    def average(self, matrix: str) -> list[float]:
        return [float(np.mean(row)) for row in getattr(self, matrix)]

    def forgetting(self, matrix: str) -> list[float]:
        acc = getattr(self, matrix)
        out = []
        for t in range(1, len(acc)):
            out.append(float(np.mean([max(acc[s][u] for s in range(u, t)) - acc[t][u] for u in range(t)])))
        return out


def run_stream(method, train: Sequence[tuple], test: Sequence[tuple], tasks: list[list[int]], seed: int) -> StreamResult:
    """Learn the tasks in order; after each, measure TAg/TAw accuracy on every seen task's test data."""
    result = StreamResult(method.name, seed)
    for t, classes in enumerate(tasks):
        start = time.perf_counter()
        method.fit_task(*train[t], classes)
        result.fit_seconds.append(time.perf_counter() - start)
        tag_row, taw_row = [], []
        start = time.perf_counter()
        x_all = torch.cat([test[u][0] for u in range(t + 1)])
        y_all = torch.cat([test[u][1] for u in range(t + 1)])
        pred = method.predict(x_all)
        result.predict_seconds = time.perf_counter() - start
        bounds = np.cumsum([0] + [len(test[u][1]) for u in range(t + 1)])
        for u in range(t + 1):
            part = slice(bounds[u], bounds[u + 1])
            tag_row.append(float((pred[part] == y_all[part]).float().mean()))
            taw_row.append(float((method.predict_task_aware(test[u][0], u) == test[u][1]).float().mean()))
        result.tag.append(tag_row)
        result.taw.append(taw_row)
        if isinstance(method, ReReLRPMethod):
            learner = method.learner
            task_of = torch.cat([torch.full((len(test[u][1]),), u) for u in range(t + 1)])
            result.task_recognition.append(float((learner.predict_task(x_all) == task_of).float().mean()))
            result.free_capacity.append(learner.free_capacity()["overall"])
            result.stage_seconds.append(dict(learner.fit_times_[-1]))
    return result


def environment() -> dict:
    import sklearn
    import zennit
    return {"python": platform.python_version(), "torch": torch.__version__, "zennit": zennit.__version__,
            "scikit-learn": sklearn.__version__, "rerelrp": rerelrp.__version__, "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads()}


def save_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
