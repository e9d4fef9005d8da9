"""Promise 2: without a task id, rerelrp is far above a model that forgets."""
import copy

import numpy as np
import pytest
import torch

from conftest import TASKS, digits_mlp, finetune_accuracy


def test_task_agnostic_accuracy_is_at_least_twice_finetuning(digits, default_learner):
    train, test = digits
    x_te, y_te = torch.cat([x for x, _ in test]), torch.cat([y for _, y in test])
    ours = float((default_learner.predict(x_te) == y_te).float().mean())
    theirs = finetune_accuracy(digits_mlp(), train, test, TASKS, epochs=default_learner.epochs)
    print(f"task-agnostic accuracy: rerelrp {ours:.3f}, fine-tuning {theirs:.3f}")
    assert ours >= 2 * theirs


def test_chain_scores_are_a_distribution_over_tasks(digits, default_learner):
    _, test = digits
    x_te = torch.cat([x for x, _ in test])
    proba = default_learner.predict_proba_task(x_te)
    assert isinstance(proba, torch.Tensor) and proba.dtype == torch.float64  # tensors, as predict returns
    assert proba.shape == (len(x_te), 5)
    assert bool((proba >= 0).all())
    np.testing.assert_allclose(proba.sum(1).numpy(), 1.0, rtol=0, atol=1e-9)
    assert torch.equal(default_learner.predict_task(x_te), proba.argmax(1))
    task_of = torch.cat([torch.full((len(y),), t) for t, (_, y) in enumerate(test)])
    assert float((default_learner.predict_task(x_te) == task_of).float().mean()) > 0.5


def scrambled(learner, units_of_layer):
    """A copy of ``learner`` whose units ``units_of_layer(i)`` (a bool mask per unit layer i) have new, large
    incoming weights and biases: whatever reads them answers differently."""
    copy_ = copy.deepcopy(learner)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, layer in enumerate(copy_.units_.layers):
            rows = units_of_layer(i)
            for param in (layer.module.weight, layer.module.bias):
                param[rows] = 10 * torch.randn(param[rows].shape, generator=generator)
    return copy_


def test_task_aware_prediction_answers_task_t_from_its_own_subnetwork_alone(digits, default_learner):
    """predict(x, task_id=t) names one of task t's classes for any input, is right on task t's inputs, and reads
    only the units task t keeps: new weights for every other unit change none of its answers."""
    _, test = digits
    x_all = torch.cat([x for x, _ in test])
    for t, (x, y) in enumerate(test):
        answers = default_learner.predict(x_all, task_id=t)
        assert set(answers.tolist()) <= set(default_learner.tasks_[t])
        assert float((default_learner.predict(x, task_id=t) == y).float().mean()) > 0.9
        others = scrambled(default_learner, lambda i: ~default_learner.masks_[t][i])
        assert torch.equal(others.predict(x_all, task_id=t), answers)
        own = scrambled(default_learner, lambda i: default_learner.masks_[t][i])  # the test can tell
        assert not torch.equal(own.predict(x_all, task_id=t), answers)


def test_task_agnostic_prediction_reads_the_recognized_task(digits, default_learner):
    _, test = digits
    x_te = torch.cat([x for x, _ in test])
    tasks = default_learner.predict_task(x_te)
    pred = default_learner.predict(x_te)
    for t in range(5):
        rows = tasks == t
        if rows.any():
            assert torch.equal(pred[rows], default_learner.predict(x_te[rows], task_id=t))


def test_explain_gives_input_relevance_of_the_prediction(digits, default_learner):
    _, test = digits
    x = test[2][0][:20]
    heat = default_learner.explain(x)
    assert heat.shape == x.shape and torch.isfinite(heat).all()
    assert (heat.abs().sum(1) > 0).all()
    # a heatmap, not a constant: the flat rule on a dense first layer gave every pixel the same relevance
    assert (heat.std(1) > 0.1 * heat.abs().mean(1)).all()


def test_free_capacity_reports_the_units_no_task_reads(digits, default_learner):
    """The free share is the units outside every task's subnetwork, and no answer reads them: new weights for all of
    them change no prediction, with or without a task id, and no explanation."""
    _, test = digits
    x = torch.cat([x for x, _ in test])
    capacity = default_learner.free_capacity()
    assert set(capacity["per_layer"]) == {layer.name for layer in default_learner.units_.layers}
    assert all(0 <= v <= 1 for v in capacity["per_layer"].values())
    masks, layers = default_learner.masks_, default_learner.units_.layers
    free = [~torch.stack([keep[i] for keep in masks]).any(0) for i in range(len(layers))]
    for layer, rows in zip(layers, free):
        assert capacity["per_layer"][layer.name] == pytest.approx(float(rows.float().mean()))
    assert capacity["overall"] == pytest.approx(sum(int(rows.sum()) for rows in free) / default_learner.units_.total)
    assert 0 < capacity["overall"] < 1
    changed = scrambled(default_learner, lambda i: free[i])
    assert torch.equal(changed.predict(x), default_learner.predict(x))
    for t in range(len(masks)):
        assert torch.equal(changed.predict(x, task_id=t), default_learner.predict(x, task_id=t))
    assert torch.equal(changed.explain(x[:20]), default_learner.explain(x[:20]))


def test_predictions_over_a_dataloader_equal_those_over_the_tensor(digits, default_learner):
    from torch.utils.data import DataLoader, TensorDataset

    _, test = digits
    x_te, y_te = torch.cat([x for x, _ in test]), torch.cat([y for _, y in test])
    batches = DataLoader(TensorDataset(x_te, y_te), batch_size=37)  # (x, y) tuples; a last batch of another size
    assert torch.equal(default_learner.predict(batches), default_learner.predict(x_te))
    assert torch.equal(default_learner.predict(batches, task_id=1), default_learner.predict(x_te, task_id=1))
    assert torch.equal(default_learner.predict_task(x_te.split(50)), default_learner.predict_task(x_te))  # bare tensors
    # scores agree up to rounding: float32 products of a 37-row batch round differently from those of the whole set
    torch.testing.assert_close(default_learner.predict_proba_task(batches), default_learner.predict_proba_task(x_te),
                               rtol=1e-5, atol=1e-9)
    # heatmaps too: the first layer's ZBox bounds are the training data's range, not each batch's
    low, high = default_learner.input_range_
    assert low == 0.0 and high == 1.0
    torch.testing.assert_close(default_learner.explain(batches), default_learner.explain(x_te), rtol=1e-4, atol=1e-6)
    with pytest.raises(TypeError, match="first element is the input tensor"):
        default_learner.predict([["not", "a tensor"]])
    with pytest.raises(ValueError, match="yielded no batch"):
        default_learner.predict([])
