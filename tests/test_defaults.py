"""What ``ReReLRP(model)`` chooses by itself (issue 35): the detector space from the architecture (``"head"`` where
a residual sum lies before the output layer, ``"layers"`` otherwise, ``"units"`` for the paper's recognizer) and
growth where the model's layers can grow, said once where they cannot. Real data: scikit-learn's 8x8 digits."""
import warnings

import pytest
import torch
from torch import nn

from benchmarks.backbones import resnet18
from rerelrp import ReReLRP
from conftest import digits_mlp, loader
from test_architectures import small_densenet
from test_backbones import images


def tiny_cnn() -> nn.Sequential:
    """A convolution, pooling and a dense layer before the output layer: a plain network for 8x8 images."""
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 3 * 3, 32),
                         nn.ReLU(), nn.Linear(32, 10))


def first_task(model, digits, **options) -> tuple[ReReLRP, list[str]]:
    """A learner of ``model`` with ``options`` after 100 images of the first digit task as 1x8x8 images (or vectors
    for an MLP), one epoch and one pruning round (what is chosen does not depend on them), and the warnings it gave."""
    (x, y), = images(digits, tasks=(0,))[0]
    x, y = x[:100], y[:100]
    if isinstance(model[0] if isinstance(model, nn.Sequential) else None, nn.Linear):
        x = x.flatten(1)
    learner = ReReLRP(model, epochs=1, prune_rounds=1, n_reference=20, batch_size=128, progress=False, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learner.fit_task(loader(x, y))
    return learner, [str(w.message) for w in caught]


@pytest.mark.parametrize("name, model, space", [
    ("MLP", lambda: digits_mlp(), "layers"),
    ("CNN", tiny_cnn, "layers"),
    pytest.param("ResNet-18", lambda: resnet18(1, 10), "head", marks=pytest.mark.slow),  # a sum after layer4's conv2
    ("DenseNet", small_densenet, "head"),  # a concatenation before the classifier
])
def test_auto_reads_the_head_of_residual_networks_and_every_layer_of_plain_ones(digits, name, model, space):
    torch.manual_seed(0)
    learner, _ = first_task(model(), digits)
    assert learner.detector_space == "auto" and learner.detector_space_ == space, name
    assert learner.recognizer_.space.name == space
    assert f"detector_space='auto' -> '{space}'" in learner.summary()


def test_auto_is_the_units_space_for_the_papers_recognizer(digits):
    learner, _ = first_task(digits_mlp(), digits, recognizer="paper")
    assert learner.detector_space_ == "units"


def test_an_explicit_space_is_kept(digits):
    learner, _ = first_task(small_densenet(), digits, detector_space="layers")
    assert learner.detector_space_ == "layers"


def test_auto_growth_where_every_layer_can_grow_says_nothing(digits):
    learner, said = first_task(tiny_cnn(), digits)
    assert learner.grow == "auto" and learner.grow_ == 0.25
    assert not [m for m in said if "grow" in m], said


@pytest.mark.slow
def test_auto_growth_names_the_layers_that_cannot_grow_once_and_only_without_n_tasks(digits):
    torch.manual_seed(0)
    learner, said = first_task(resnet18(1, 10), digits)
    cannot = [m for m in said if m.startswith("grow='auto': ")]
    assert len(cannot) == 1 and learner.grow_ == 0.25  # each block's first convolution can grow, its second cannot
    assert "unit layers of 20 cannot grow" in cannot[0] and "set n_tasks to the number of tasks you expect" in cannot[0]
    assert [kind for _, kind, _ in learner.warnings_].count("cannot grow") == 1
    torch.manual_seed(0)
    _, said = first_task(resnet18(1, 10), digits, n_tasks=3)  # a budget: nothing to warn
    assert not [m for m in said if m.startswith("grow='auto': ")]
