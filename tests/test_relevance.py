"""LRP through zennit: batching changes nothing; epsilon-LRP conserves relevance layer by layer."""
import torch
from torch import nn
from zennit.composites import LayerMapComposite
from zennit.rules import Epsilon, Pass
from zennit.types import Activation, Linear

from rerelrp.network import find_units, masked
from rerelrp.relevance import lrp, normalize_units
from rerelrp.train import train_task
from conftest import loader


def trained(model, digits, images=False):
    x, y = digits[0][1]
    if images:
        x = x.view(-1, 1, 8, 8)
    torch.manual_seed(0)
    train_task(model, loader(x, y), [2, 3], epochs=3, lr=1e-3)
    return model, x[:24]


def digits_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))


def test_batched_relevance_equals_sample_by_sample(digits):
    model, x = trained(digits_cnn(), digits, images=True)
    units = find_units(model)
    keep = [torch.rand(n, generator=torch.Generator().manual_seed(1)) > 0.3 for n in units.sizes]
    batched = lrp(model, units, x, [2, 3], keep=keep, batch_size=len(x), with_input=True)
    single = lrp(model, units, x, [2, 3], keep=keep, batch_size=1, with_input=True)
    assert torch.equal(batched.target, single.target)
    for b, s in zip(batched.units, single.units):
        torch.testing.assert_close(b, s, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(batched.input, single.input, rtol=1e-4, atol=1e-6)
    # masked units receive no relevance, kept ones some
    for rel, mask in zip(batched.units, keep):
        assert torch.all(rel[:, ~mask] == 0)
        assert rel[:, mask].abs().sum() > 0


def test_epsilon_lrp_without_biases_conserves_relevance_layer_by_layer(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32, bias=False), nn.ReLU(), nn.Linear(32, 32, bias=False), nn.ReLU(),
                          nn.Linear(32, 10, bias=False))
    model, x = trained(model, digits)
    units = find_units(model)
    epsilon_only = LayerMapComposite(layer_map=[(Activation, Pass()), (Linear, Epsilon(epsilon=1e-9))])
    keep = [torch.arange(32) % 3 != 0, torch.arange(32) % 4 != 1]
    rel = lrp(model, units, x, [2, 3], keep=keep, composite=epsilon_only, with_input=True)
    with torch.no_grad(), masked(units, keep):
        start = model(x).gather(1, rel.target[:, None])[:, 0]
    for layer in rel.units:
        torch.testing.assert_close(layer.sum(1), start, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rel.input.sum(1), start, rtol=1e-4, atol=1e-5)


def test_normalized_unit_relevance_has_unit_l1_norm_per_layer(digits):
    model, x = trained(digits_cnn(), digits, images=True)
    units = find_units(model)
    flat = normalize_units(lrp(model, units, x, [2, 3]).units)
    assert flat.shape == (len(x), units.total)
    for block in units.split(flat):
        torch.testing.assert_close(block.abs().sum(1), torch.ones(len(x)))
