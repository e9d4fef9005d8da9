"""Invariants under random architectures, optimizers and task splits (hypothesis).

For any small MLP or CNN, with or without BatchNorm, any of SGD+momentum,
Adam or AdamW+weight decay, and any split of digit classes into tasks:
frozen parameters stay bit-identical, old tasks' task-aware answers never
change, and the same seed gives the same answers twice.
"""
import copy
from functools import partial

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from rerelrp import ReReLRP
from rerelrp.datasets import load_digits
from conftest import loader

OPTIMIZERS = {
    "sgd-momentum": (partial(torch.optim.SGD, momentum=0.9), 0.05),
    "adam": (torch.optim.Adam, 1e-3),
    "adamw-weight-decay": (partial(torch.optim.AdamW, weight_decay=0.1), 1e-3),
}
X_TRAIN, Y_TRAIN, X_TEST, Y_TEST = load_digits()


@st.composite
def architectures(draw):
    batchnorm = draw(st.booleans())
    seed = draw(st.integers(0, 1000))
    torch.manual_seed(seed)
    if draw(st.sampled_from(["mlp", "cnn"])) == "mlp":
        layers, width_in = [], 64
        for width in draw(st.lists(st.sampled_from([8, 16, 32]), min_size=1, max_size=2)):
            layers += [nn.Linear(width_in, width)] + ([nn.BatchNorm1d(width)] if batchnorm else []) + [nn.ReLU()]
            width_in = width
        return nn.Sequential(*layers, nn.Linear(width_in, 10)), False
    channels = draw(st.sampled_from([4, 8]))
    layers = [nn.Conv2d(1, channels, 3)] + ([nn.BatchNorm2d(channels)] if batchnorm else []) + [nn.ReLU()]
    if draw(st.booleans()):
        layers += [nn.Conv2d(channels, channels, 3), nn.ReLU(), nn.MaxPool2d(2)]
        side = 2
    else:
        layers += [nn.AvgPool2d(2)]
        side = 3
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * side * side, 16), nn.ReLU(),
                         nn.Linear(16, 10)), True


task_splits = st.permutations(range(10)).flatmap(
    lambda order: st.sampled_from([2, 3]).map(lambda n: [sorted(order[2 * i:2 * i + 2]) for i in range(n)]))


def task_data(classes, images, per_class=50):
    def pick(x, y, n):
        idx = torch.cat([(y == c).nonzero()[:n, 0] for c in classes])
        x = x[idx].view(-1, 1, 8, 8) if images else x[idx]
        return x, y[idx]
    return pick(X_TRAIN, Y_TRAIN, per_class), pick(X_TEST, Y_TEST, 20)


SETTINGS = settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(architectures(), st.sampled_from(sorted(OPTIMIZERS)), task_splits)
def test_frozen_bits_and_old_answers_never_change(architecture, optimizer_name, tasks):
    model, images = architecture
    optimizer, lr = OPTIMIZERS[optimizer_name]
    learner = ReReLRP(model, optimizer=optimizer, lr=lr, epochs=2, n_reference=20, progress=False)
    snapshots, answers, tests = [], [], []
    for classes in tasks:
        (x, y), test = task_data(classes, images)
        learner.fit_task(loader(x, y))
        snapshots.append({p: (m.clone(), p.detach().clone()) for p, m in learner.frozen_.masks.items()})
        answers.append(learner.predict(test[0], task_id=len(tests)))
        tests.append(test)
    for t, snapshot in enumerate(snapshots):
        for param, (mask, value) in snapshot.items():
            assert torch.equal(param.detach()[mask], value[mask])
        assert torch.equal(learner.predict(tests[t][0], task_id=t), answers[t])


@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(architectures(), st.sampled_from(sorted(OPTIMIZERS)), task_splits)
def test_the_same_seed_gives_the_same_answers(architecture, optimizer_name, tasks):
    model, images = architecture
    optimizer, lr = OPTIMIZERS[optimizer_name]
    runs = []
    for _ in range(2):
        learner = ReReLRP(copy.deepcopy(model), optimizer=optimizer, lr=lr, epochs=2, n_reference=20,
                          random_state=7, progress=False)
        for classes in tasks:
            (x, y), _ = task_data(classes, images)
            learner.fit_task(loader(x, y))
        x_test = torch.cat([task_data(c, images)[1][0] for c in tasks])
        runs.append((learner.predict(x_test), learner.predict_proba_task(x_test)))
    assert torch.equal(runs[0][0], runs[1][0])
    assert (runs[0][1] == runs[1][1]).all()
