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
    learner = ReReLRP(tiny, acc_drop=0.0, epochs=10, grow=0, progress=False).fit_task(loader(x0, y0))
    learner.masks_[0] = [torch.ones_like(k) for k in learner.masks_[0]]  # as if no unit could be pruned
    learner.frozen_.freeze_units(learner.masks_[0])
    hidden = tiny[0].weight.detach().clone()
    with pytest.warns(RuntimeWarning, match=r"capacity exhausted: all 16 units are kept by the 1 task learned") \
            as record:
        learner.fit_task(loader(x1, y1))
    at_chance = [str(w.message) for w in record if "no better than always answering" in str(w.message)]
    assert all("0 of 16 units were free for it" in m and "earlier tasks kept the rest" in m and "set n_tasks" in m
               for m in at_chance)  # the cause named is capacity, and the learner has no n_tasks yet
    assert torch.equal(tiny[0].weight, hidden)
    test_x, test_y = digits[1][1]
    assert float((learner.predict(test_x, task_id=1) == test_y).float().mean()) > 0.6


def test_module_level_fit_task_goes_on_with_the_learner_that_holds_the_model(digits):
    """fit_task(A), fit_task(B), fit_task(A): A's learner learns A's second task, over its frozen units."""
    train, test = digits
    first_model, second_model = digits_mlp(0), digits_mlp(1)
    first = rerelrp.fit_task(first_model, loader(*train[0]), epochs=2, progress=False)
    before = first.predict(test[0][0], task_id=0)
    rerelrp.fit_task(second_model, loader(*train[0]), epochs=2, progress=False)
    again = rerelrp.fit_task(first_model, loader(*train[1]))
    assert again is first and first.tasks_ == [[0, 1], [2, 3]]
    assert torch.equal(first.predict(test[0][0], task_id=0), before)
    assert rerelrp.default_learner() is first


def test_a_second_learner_on_a_held_model_is_refused(digits, tmp_path):
    train, test = digits
    model = digits_mlp()
    first = ReReLRP(model, epochs=2, progress=False).fit_task(loader(*train[0]))
    before, state = first.predict(test[0][0], task_id=0), {k: v.clone() for k, v in model.state_dict().items()}
    path = first.save(tmp_path / "first.rerelrp")
    with pytest.raises(rerelrp.ModelInUseError, match="held by another ReReLRP learner.*go on with that learner"):
        ReReLRP(model, epochs=2, progress=False).fit_task(loader(*train[1]))
    with pytest.raises(rerelrp.ModelInUseError, match="held by another ReReLRP learner"):
        rerelrp.load(path, model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(first.predict(test[0][0], task_id=0), before)
    assert rerelrp.fit_task(model, loader(*train[1])) is first  # the module level goes on with it


def test_a_learner_that_is_gone_or_unfitted_releases_its_model(digits):
    import gc
    train, _ = digits
    model = digits_mlp()
    ReReLRP(model, epochs=2, progress=False).fit_task(loader(*train[0]))
    gc.collect()  # nobody holds that learner: it is gone, and the model is free
    failed = ReReLRP(model, epochs=2, progress=False)
    with pytest.raises(KeyboardInterrupt), failed.training(loader(*train[0])):
        raise KeyboardInterrupt
    assert not hasattr(failed, "tasks_")  # rolled back to unfitted: it holds nothing
    assert len(ReReLRP(model, epochs=2, progress=False).fit_task(loader(*train[0])).tasks_) == 1


@pytest.mark.parametrize("with_val", [False, True])
def test_a_loader_that_yields_no_batch_is_refused_before_anything_is_learned(one_task, digits, with_val):
    """drop_last=True with fewer items than a batch would train nothing and freeze the untrained task."""
    import copy
    x, y = digits[0][1]
    learner = copy.deepcopy(one_task)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    empty = DataLoader(TensorDataset(x, y), batch_size=len(x) + 1, shuffle=True, drop_last=True)
    val = loader(x[:20], y[:20]) if with_val else None
    with pytest.raises(ValueError, match=r"loader has drop_last=True and batch_size=\d+.* \d+ .*no batch"):
        learner.fit_task(empty, val)
    assert len(learner.tasks_) == 1
    assert all(torch.equal(v, learner.model.state_dict()[k]) for k, v in before.items())
    fresh = ReReLRP(digits_mlp(), epochs=2, progress=False)
    with pytest.raises(ValueError, match="drop_last=True"):
        fresh.fit_task(empty, val)
    assert not hasattr(fresh, "tasks_")


@pytest.mark.parametrize("scale, dtype", [(3e38, torch.float32), (1e300, torch.float64), (1e7, torch.float32)])
def test_prediction_inputs_beyond_the_input_bound_are_refused(one_task, digits, scale, dtype):
    """Huge finite inputs gave NaN scores and class 0: the training inputs' bound holds at prediction too, for a
    float64 input before its cast to float32 (where 1e300 becomes Inf)."""
    x = digits[1][0][0][:10].to(dtype) * scale
    for answer in (one_task.predict, one_task.predict_task, one_task.predict_proba_task, one_task.score_samples,
                   lambda x: one_task.predict(x, reject=True), lambda x: one_task.predict(x, task_id=0)):
        with pytest.raises(ValueError, match=r"x: its largest absolute value is .*, beyond \+-1e\+06"):
            answer(x)


@pytest.mark.parametrize("layer, shape", [(nn.Conv1d(1, 4, 3), (1, 64)), (nn.Conv3d(1, 4, 1), (1, 1, 8, 8)),
                                          (nn.ConvTranspose2d(1, 4, 1), (1, 8, 8))])
def test_unsupported_convolutions_are_named(digits, layer, shape):
    x, y = digits[0][0]
    out = 4 * 62 if isinstance(layer, nn.Conv1d) else 4 * 64
    model = nn.Sequential(layer, nn.ReLU(), nn.Flatten(), nn.Linear(out, 10))
    with pytest.raises(TypeError, match=rf"'0' \({type(layer).__name__}\)"):
        ReReLRP(model, epochs=2, progress=False).fit_task(loader(x.view(-1, *shape), y))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool])
def test_labels_torch_indexes_as_masks_are_refused_clearly(digits, dtype):
    x, y = digits[0][0]
    with pytest.raises(TypeError, match=rf"labels of dtype {dtype}.*mask.*y.long\(\)"):
        ReReLRP(digits_mlp(), epochs=2, progress=False).fit_task(loader(x, (y % 2).to(dtype)))


def test_a_model_on_the_meta_device_is_refused_clearly(digits):
    with pytest.raises(rerelrp.InvalidParameterError, match="'0.weight' is on the meta device"):
        ReReLRP(digits_mlp().to("meta"), epochs=2, progress=False).fit_task(loader(*digits[0][0]))
