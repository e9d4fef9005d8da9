"""Fixtures on real data that ships with scikit-learn (8x8 digits), split into 5 tasks of 2 classes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from filelock import FileLock  # a dependency of torch's
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rerelrp
from rerelrp.capacity import kept_by
from rerelrp.datasets import class_splits, load_digits, task_indices
from rerelrp.train import train_task

TASKS = class_splits(10, 5)

# One torch thread in every process, whatever the machine and the number of pytest-xdist workers: a thread count sums
# in another order, so a seeded test computes the same numbers only on the same count (a small MobileNet's task-aware
# accuracy, seeded, was 0.74 with 2 threads and above 0.8 with 1); xdist's workers share the cores instead
torch.set_num_threads(1)


def digits_mlp(seed: int = 0, batchnorm: bool = False) -> nn.Sequential:
    """The issue's MLP 64-128-128-10 (optionally with BatchNorm after each hidden layer)."""
    torch.manual_seed(seed)
    norm = (lambda: nn.BatchNorm1d(128)) if batchnorm else (lambda: nn.Identity())
    return nn.Sequential(nn.Linear(64, 128), norm(), nn.ReLU(), nn.Linear(128, 128), norm(), nn.ReLU(),
                         nn.Linear(128, 10))


def loader(x, y, batch_size=32, seed=0):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def digits():
    """(train, test): per task, an ``(x, y)`` pair; x is (n, 64) in [0, 1], y global class ids."""
    x_tr, y_tr, x_te, y_te = load_digits()
    train = [(x_tr[i], y_tr[i]) for i in task_indices(y_tr, TASKS)]
    test = [(x_te[i], y_te[i]) for i in task_indices(y_te, TASKS)]
    return train, test


def shared_directory(tmp_path_factory) -> Path:
    """A directory of this test session that every pytest-xdist worker sees (their base temporary directories lie
    in the session's; pytest-xdist's documented pattern), or this process's own without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def answers(learner, x) -> dict:
    """What the tests read of a learner on ``x``: predictions, recognized tasks, their probabilities and, with the
    default recognizer, the scores of the unknown answer."""
    out = {"predict": learner.predict(x), "predict_task": learner.predict_task(x),
           "predict_proba_task": learner.predict_proba_task(x)}
    if learner.recognizer == "gaussian":
        out["score_samples"] = learner.score_samples(x)
    return out


def trained_once(tmp_path_factory, name: str, train, model, x):
    """The learner ``train()`` returns, trained once per test session however many xdist workers ask for it: the
    first to ask trains it (under a file lock) and saves it with its :func:`answers` on ``x``; every other worker
    loads the save into ``model()`` and checks that it gives those answers bit for bit, so that the tests read the
    same learner wherever they run."""
    root = shared_directory(tmp_path_factory)
    path, expected_path = root / f"{name}.rerelrp", root / f"{name}-answers.pt"
    with FileLock(root / f"{name}.lock"):
        if not path.exists():
            learner = train()
            torch.save(answers(learner, x), expected_path)
            learner.save(path)  # last: its existence says that both files are complete
            return learner
    learner = rerelrp.load(path, model())
    expected, loaded = torch.load(expected_path), answers(learner, x)
    different = [key for key, value in expected.items() if not torch.equal(loaded[key], value)]
    if different:
        raise RuntimeError(f"the saved {name} does not answer as the trained one did ({different}): a saved learner "
                           f"will not do for the tests; see tests/test_persist.py")
    return learner


@pytest.fixture(scope="session")
def default_learner(digits, tmp_path_factory):
    """rerelrp.fit_task with no options, on all 5 digit tasks; trained once per session (:func:`trained_once`).
    Tests of the module-level API (rerelrp.predict) train their own default learner: a loaded one is not it."""
    train, test = digits

    def fit():
        model = digits_mlp()
        for x, y in train:
            learner = rerelrp.fit_task(model, loader(x, y))
        return learner

    return trained_once(tmp_path_factory, "default_learner", fit, digits_mlp, torch.cat([x for x, _ in test]))


@pytest.fixture(scope="session")
def paper_learner(digits, tmp_path_factory):
    """The published method on the same 5 digit tasks: forests on relevance vectors, the paper's pruning, no
    input-space recognizer; trained once per session (:func:`trained_once`)."""
    train, test = digits

    def fit():
        learner = rerelrp.ReReLRP(digits_mlp(), recognizer="paper", min_keep=0.0, input_weight=0.0, progress=False)
        for x, y in train:
            learner.fit_task(loader(x, y))
        return learner

    return trained_once(tmp_path_factory, "paper_learner", fit, digits_mlp, torch.cat([x for x, _ in test]))


def task_recognition(learner, test) -> float:
    """Share of the test inputs whose task ``learner.predict_task`` recognizes."""
    x = torch.cat([x for x, _ in test])
    truth = torch.cat([torch.full((len(y),), t) for t, (_, y) in enumerate(test)])
    return float((learner.predict_task(x) == truth).float().mean())


def shared_data_root():
    """$RERELRP_DATA, or skip: the full data sets live outside the repository (CI points at them)."""
    root = os.environ.get("RERELRP_DATA")
    if not root:
        pytest.skip("RERELRP_DATA is not set: this test needs the full MNIST/MedMNIST files (CI sets it)")
    return root


def finetune_accuracy(model, train, test, tasks, epochs, batch_size=32):
    """Task-agnostic accuracy of plain fine-tuning: the same network trained task after task with
    cross-entropy over all classes seen so far, predicting the argmax over them."""
    seen = []
    for t, ((x, y), classes) in enumerate(zip(train, tasks)):
        seen += list(classes)
        torch.manual_seed(t)
        train_task(model, loader(x, y, batch_size, seed=t), seen, epochs=epochs, lr=1e-3)
    x_te, y_te = torch.cat([x for x, _ in test]), torch.cat([y for _, y in test])
    model.eval()
    with torch.no_grad():
        pred = torch.as_tensor(seen)[model(x_te)[:, seen].argmax(1)]
    return float((pred == y_te).float().mean())


def statistics_snapshot(learner) -> dict:
    """The BatchNorm running statistics old subnetworks read: ``{module name: (channels, mean, var)}``, every
    channel of a BatchNorm that closes no unit layer, the kept channels of one that does (a free channel's
    statistics are measured anew for each task)."""
    kept = {id(layer.masked_module): rows for layer, rows in zip(learner.units_.layers,
                                                           kept_by(learner.masks_, learner.units_.sizes))}
    snapshot = {}
    for name, module in learner.model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            rows = kept.get(id(module), torch.ones(module.num_features, dtype=torch.bool))
            snapshot[name] = (rows, module.running_mean[rows].clone(), module.running_var[rows].clone())
    return snapshot


def assert_statistics_kept(model, snapshot: dict) -> None:
    """Every running statistic of ``snapshot`` (:func:`statistics_snapshot`) is bit-identical in ``model``."""
    assert snapshot, "the model has no BatchNorm statistics to check"
    for name, (rows, mean, var) in snapshot.items():
        module = model.get_submodule(name)
        assert torch.equal(module.running_mean[rows], mean) and torch.equal(module.running_var[rows], var), name


def replay_buffer_bytes(x: torch.Tensor, y: torch.Tensor, size: int = 200) -> int:
    """Bytes of a replay buffer of ``size`` inputs like ``x`` (float32) with their int64 labels."""
    return size * (x[0].numel() * 4 + y.element_size())
