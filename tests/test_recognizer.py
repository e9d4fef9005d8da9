"""The default recognizer: better than the paper's on held-out data, smaller than a replay buffer, no input kept."""
import math
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_tensors

from rerelrp import ReReLRP
from benchmarks.memory import bytes_beyond_weights
from rerelrp.prune import prune_to_threshold
from rerelrp.remember import auto_features
from rerelrp.spaces import DETECTOR_SPACES
from conftest import digits_mlp, loader, replay_buffer_bytes, task_recognition


def test_recognizes_held_out_digits_better_than_the_paper_recognizer(digits, default_learner, paper_learner):
    _, test = digits
    ours, paper = task_recognition(default_learner, test), task_recognition(paper_learner, test)
    print(f"task recognition on held-out digits: default {ours:.3f}, paper {paper:.3f}")
    assert ours > paper + 0.05


def test_digits_side_memory_with_24_features_of_the_last_hidden_layer_is_smaller_than_its_replay_buffer(digits):
    train, test = digits
    learner = ReReLRP(digits_mlp(), n_features=24, detector_space="units", input_weight=0.0, progress=False)
    for x, y in train:
        learner.fit_task(loader(x, y))
    kept, buffer = bytes_beyond_weights(learner), replay_buffer_bytes(*train[0])
    print(f"digits, 24 features: {kept} bytes beyond the weights, replay buffer {buffer}; "
          f"task recognition {task_recognition(learner, test):.3f}")
    assert kept < buffer


def test_no_training_input_is_stored(digits, default_learner, tmp_path):
    train, _ = digits
    inputs = torch.cat([x for x, _ in train]).double()  # (n, 64)
    with zipfile.ZipFile(default_learner.save(tmp_path / "learner.zip")) as archive:
        tensors = load_tensors(archive.read("tensors.safetensors"))
    memory = {k: v for k, v in tensors.items() if not k.startswith("model.") and v.is_floating_point()}
    assert memory, "the save holds no memory at all"
    for name, tensor in memory.items():
        flat = tensor.double().flatten()
        if len(flat) < inputs.shape[1]:
            continue
        windows = flat.unfold(0, inputs.shape[1], 1)  # every run of 64 consecutive stored numbers
        assert torch.cdist(windows, inputs).min() > 1e-3, f"{name} holds a training input"


def test_each_detector_has_a_gaussian_for_every_class_of_its_task_and_later(default_learner):
    memory, tasks = default_learner.memory_, default_learner.tasks_
    for m in range(len(tasks)):
        assert sorted(memory.classes[m]) == sorted(c for classes in tasks[m:] for c in classes)


def test_each_units_detector_reads_at_most_n_features_units_kept_by_its_subnetworks(digits):
    train, _ = digits
    learner = ReReLRP(digits_mlp(), epochs=5, detector_space="units", n_features=24, progress=False)
    for x, y in train:
        learner.fit_task(loader(x, y))
    for m in range(len(learner.tasks_)):
        union_last = learner.subnetworks().union(m)[-1]
        assert 0 < len(learner.memory_.units[m]) <= learner.n_features
        assert union_last[learner.memory_.units[m]].all(), "a detector reads a unit that no task up to it keeps"


@pytest.mark.parametrize("space", DETECTOR_SPACES)
def test_detector_features_never_change_after_later_tasks(digits, space):
    train, test = digits
    learner = ReReLRP(digits_mlp(), epochs=5, progress=False, detector_space=space)
    x = torch.cat([x for x, _ in test])
    learner.fit_task(loader(*train[0]))
    learner.fit_task(loader(*train[1]))
    before = [learner.recognizer_.features(learner.subnetworks(), x, m) for m in range(2)]
    for t in range(2, 5):
        learner.fit_task(loader(*train[t]))
    for m in range(2):
        after = learner.recognizer_.features(learner.subnetworks(), x, m)
        assert (after == before[m]).all(), f"detector {m}'s space moved"


def test_min_keep_keeps_the_most_relevant_share_of_every_layer():
    sizes = [16, 32, 128]
    scores = torch.rand(sum(sizes), generator=torch.Generator().manual_seed(0))
    result = prune_to_threshold(scores, sizes, lambda keep: 1.0, acc_drop=2.0, min_keep=0.15)  # prune at no cost
    for keep, block in zip(result.keep, torch.split(scores, sizes)):
        n = math.ceil(0.15 * len(block))
        assert int(keep.sum()) == n
        assert keep[torch.topk(block, n).indices].all()


@pytest.mark.parametrize("space", ["head", "layers"])
def test_basis_spaces_read_principal_components_of_what_they_name(digits, tmp_path, space):
    from rerelrp.network import layer_outputs, position_mean
    from rerelrp import load

    train, test = digits
    learner = ReReLRP(digits_mlp(), epochs=10, progress=False, detector_space=space)
    for x, y in train:
        learner.fit_task(loader(x, y))
    x = torch.cat([x for x, _ in test])
    first, last, head = layer_outputs(learner.model, learner.units_, x, learner.subnetworks().union(1),
                                      {0: position_mean, -1: position_mean}, head_input=True)
    if space == "head":  # the MLP's output layer reads the ReLU of its last hidden unit layer
        assert torch.equal(head, torch.relu(last))
    else:  # both hidden layers of the MLP, as they are
        assert torch.equal(learner.recognizer_.read(learner.subnetworks(), x, 1)[1], torch.cat([first, last], 1))
    for m in range(5):
        center, axes = learner.memory_.bases[m]
        read = learner.memory_.units[m]  # "layers" leaves out the columns constant on task m's data (masked units)
        width = learner.recognizer_.space.width(learner.units_)
        assert axes.shape[0] <= auto_features(2) and axes.shape[1] == len(read) <= width  # n_features="auto"
        assert width == (128 if space == "head" else 256)
        if space == "layers":
            outputs = learner.recognizer_.read(learner.subnetworks(), train[m][0], m)[1]
            assert (outputs.std(0)[read] > 0).all() and (m > 0 or len(read) < 256)
        if space == "head":  # orthonormal axes (with "layers" they carry each column's scale)
            gram = axes.double() @ axes.double().T
            assert torch.allclose(gram, torch.eye(len(axes), dtype=torch.float64), atol=1e-5)
        # principal components of task m's own data: uncorrelated there (the learner fitted them on 90 % of it)
        correlation = np.corrcoef(learner.recognizer_.features(learner.subnetworks(), train[m][0], m).T)
        assert np.abs(correlation - np.eye(len(correlation))).max() < 0.25
    recognized = task_recognition(learner, test)
    print(f"task recognition on held-out digits, {space} space: {recognized:.3f}")
    assert recognized > 0.9
    learner.save(tmp_path / "basis.rerelrp")
    loaded = load(tmp_path / "basis.rerelrp", digits_mlp(seed=1))
    assert torch.equal(loaded.predict(x), learner.predict(x))
    assert torch.equal(loaded.score_samples(x), learner.score_samples(x))
    with pytest.raises(ValueError, match="detector_space cannot change once a task is learned"):
        learner.set_params(detector_space="units")


def test_a_class_gets_a_mixture_only_when_its_data_supports_one():
    from sklearn.datasets import load_digits as sklearn_digits

    from rerelrp.remember import ClassStatistics

    x, y = sklearn_digits(return_X_y=True)
    two_digits = x[(y == 0) | (y == 1)]  # one "class" made of two digits: two clusters at least
    two_digits = two_digits[:, two_digits.var(0).argsort()[-16:]]  # its 16 most varying pixels
    mixture = ClassStatistics.of(two_digits, max_components=4, random_state=0)
    few = ClassStatistics.of(two_digits[:40], max_components=4, random_state=0)  # 40 samples in 16 dimensions
    print(f"components: two digits {len(mixture.weights)}, forty samples {len(few.weights)}")
    assert len(mixture.weights) == 4 and len(few.weights) == 1
    assert mixture.means.shape == (4, 16) and mixture.covariances.shape == (4, 16, 16)
    assert math.isclose(float(mixture.weights.sum()), 1.0, rel_tol=1e-5)


def test_pruning_scores_do_not_favour_small_layers(default_learner, digits):
    from rerelrp.prune import unit_scores
    from rerelrp.relevance import lrp

    train, _ = digits
    x, y = train[0]
    units = default_learner.units_
    rel = [r.abs() for r in lrp(default_learner.model, units, x, default_learner.tasks_[0], target=y).units]
    # the first layer's relevance summed into a layer 4 times smaller
    layers = [rel[0], rel[0].view(len(x), 32, 4).sum(2), rel[1]]
    scores = torch.split(unit_scores(layers), [128, 32, rel[1].shape[1]])
    for block in scores:  # every layer's scores sum to its size per sample: a unit of mean share scores 1
        assert math.isclose(float(block.sum()), block.numel() * len(x), rel_tol=1e-4)
    assert math.isclose(float(scores[1].mean()), float(scores[0].mean()), rel_tol=1e-4)
