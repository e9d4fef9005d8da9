"""Growth: new units that no old subnetwork reads, saved and loaded, refused clearly where forward does not allow
it, undone with the task that grew them. Real data: scikit-learn's 8x8 digits, tasks of two digits, on a network
too narrow for five tasks (two hidden layers of 16 units)."""
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import rerelrp
from rerelrp.growth import growth_paths
from rerelrp.network import find_units, masked
from conftest import TASKS, loader


def narrow_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))


def head_logits(learner, x, t):
    with torch.no_grad(), masked(learner.units_, learner.masks_[t]):
        learner.model.eval()
        return learner.model(x)[:, learner.tasks_[t]]


@pytest.fixture(scope="module")
def grown(digits):
    """Five digit tasks with grow=0.5 on the narrow MLP; after each task, task 0's logits through its subnetwork
    and every parameter with its freeze mask."""
    train, test = digits
    learner = rerelrp.ReReLRP(narrow_mlp(), epochs=10, grow=0.5, progress=False)
    snapshots = []
    for x, y in train:
        learner.fit_task(loader(x, y))
        params = {name: (learner.frozen_.masks[p].clone(), p.detach().clone())
                  for name, p in learner.model.named_parameters() if p in learner.frozen_.masks}
        snapshots.append((head_logits(learner, test[0][0], 0), params))
    return learner, snapshots


def test_every_task_after_the_first_finds_the_grown_share_free_and_parameters_are_reported(grown):
    learner, _ = grown
    rows = learner.capacity_report()
    assert any(any(g) for g in learner.growth_[1:]) and not any(learner.growth_[0])
    for t in range(1, len(TASKS)):
        for i, size in enumerate(learner.initial_sizes_):
            row = [r for r in rows if r["task"] == t][i]
            before = [r for r in rows if r["task"] == t - 1][i]
            assert row["units"] == before["units"] + row["grown"] == size + sum(g[i] for g in learner.growth_[:t + 1])
            taken = sum(r["new"] for r in rows if r["task"] < t and r["layer"] == row["layer"])
            assert row["units"] - taken >= math.ceil(0.5 * size)  # free when task t starts
    assert learner.units_.sizes == [r["units"] for r in rows if r["task"] == len(TASKS) - 1]
    # a multiple of the parameters of the model the learner was given: a fresh one of the original widths
    original = sum(p.numel() for p in narrow_mlp().parameters())
    now = sum(p.numel() for p in learner.model.parameters())
    assert now > original
    assert learner.parameter_growth() == pytest.approx(now / original)


def test_old_subnetworks_stay_bit_identical_and_never_read_the_new_units(grown, digits):
    learner, snapshots = grown
    _, test = digits
    first_logits = snapshots[0][0]
    # the same parameters and inputs; only the products are wider, and a BLAS may then sum in another order
    # (seen on one install: last-bit differences), so the outputs are equal up to float32 rounding
    for logits in [logits for logits, _ in snapshots] + [head_logits(learner, test[0][0], 0)]:
        torch.testing.assert_close(logits, first_logits, rtol=1e-5, atol=1e-5)
    print(f"largest change of task 0's logits: {max(float((l - first_logits).abs().max()) for l, _ in snapshots):.2e}")
    final = dict(learner.model.named_parameters())
    for _, params in snapshots:
        for name, (mask, values) in params.items():
            now = final[name].detach()
            old = now[tuple(slice(0, n) for n in values.shape)]  # the entries that existed then
            assert torch.equal(old[mask], values[mask]), name
    # every frozen row reads the units added after it was frozen through zero, frozen weights
    reader = learner.model[2].weight.detach()
    frozen_rows = learner.frozen_.masks[learner.model[2].weight].all(1)
    width_then = learner.initial_sizes_[0] + learner.growth_[1][0]
    task1_rows = learner.masks_[0][1] | learner.masks_[1][1]
    assert torch.all(reader[task1_rows & frozen_rows, width_then:] == 0)


def test_the_unknown_answer_of_a_grown_learner_names_the_classes_its_subnetworks_name(grown, digits):
    """predict(reject=True) reads each task's classes from the detector passes through S_0..S_m (no head pass):
    with grown layers too, those are subnetwork m's answers."""
    learner, _ = grown
    _, test = digits
    x = torch.cat([x for x, _ in test])
    plain, rejecting = learner.predict(x), learner.predict(x, reject=True)
    known = rejecting >= 0
    assert known.float().mean() > 0.5 and torch.equal(rejecting[known], plain[known])
    for t in range(len(learner.tasks_)):
        aware = learner.predict(x, task_id=t, reject=True)
        assert torch.equal(aware[aware >= 0], learner.predict(x, task_id=t)[aware >= 0])


def test_a_grown_learner_loads_into_a_model_of_the_original_widths(grown, digits, tmp_path):
    learner, _ = grown
    _, test = digits
    x = torch.cat([x for x, _ in test])
    path = learner.save(tmp_path / "grown.zip")
    loaded = rerelrp.load(path, narrow_mlp(seed=1))
    assert loaded.units_.sizes == learner.units_.sizes
    assert loaded.growth_ == learner.growth_ and loaded.parameter_growth() == learner.parameter_growth()
    assert torch.equal(loaded.predict(x), learner.predict(x))
    with pytest.raises(ValueError, match="another architecture"):  # not the original widths: not grown
        wide = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        rerelrp.load(path, wide)


class FixedView(nn.Module):
    """A CNN whose forward reshapes to a fixed size, as many tutorials do: its conv cannot grow."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.relu, self.fc, self.relu2, self.out = (nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                                                              nn.Linear(256, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x):
        return self.out(self.relu2(self.fc(self.relu(self.conv(x)).view(-1, 256))))


def test_a_layer_that_cannot_grow_is_named_and_the_others_grow(digits):
    train, _ = digits
    learner = rerelrp.ReReLRP(FixedView(), epochs=3, grow=0.9, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x, y in train[:2]:
            learner.fit_task(loader(x.view(-1, 1, 8, 8), y))
    messages = [str(w.message) for w in caught if "cannot grow" in str(w.message)]
    assert messages and all("'conv'" in m and "view" in m for m in messages)
    assert learner.growth_[1][0] == 0 and learner.units_.sizes[0] == 4
    assert learner.growth_[1][1] > 0  # the Linear grows: it passes straight to the output layer


def test_growth_paths_name_the_residual_sum_in_a_resnet():
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    paths = growth_paths(model, find_units(model))
    assert not isinstance(paths["layer1.0.conv1"], str)  # inside a block: conv1 -> bn1 -> relu -> conv2
    assert "residual sum" in paths["layer1.0.conv2"]


def test_a_failed_task_takes_its_growth_back(digits):
    train, test = digits
    learner = rerelrp.ReReLRP(narrow_mlp(), epochs=5, grow=0.9, progress=False)
    learner.fit_task(loader(*train[0]))
    x = test[0][0]
    before = ([p.detach().clone() for p in learner.model.parameters()], learner.predict(x), learner.units_.sizes)
    with pytest.raises(KeyboardInterrupt):
        with learner.training(loader(*train[1])) as task:
            assert learner.units_.sizes != before[2]  # grown on entry
            xb, yb = next(iter(task.loader))
            task.loss(learner.model(xb), yb).backward()  # gradients of the grown shapes
            raise KeyboardInterrupt
    assert learner.units_.sizes == before[2] and learner.growth_ == [[0, 0]]
    assert all(torch.equal(p, q) for p, q in zip(learner.model.parameters(), before[0]))
    assert torch.equal(learner.predict(x), before[1])
    assert [m.in_features for m in learner.model if isinstance(m, nn.Linear)] == [64, 16, 16]
    assert all(p.grad is None or p.grad.shape == p.shape for p in learner.model.parameters())
    learner.model(x).sum().backward()  # a gradient kept in the grown shape made this fail
    learner.model.zero_grad()
    learner.fit_task(loader(*train[1]))  # and the next try grows again
    assert learner.units_.sizes != before[2]


def test_an_optimizer_with_state_from_before_a_growth_is_named_and_the_task_taken_back(digits):
    train, test = digits
    model = narrow_mlp()
    learner = rerelrp.ReReLRP(model, grow=0.9, retrain_epochs=0, progress=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # built once, before every task: its moments go stale

    def learn(t):
        with learner.training(loader(*train[t])) as task:
            for x, y in task.loader:
                optimizer.zero_grad()
                task.loss(model(x), y).backward()
                optimizer.step()

    learn(0)
    answers = learner.predict(test[0][0])
    with pytest.raises(RuntimeError, match=r"Adam keeps state of shape \(16, 64\) for 0.weight.*grew.*build the "
                                           r"optimizer inside the training\(\) context"):
        learn(1)
    assert len(learner.tasks_) == 1 and torch.equal(learner.predict(test[0][0]), answers)
    optimizer.state.clear()  # the fix the message names
    learn(1)
    assert len(learner.tasks_) == 2 and learner.growth_[1] != [0, 0]



def narrow_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(216, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.mark.parametrize("make, options", [
    (narrow_mlp, {"detector_space": "layers"}),
    (narrow_mlp, {"recognizer": "paper"}),
    (narrow_cnn, {}),
    (narrow_cnn, {"detector_space": "layers"}),
    (narrow_cnn, {"detector_space": "head"}),
], ids=["mlp-layers", "mlp-paper", "cnn-units", "cnn-layers", "cnn-head"])
def test_growth_leaves_what_old_detectors_and_the_unknown_answer_read_unchanged(digits, make, options):
    """Growth adds units at the end of earlier layers, which moves the columns of later layers in any vector that
    concatenates layers: the old detectors (detector m reads through S_0..S_m, frozen) and the first layer's
    statistics must still read the same features of the same inputs, and task 0's held-out inputs stay accepted."""
    train, test = digits
    learner = rerelrp.ReReLRP(make(), epochs=5, grow=0.9, progress=False, **options)
    for x, y in train[:2]:
        learner.fit_task(loader(x, y))
    x = torch.cat([x for x, _ in test[:2]])
    view = learner.subnetworks()
    before = [learner.recognizer_.features(view, x, m) for m in range(2)]
    low = [learner.novelty_memory_.loglik(m, learner.recognizer_.read(view, x, m, first_layer=True)[0])
           for m in range(2)] if options.get("recognizer") != "paper" else []
    accepted = learner.predict(test[0][0], task_id=0, reject=True) if low else None
    learner.fit_task(loader(*train[2]))
    assert learner.growth_[2][0] > 0, "the test needs the first unit layer to grow, which moves every later column"
    view = learner.subnetworks()  # a grown Linear sums over more (zero) columns: equal up to float rounding
    for m in range(2):
        np.testing.assert_allclose(learner.recognizer_.features(view, x, m), before[m], rtol=1e-5, atol=1e-5)
    if low:
        for m in range(2):
            after = learner.novelty_memory_.loglik(m, learner.recognizer_.read(view, x, m, first_layer=True)[0])
            np.testing.assert_allclose(after, low[m], rtol=1e-5, atol=1e-5)
        share = float((learner.predict(test[0][0], task_id=0, reject=True) >= 0).float().mean())
        assert share >= float((accepted >= 0).float().mean()) - 0.02


def narrow_bn_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(216, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.mark.parametrize("added", [[2, 0, 0], [0, 3, 0], [0, 0, 5], [2, 3, 5], [1, 0, 4]])
def test_the_parameters_a_growth_adds_are_counted_before_it(added):
    """new_parameters counts, from the shapes alone, what grow_layer adds in layer order: rows as wide as the input
    is by then (a grown convolution before them), BatchNorm entries, reader columns (36 per channel into the Linear
    after the flatten) as tall as the reader is by then."""
    from rerelrp.growth import grow_layer, n_parameters, new_parameters

    model = narrow_bn_cnn()
    units = find_units(model)
    paths = growth_paths(model, units)
    counted = new_parameters(units, paths, added)
    before = n_parameters(model)
    for layer, n in zip(units.layers, added):
        grow_layer(layer.module, paths[layer.name], n)
    assert counted == n_parameters(model) - before > 0
    assert model(torch.zeros(2, 64)).shape == (2, 10)


def test_a_growth_cut_to_a_budget_keeps_the_layers_proportions_and_fits():
    from rerelrp.growth import new_parameters, within_budget

    model = narrow_bn_cnn()
    units = find_units(model)
    paths = growth_paths(model, units)
    needed = [6, 6, 16]
    full = new_parameters(units, paths, needed)
    assert within_budget(units, paths, needed, full) == needed
    for budget in (full - 1, full // 2, full // 7, 10):
        cut = within_budget(units, paths, needed, budget)
        assert new_parameters(units, paths, cut) <= budget
        assert all(c <= n for c, n in zip(cut, needed)) and cut != needed
        ratio = max(c / n for c, n in zip(cut, needed))  # one common factor s: floor(s * n) per layer
        assert all(abs(c - ratio * n) < 1 for c, n in zip(cut, needed))
    assert within_budget(units, paths, needed, 0) == [0, 0, 0]
