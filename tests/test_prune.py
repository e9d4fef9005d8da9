"""Pruning keeps validation accuracy within acc_drop points and never touches the output layer."""
import pytest
import torch

import rerelrp
from rerelrp import ReReLRP
from rerelrp.network import masked
from rerelrp.prune import choose_measure, prune_to_threshold
from conftest import digits_mlp, loader


def true_class_probability(learner, x, y, t) -> torch.Tensor:
    """``(n,)`` probability that subnetwork t's softmax over task t's classes gives the true class of each input."""
    classes = torch.tensor(learner.tasks_[t])
    with torch.no_grad(), masked(learner.units_, learner.masks_[t]):
        probabilities = learner.model(x)[:, classes].softmax(1)
    return probabilities[torch.arange(len(y)), torch.searchsorted(classes, y)]


@pytest.mark.parametrize("measure", ["accuracy", "probability"])
@pytest.mark.parametrize("acc_drop", [0.0, 2.0, 10.0])
def test_pruning_respects_the_threshold_on_validation_data(digits, acc_drop, measure):
    (train, test) = digits
    # one round without retraining: the paper's pruning, whose threshold holds exactly on the validation data
    learner = ReReLRP(digits_mlp(), acc_drop=acc_drop, drop_measure=measure, epochs=10, prune_rounds=1,
                      retrain_epochs=0, n_tasks=1, progress=False)  # no budget: every task is the last expected
    for t in range(2):
        x, y = train[t]
        val_x, val_y = test[t]  # given as validation data: the threshold is checked on exactly this
        learner.fit_task(loader(x, y), val_loader=loader(val_x, val_y))
        result = learner.prune_results_[t]
        assert result.measure == measure
        if measure == "accuracy":
            accuracy = float((learner.predict(val_x, task_id=t) == val_y).float().mean())
            assert accuracy == result.accuracy
        else:
            accuracy = float(true_class_probability(learner, val_x, val_y, t).mean())
            assert accuracy == pytest.approx(result.accuracy, abs=1e-6)
        rounding = 0.0 if measure == "accuracy" else 1e-6  # float32 probabilities, summed in another order
        assert accuracy >= result.base_accuracy - acc_drop / 100 - rounding
        assert result.n_pruned == sum(int((~k).sum()) for k in learner.masks_[t])
        assert all(k[f].all() for k, f in zip(learner.masks_[t], learner.masks_[0])) or t == 0  # task 0's kept
        # the bisection's survivor is the largest count it found within the threshold
        floor = result.base_accuracy - acc_drop / 100
        assert all(acc < floor for n, acc in result.trials if n > result.n_pruned)
    assert learner.prune_results_[1].n_pruned > 0 or acc_drop == 0.0


def test_auto_measure_compares_probabilities_where_acc_drop_is_a_few_images(digits, tmp_path):
    """A digit task's ~70 test images as validation data: 2 points are 1.4 images, so "auto" compares the
    probability of the true class; 1,000 images (20 at 2 points) compare accuracies. Saved and loaded with the task."""
    assert choose_measure("auto", 1000, 2.0) == "accuracy" and choose_measure("auto", 999, 2.0) == "probability"
    assert choose_measure("accuracy", 10, 2.0) == "accuracy"
    with pytest.raises(ValueError, match=r"drop_measure must be one of 'auto', 'accuracy', 'probability'"):
        choose_measure("loss", 100, 2.0)
    train, test = digits
    learner = ReReLRP(digits_mlp(), epochs=10, progress=False).fit_task(loader(*train[0]), val_loader=[test[0]])
    assert learner.prune_results_[0].measure == "probability"
    assert rerelrp.load(learner.save(tmp_path / "l.rerelrp"), digits_mlp(1)).prune_results_[0].measure == "probability"


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
