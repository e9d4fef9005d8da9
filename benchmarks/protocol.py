"""The evaluation protocol: every method on every seed, the same initial weights, accuracy after every task."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import rerelrp

from benchmarks.methods import DEFAULT_HPARAMS, TUNE_GRID, ReReLRPMethod, make_method
from benchmarks.stream import Stream


@dataclass
class StreamResult:
    """acc[t][u]: accuracy on task u's evaluation data after learning task t (u <= t)."""

    method: str
    seed: int
    hparams: dict = field(default_factory=dict)
    tag: list[list[float]] = field(default_factory=list)
    taw: list[list[float]] = field(default_factory=list)
    #: streams with ``label_count``: task-agnostic accuracy of the label alone (the digit of Permuted MNIST)
    tag_label: list[list[float]] = field(default_factory=list)
    task_recognition: list[float] = field(default_factory=list)
    #: rerelrp: after each task t, the share of each seen task u's inputs recognized as task u (u <= t)
    task_recognition_by_task: list[list[float]] = field(default_factory=list)
    free_capacity: list[float] = field(default_factory=list)
    #: rerelrp: parameter entries after each task, as a multiple of the model's before the first (``grow``)
    parameters: list[float] = field(default_factory=list)
    stage_seconds: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    predict_seconds: float = 0.0
    #: after each task t, the seconds ``predict`` took on the test data of tasks 0..t
    predict_seconds_by_task: list[float] = field(default_factory=list)
    bytes_kept: int = 0
    #: rerelrp: after each task, the bytes ``save`` writes beyond the weights
    bytes_kept_by_task: list[int] = field(default_factory=list)

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
        result.predict_seconds_by_task.append(result.predict_seconds)
        bounds = np.cumsum([0] + [len(evaluation[u][1]) for u in range(t + 1)])
        result.tag.append([float((pred[bounds[u]:bounds[u + 1]] == evaluation[u][1]).float().mean())
                           for u in range(t + 1)])
        if stream.label_count:
            k = stream.label_count
            result.tag_label.append([float((pred[bounds[u]:bounds[u + 1]] % k == evaluation[u][1] % k)
                                           .float().mean()) for u in range(t + 1)])
        result.taw.append([float((method.predict_task_aware(evaluation[u][0], u) == evaluation[u][1]).float().mean())
                           for u in range(t + 1)])
        if isinstance(method, ReReLRPMethod):
            learner = method.learner
            truth = torch.cat([torch.full((len(evaluation[u][1]),), u) for u in range(t + 1)])
            recognized = learner.predict_task(x_all) == truth
            result.task_recognition.append(float(recognized.float().mean()))
            result.task_recognition_by_task.append([float(recognized[bounds[u]:bounds[u + 1]].float().mean())
                                                    for u in range(t + 1)])
            result.free_capacity.append(learner.free_capacity()["overall"])
            result.parameters.append(learner.parameter_growth())
            result.stage_seconds.append(dict(learner.fit_times_[-1]))
            result.bytes_kept_by_task.append(method.bytes_kept())
    # rerelrp's was measured after its last task already
    result.bytes_kept = result.bytes_kept_by_task[-1] if result.bytes_kept_by_task else method.bytes_kept()
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
