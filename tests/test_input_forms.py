"""Inputs in the other forms scikit-learn accepts are taken as the canonical ones: labels of shape (n, 1) train like
flat labels, float64 and float16 inputs are converted to the model's float32. Real data: scikit-learn's 8x8 digits."""
import torch

from rerelrp import ReReLRP
from conftest import digits_mlp, loader


def test_labels_shaped_n_by_1_train_like_flat_labels(digits):
    train, test = digits
    x, y = train[0]
    flat = ReReLRP(digits_mlp(), epochs=3, progress=False).fit_task(loader(x, y))
    column = ReReLRP(digits_mlp(), epochs=3, progress=False).fit_task(loader(x, y[:, None]))
    assert torch.equal(column.predict(test[0][0]), flat.predict(test[0][0]))


def test_float64_and_float16_inputs_are_converted_as_scikit_learn_does(digits, default_learner):
    learner = default_learner
    _, test = digits
    x = test[0][0]
    assert torch.equal(learner.predict(x.double()), learner.predict(x))  # converted, as scikit-learn does
    assert torch.equal(learner.predict(x.half().float()), learner.predict(x.half()))
