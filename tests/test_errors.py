"""Bad input gets an error that names the problem, before the model is touched."""
import pytest
import torch
from sklearn.exceptions import NotFittedError
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rerelrp
from rerelrp import ReReLRP
from conftest import digits_mlp, loader


@pytest.fixture(scope="module")
def one_task(digits):
    learner = ReReLRP(digits_mlp(), epochs=2, progress=False)
    x, y = digits[0][0]
    return learner.fit_task(loader(x, y))


def test_predict_before_any_fit_task_is_not_fitted(monkeypatch):
    monkeypatch.setattr(rerelrp, "_default", None)
    with pytest.raises(NotFittedError, match="fit_task"):
        rerelrp.predict(torch.zeros(1, 64))
    with pytest.raises(NotFittedError):
        ReReLRP(digits_mlp()).predict(torch.zeros(1, 64))


def test_empty_loader(digits):
    empty = DataLoader(TensorDataset(torch.zeros(0, 64), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="empty"):
        ReReLRP(digits_mlp(), progress=False).fit_task(empty)


def test_labels_outside_the_output_layer(digits):
    x, y = digits[0][0]
    with pytest.raises(ValueError, match=r"labels \[12\] lie outside the output layer, which has 10 rows"):
        ReReLRP(digits_mlp(), progress=False).fit_task(loader(x, torch.where(y == 1, 12, y)))


def test_class_already_learned(one_task, digits):
    x, y = digits[0][1]
    before = {k: v.clone() for k, v in one_task.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"classes \[1\] were learned in an earlier task"):
        one_task.fit_task(loader(x, torch.where(y == 2, 1, y)))
    assert all(torch.equal(v, one_task.model.state_dict()[k]) for k, v in before.items())
    assert len(one_task.tasks_) == 1


def test_single_class_task(digits):
    x, y = digits[0][0]
    with pytest.raises(ValueError, match="at least two classes"):
        ReReLRP(digits_mlp(), progress=False).fit_task(loader(x[y == 0], y[y == 0]))


def test_wrong_input_shape(one_task):
    with pytest.raises(ValueError, match=r"expected \(n, 64\)"):
        one_task.predict(torch.zeros(3, 65))
    with pytest.raises(ValueError, match=r"expected \(n, 64\)"):
        one_task.predict(torch.zeros(3, 1, 8, 8), task_id=0)


def test_model_that_cannot_take_the_input(digits):
    x, y = digits[0][0]
    with pytest.raises(ValueError, match=r"cannot take inputs of shape \(n, 32\)"):
        ReReLRP(digits_mlp(), progress=False).fit_task(loader(x[:, :32], y))


def test_nan_or_inf_in_input(one_task, digits):
    x = digits[1][1][0][:5].clone()
    x[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        one_task.predict(x)
    x_tr, y_tr = digits[0][1]
    x_tr = x_tr.clone()
    x_tr[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        ReReLRP(digits_mlp(), progress=False).fit_task(loader(x_tr, y_tr))


def test_inputs_that_cannot_work_are_refused_with_a_reason(digits, one_task):
    learner = one_task
    train, test = digits
    x = test[0][0]
    # inputs that can work are converted instead: test_input_forms
    with pytest.raises(ValueError, match="has no samples"):
        learner.predict(x[:0])
    with pytest.raises(ValueError, match="task_id must be None or an int"):
        learner.predict(x, task_id=True)
    with pytest.raises(TypeError, match="single Linear"):
        ReReLRP(nn.Linear(64, 10), progress=False).fit_task(loader(*train[0]))
    with pytest.raises(ValueError, match="batch_size=None"):
        ReReLRP(digits_mlp(), progress=False).fit_task(DataLoader(TensorDataset(*train[0]), batch_size=None))
    with pytest.raises(ValueError, match="beyond"):
        ReReLRP(digits_mlp(), progress=False).fit_task(loader(train[0][0] * 1e20, train[0][1]))
    with pytest.raises(TypeError, match="float64 but the model's parameters are torch.float32"):
        ReReLRP(digits_mlp(), progress=False).fit_task(loader(train[0][0].double(), train[0][1]))



def test_integer_input(one_task):
    with pytest.raises(TypeError, match="floating-point"):
        one_task.predict(torch.zeros(2, 64, dtype=torch.long))


def test_bad_task_id(one_task, digits):
    with pytest.raises(ValueError, match=r"task_id must be None or an int in \[0, 0\]"):
        one_task.predict(digits[1][0][0], task_id=3)


def test_model_without_output_layer():
    with pytest.raises(TypeError, match="no nn.Linear"):
        ReReLRP(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())).fit_task(
            loader(torch.zeros(4, 1, 5, 5), torch.tensor([0, 1, 0, 1])))


def test_module_level_default_learner_follows_the_model(digits):
    (x0, y0), (x1, y1) = digits[0][0], digits[0][1]
    first_model, second_model = digits_mlp(0), digits_mlp(1)
    first = rerelrp.fit_task(first_model, loader(x0, y0), epochs=2, progress=False)
    assert rerelrp.fit_task(first_model, loader(x1, y1)) is first and len(first.tasks_) == 2
    second = rerelrp.fit_task(second_model, loader(x0, y0), epochs=2, progress=False)
    assert second is not first and len(second.tasks_) == 1
    assert rerelrp.default_learner() is second
    assert torch.equal(rerelrp.predict(x1), second.predict(x1))


class FunctionalReLU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden, self.out = torch.nn.Linear(64, 16), torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)))


def test_functional_activations_lrp_cannot_see(digits):
    x, y = digits[0][0]
    with pytest.raises(TypeError, match="activations must be modules"):
        ReReLRP(FunctionalReLU(), progress=False).fit_task(loader(x, y))


def test_wrong_channel_count(digits):
    x, y = digits[0][0]
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 10))
    learner = ReReLRP(cnn, epochs=1, progress=False).fit_task(loader(x.view(-1, 1, 8, 8), y))
    with pytest.raises(ValueError, match=r"shape \(5, 3, 8, 8\); expected \(n, 1, 8, 8\)"):
        learner.predict(torch.zeros(5, 3, 8, 8))


def test_val_loader_with_other_classes(digits):
    (x, y), (val_x, val_y) = digits[0][0], digits[1][1]
    with pytest.raises(ValueError, match=r"val_loader has classes \[2, 3\] that the task's loader does not have"):
        ReReLRP(digits_mlp(), progress=False).fit_task(loader(x, y), val_loader=loader(val_x, val_y))


def test_exhausted_capacity_warns_and_still_learns_without_touching_frozen_units(digits):
    (x0, y0), (x1, y1) = digits[0][0], digits[0][1]
    torch.manual_seed(0)
    tiny = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    learner = ReReLRP(tiny, acc_drop=0.0, epochs=10, progress=False).fit_task(loader(x0, y0))
    learner.masks_[0] = [torch.ones_like(k) for k in learner.masks_[0]]  # as if no unit could be pruned
    learner.frozen_.freeze_units(learner.masks_[0])
    hidden = tiny[0].weight.detach().clone()
    with pytest.warns(RuntimeWarning, match=r"capacity exhausted: all 16 units are kept by the 1 tasks"):
        learner.fit_task(loader(x1, y1))
    assert torch.equal(tiny[0].weight, hidden)
    test_x, test_y = digits[1][1]
    assert float((learner.predict(test_x, task_id=1) == test_y).float().mean()) > 0.6
