"""Every fast path gives the answers of the straightforward one: zennit's own rules, the whole detector chain."""
import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from rerelrp.network import find_units
from rerelrp.recognize import bounded, chain_scores, decided
from rerelrp.relevance import default_composite, lrp
from rerelrp.train import train_task
from conftest import digits_mlp, loader


def signed_cnn():
    """In-place ReLU, a Tanh that feeds a convolution signed inputs, average pooling, BatchNorm, "same" padding
    (left to zennit's own z+ rule)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                         nn.Conv2d(8, 8, 3, padding="same"),
                         nn.Tanh(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 2 * 2, 16), nn.ReLU(), nn.Linear(16, 10))


def relu_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.mark.parametrize("make, images", [(lambda: digits_mlp(batchnorm=True), False), (relu_cnn, True),
                                          (signed_cnn, True)], ids=["mlp-batchnorm", "relu-cnn", "signed-cnn"])
def test_unit_relevance_equals_zennits_epsilon_plus_flat(digits, make, images):
    x, y = digits[0][1]
    x = x.view(-1, 1, 8, 8) if images else x
    model = make()
    torch.manual_seed(0)
    train_task(model, loader(x, y), [2, 3], epochs=3, lr=1e-3)
    units = find_units(model)
    keep = [torch.rand(n, generator=torch.Generator().manual_seed(1)) > 0.3 for n in units.sizes]
    fast = lrp(model, units, x, [2, 3], keep=keep)
    zennit = lrp(model, units, x, [2, 3], keep=keep, composite=default_composite(units))
    assert torch.equal(fast.target, zennit.target)
    for ours, theirs in zip(fast.units, zennit.units):
        assert theirs.abs().sum() > 0
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_learner_answers_are_those_of_zennits_rules(digits, paper_learner):
    _, test = digits
    x_te = torch.cat([x for x, _ in test])
    reference = copy.deepcopy(paper_learner)  # the recognizer that reads relevance
    reference.composite_ = default_composite(reference.units_)
    assert torch.equal(paper_learner.predict(x_te), reference.predict(x_te))
    np.testing.assert_allclose(paper_learner.predict_proba_task(x_te), reference.predict_proba_task(x_te),
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("which", ["default_learner", "paper_learner"])
def test_chain_that_stops_early_answers_as_the_whole_chain(digits, which, request):
    _, test = digits
    learner = request.getfixturevalue(which)
    x_te = torch.cat([x for x, _ in test])
    p_short, task_short, class_short, _ = learner.route(x_te)
    p_full, task_full, class_full, _ = learner.route(x_te, stop_early=False)
    assert torch.equal(task_short, task_full) and torch.equal(class_short, class_full)
    skipped = np.isnan(p_short)
    assert skipped.any() and not np.isnan(p_full).any()
    # the short chain computes a detector's features for fewer rows: matrix products of another batch size may
    # round the last bits differently (seen here: 2 of 1,504 probabilities, relative 9e-14); the answers are exact
    np.testing.assert_allclose(p_short[~skipped], p_full[~skipped], rtol=1e-9, atol=0)
    print(f"detector evaluations: {int((~skipped).sum())} of {p_full.size}")


# probabilities with exact 0, 1 and repeated values, where ties and rounding would show
probabilities = st.sampled_from([0.0, 1.0, 0.5, 0.25, 1 / 3, 0.999999, 1e-12]) | st.floats(0, 1)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(2, 7)), elements=probabilities))
def test_a_decided_row_has_the_same_argmax_on_the_whole_chain(p):
    full = chain_scores(p).argmax(1)
    for k in range(1, p.shape[1]):
        prefix = chain_scores(p[:, :k])
        np.testing.assert_array_equal(prefix[:, :-1], chain_scores(p)[:, :k])
        rows = decided(prefix)
        np.testing.assert_array_equal(prefix[rows].argmax(1), full[rows])


@settings(derandomize=True, max_examples=300, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(2, 7)), elements=probabilities), st.data())
def test_with_a_prior_a_decided_row_has_the_same_argmax_on_the_whole_chain(p, data):
    n, T = p.shape[0], p.shape[1] + 1
    prior = data.draw(arrays(np.float64, (n, T), elements=st.floats(-30, 0) | st.sampled_from([0.0, -1.0, -np.log(2)])))
    full = bounded(chain_scores(p), prior).argmax(1)
    for k in range(1, p.shape[1]):
        rows = decided(chain_scores(p[:, :k]), prior)
        np.testing.assert_array_equal(bounded(chain_scores(p[:, :k]), prior)[rows].argmax(1), full[rows])


def test_parameters_without_gradient_change_no_relevance(digits):
    x, y = digits[0][1]
    model = relu_cnn()
    torch.manual_seed(0)
    train_task(model, loader(x.view(-1, 1, 8, 8), y), [2, 3], epochs=1, lr=1e-3)
    units = find_units(model)
    before = lrp(model, units, x.view(-1, 1, 8, 8), [2, 3])
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    after = lrp(model, units, x.view(-1, 1, 8, 8), [2, 3])
    for b, a in zip(before.units, after.units):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
