"""Pruning keeps validation accuracy within acc_drop points and never touches the output layer."""
import pytest
import torch

from rerelrp import ReReLRP
from rerelrp.prune import prune_to_threshold
from conftest import digits_mlp, loader


@pytest.mark.parametrize("acc_drop", [0.0, 2.0, 10.0])
def test_pruning_respects_the_threshold_on_validation_data(digits, acc_drop):
    (train, test) = digits
    # one round without retraining: the paper's pruning, whose threshold holds exactly on the validation data
    learner = ReReLRP(digits_mlp(), acc_drop=acc_drop, epochs=10, prune_rounds=1, retrain_epochs=0, progress=False)
    for t in range(2):
        x, y = train[t]
        val_x, val_y = test[t]  # given as validation data: the threshold is checked on exactly this
        learner.fit_task(loader(x, y), val_loader=loader(val_x, val_y))
        result = learner.prune_results_[t]
        accuracy = float((learner.predict(val_x, task_id=t) == val_y).float().mean())
        assert accuracy == result.accuracy
        assert accuracy >= result.base_accuracy - acc_drop / 100
        assert result.n_pruned == sum(int((~k).sum()) for k in learner.masks_[t])
        assert all(k[f].all() for k, f in zip(learner.masks_[t], learner.masks_[0])) or t == 0  # task 0's kept
        # the bisection's survivor is the largest count it found within the threshold
        floor = result.base_accuracy - acc_drop / 100
        assert all(acc < floor for n, acc in result.trials if n > result.n_pruned)
    assert learner.prune_results_[1].n_pruned > 0 or acc_drop == 0.0


def test_output_layer_is_never_a_unit(default_learner):
    units = default_learner.units_
    assert units.output is default_learner.model[-1]
    assert all(layer.module is not units.output for layer in units.layers)
    assert all(len(keep) == len(units.layers) for keep in default_learner.masks_)


def test_bisection_finds_the_boundary_of_a_monotone_accuracy():
    scores = torch.arange(100.0).flip(0)  # unit 99 is the least relevant
    accuracy = lambda keep: 1.0 - 0.001 * int((~torch.cat(keep)).sum())  # noqa: E731, 0.1 point per unit
    result = prune_to_threshold(scores, [60, 40], accuracy, acc_drop=2.0)
    assert result.n_pruned == 20
    assert not torch.cat(result.keep)[80:].any() and torch.cat(result.keep)[:80].all()
    assert len(result.trials) <= 10
