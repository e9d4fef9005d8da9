"""Which models the learner takes: one whose units it can find, relevance it can compute and parameters it can freeze;
any other is refused before training, naming the module and why. Real data: scikit-learn's 8x8 digits."""
import pytest
import torch
from torch import nn

from rerelrp import ReReLRP
from rerelrp.network import find_units
from conftest import loader


class Residual(nn.Module):
    """A residual block written with ``+``, outside any canonizer."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x) + x)


class Shared(nn.Module):
    """One convolution called twice."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.pool = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.pool(self.relu(self.conv(self.relu(self.conv(x))))).flatten(1))


class MeanPooled(nn.Module):
    """Spatial average by a function: its gradient would hand inactive positions relevance (zennit's Norm rule on a
    pooling module would not)."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.out = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.relu(self.conv(x)).mean((2, 3)))


class AuxiliaryOutput(nn.Module):
    """Returns the logits and an auxiliary head's output: the message named the auxiliary head as the output."""

    def __init__(self):
        super().__init__()
        self.hidden, self.relu, self.head, self.aux = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2), nn.Linear(4, 3)

    def forward(self, x):
        h = self.relu(self.hidden(x))
        return self.head(h), self.aux(h)


def head(*modules):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), *modules, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))


@pytest.mark.parametrize("model, message", [
    (head(Residual()), r"'add' of two input-dependent tensors in module '2' \(Residual\)"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Shared()), r"module '1.conv' \(Conv2d\) is called 2 times"),
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2), nn.Softmax(1)),
     r"forward returns the output of '3': it must return one tensor, the logits of the model's last nn.Linear"),
    (AuxiliaryOutput(), r"forward returns a tuple of 2 \(the output of 'head', the output of 'aux'\): it must "
                        r"return one tensor.*drop auxiliary outputs"),
    (torch.compile(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))),
     r"compiled with torch.compile: give rerelrp the module itself \(model._orig_mod\)"),
    (MeanPooled(), r"mean is called as a function in MeanPooled.forward: .*nn\.AdaptiveAvgPool2d"),
], ids=["functional-residual", "shared-convolution", "softmax-output", "auxiliary-output", "compiled",
        "functional-mean"])
def test_unanalysable_models_are_refused_naming_the_module(model, message):
    with pytest.raises(TypeError, match=message):
        find_units(model)


def test_reused_activations_and_identity_are_accepted():
    units = find_units(head(nn.Identity(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU()))
    assert [layer.name for layer in units.layers] == ["0", "3"] and isinstance(units.layers[1].masked_module,
                                                                              nn.BatchNorm2d)


class Tokens(nn.Module):
    """A Linear over tokens (N, T, C), then a max over T: the Linear's units would mask the token axis."""

    def __init__(self):
        super().__init__()
        self.embed, self.relu, self.out = nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10)

    def forward(self, x):
        return self.out(self.relu(self.embed(x.view(x.size(0), 8, 8))).amax(1))


@pytest.mark.parametrize("norm, name", [(nn.LayerNorm(128), "LayerNorm"), (nn.GroupNorm(4, 128), "GroupNorm"),
                                        (nn.PReLU(), "PReLU")])
def test_modules_whose_parameters_cannot_be_frozen_are_refused_by_name(digits, norm, name):
    model = nn.Sequential(nn.Linear(64, 128), norm, nn.ReLU(), nn.Linear(128, 10))
    with pytest.raises(TypeError, match=rf"module '1' \({name}\) has parameters"):
        ReReLRP(model, progress=False).fit_task(loader(*digits[0][0]))


def test_a_linear_over_tokens_is_refused(digits):
    with pytest.raises(TypeError, match="'embed' is applied to a 3-d tensor"):
        ReReLRP(Tokens(), progress=False).fit_task(loader(*digits[0][0]))


class Tied(nn.Module):
    """Two hidden Linears sharing one weight: freezing a unit of one would freeze a unit of the other, and a fresh
    start of a free unit of one would rewrite a kept unit of the other."""

    def __init__(self):
        super().__init__()
        self.first, self.relu = nn.Linear(64, 32), nn.ReLU()
        self.second, self.third, self.out = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 10)
        self.third.weight = self.second.weight

    def forward(self, x):
        return self.out(self.relu(self.third(self.relu(self.second(self.relu(self.first(x)))))))


class BareParameter(nn.Module):
    """A learned shift or scale used in forward by no module: nothing would freeze it."""

    def __init__(self, combine):
        super().__init__()
        self.combine = combine
        self.hidden, self.relu, self.out = nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)
        self.shift = nn.Parameter(torch.zeros(64))

    def forward(self, x):
        return self.out(self.relu(self.hidden(self.combine(x, self.shift))))


class ReusedWeight(nn.Module):
    """A unit's weight used a second time by a function."""

    def __init__(self):
        super().__init__()
        self.hidden, self.relu, self.out = nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)

    def forward(self, x):
        return self.out(self.relu(self.hidden(x @ self.hidden.weight.T)))


@pytest.mark.parametrize("model, message", [
    (Tied(), r"parameter 'second.weight' .* also 'third.weight'"),
    (BareParameter(lambda x, p: x + p), r"parameter 'shift' is used by forward directly"),
    (BareParameter(lambda x, p: x * p), r"parameter 'shift' is used by forward directly"),
    (ReusedWeight(), r"parameter 'hidden.weight' is used by forward directly"),
], ids=["tied-weights", "added-parameter", "multiplied-parameter", "reused-weight"])
def test_parameters_that_are_not_exactly_one_units_heads_or_batchnorms_are_refused(digits, model, message):
    with pytest.raises(TypeError, match=message):
        ReReLRP(model, epochs=2, progress=False).fit_task(loader(*digits[0][0]))
