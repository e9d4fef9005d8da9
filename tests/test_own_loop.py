"""Your own training loop: ``learner.training(...)`` keeps the method's guarantees whatever the loop does."""
import pytest
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from conftest import assert_statistics_kept, digits_mlp, loader, statistics_snapshot
from rerelrp import ReReLRP


def own_loop(model, task, epochs=4, accumulate=2):
    """A loop a user might write: two optimizers (one with two parameter groups), a scheduler, autocast with a
    GradScaler, gradient accumulation over ``accumulate`` batches, ``model.train()`` every epoch."""
    output = {id(p) for p in model[-1].parameters()}
    hidden = [p for p in model.parameters() if id(p) not in output]
    first = torch.optim.SGD([{"params": hidden[:2], "lr": 0.05}, {"params": hidden[2:], "lr": 0.02}], momentum=0.9)
    second = torch.optim.AdamW(model[-1].parameters(), lr=1e-3, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.StepLR(first, step_size=1, gamma=0.8)
    scaler = torch.amp.GradScaler("cpu")
    for _ in range(epochs):
        model.train()
        for i, (x, y) in enumerate(task.loader):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = task.loss(model(x), y) / accumulate
            scaler.scale(loss).backward()
            if i % accumulate == accumulate - 1:
                for optimizer in (first, second):
                    scaler.step(optimizer)
                    optimizer.zero_grad()
                scaler.update()
        schedule.step()


def snapshot(learner):
    return {p: (m.clone(), p.detach().clone()) for p, m in learner.frozen_.masks.items()}


def test_own_loop_keeps_frozen_entries_and_old_answers(digits):
    train, test = digits
    model = digits_mlp(batchnorm=True)
    learner = ReReLRP(model, progress=False)
    snapshots, answers = [], []
    for t, (x, y) in enumerate(train[:3]):
        with learner.training(loader(x, y)) as task:
            assert task.index == t and list(task.classes) == sorted(set(y.tolist()))
            own_loop(model, task)
        snapshots.append((snapshot(learner), statistics_snapshot(learner)))
        answers.append(learner.predict(test[t][0], task_id=t))
    for t, (frozen, statistics) in enumerate(snapshots):
        for param, (mask, value) in frozen.items():
            assert torch.equal(param.detach()[mask], value[mask]), f"an entry frozen after task {t} moved"
        assert torch.equal(learner.predict(test[t][0], task_id=t), answers[t])
    for _, statistics in snapshots:
        assert_statistics_kept(model, statistics)
    x_te, y_te = torch.cat([x for x, _ in test[:3]]), torch.cat([y for _, y in test[:3]])
    assert float((learner.predict(x_te) == y_te).float().mean()) > 0.85


def learned_state(learner):
    return (list(learner.tasks_), [[k.clone() for k in keep] for keep in learner.masks_],
            {k: v.clone() for k, v in learner.model.state_dict().items()})


def assert_unchanged(learner, before):
    tasks, masks, state = before
    assert learner.tasks_ == tasks and len(learner.masks_) == len(masks)
    assert all(torch.equal(a, b) for keep, old in zip(learner.masks_, masks) for a, b in zip(keep, old))
    assert all(torch.equal(v, state[k]) for k, v in learner.model.state_dict().items())


@pytest.fixture
def one_task(digits):
    (x, y), = digits[0][:1]
    learner = ReReLRP(digits_mlp(), epochs=3, progress=False).fit_task(loader(x, y))
    return learner


class Interrupted(Exception):
    pass


def test_an_interrupted_task_leaves_the_learner_as_it_was(digits, one_task):
    (x, y), x_te = digits[0][1], torch.cat([x for x, _ in digits[1][:2]])
    before, proba = learned_state(one_task), one_task.predict_proba_task(x_te)
    with pytest.raises(Interrupted):
        with one_task.training(loader(x, y)) as task:
            own_loop(one_task.model, task, epochs=1)
            raise Interrupted
    assert_unchanged(one_task, before)
    assert torch.equal(one_task.predict_proba_task(x_te), proba)
    one_task.fit_task(loader(x, y))  # and it can go on
    assert len(one_task.tasks_) == 2


def test_a_failed_first_task_leaves_the_learner_unfitted(digits):
    x, y = digits[0][0]
    learner = ReReLRP(digits_mlp(), progress=False)
    with pytest.raises(Interrupted), learner.training(loader(x, y)):
        raise Interrupted
    assert not hasattr(learner, "tasks_")
    learner.fit_task(loader(x, y))
    assert len(learner.tasks_) == 1


def test_an_unfinished_training_context_is_named(digits, one_task):
    x, y = digits[0][1]
    context = one_task.training(loader(x, y))
    context.__enter__()
    with pytest.raises(RuntimeError, match="task 1 is still being trained"):
        one_task.fit_task(loader(x, y))
    context.__exit__(None, None, None)
    assert len(one_task.tasks_) == 2


def test_an_optimizer_of_another_model_is_refused(digits, one_task):
    x, y = digits[0][1]
    before = learned_state(one_task)
    other = digits_mlp(seed=1)
    with pytest.raises(ValueError, match="holds none of the learner's model's parameters"):
        with one_task.training(loader(x, y)) as task:
            optimizer = torch.optim.Adam(other.parameters())
            task.loss(other(x[:8]), y[:8]).backward()
            optimizer.step()
    assert_unchanged(one_task, before)


def test_a_frozen_entry_changed_outside_a_step_is_named(digits, one_task):
    x, y = digits[0][1]
    before = learned_state(one_task)
    with pytest.raises(RuntimeError, match=r"frozen entries of 0.weight.*changed .*outside optimizer.step"):
        with one_task.training(loader(x, y)):
            with torch.no_grad():
                one_task.model[0].weight.mul_(0.5)  # e.g. a weight average written by hand
    assert_unchanged(one_task, before)


def test_training_that_diverges_is_not_learned(digits):
    train, _ = digits
    learner = ReReLRP(digits_mlp(), epochs=1, progress=False)
    with pytest.raises(RuntimeError, match="diverged"):
        with learner.training(loader(*train[0])):
            with torch.no_grad():
                learner.model[0].weight.fill_(float("nan"))  # what a loss that blew up leaves behind
    assert not hasattr(learner, "tasks_")



class CountingSampler(Sampler):
    """Every other index of the dataset, in order; counts how often it is iterated."""

    def __init__(self, n):
        self.n, self.passes = n, 0

    def __iter__(self):
        self.passes += 1
        return iter(range(0, self.n, 2))

    def __len__(self):
        return (self.n + 1) // 2


def test_the_callers_sampler_is_kept_or_refused(digits):
    (x, y), (x_val, y_val) = digits[0][0], digits[1][0]
    sampler = CountingSampler(len(y))
    sampled = DataLoader(TensorDataset(x, y), batch_size=32, sampler=sampler)
    with pytest.raises(ValueError, match="its own CountingSampler.*pass val_loader"):
        ReReLRP(digits_mlp(), progress=False).fit_task(sampled)
    ReReLRP(digits_mlp(), epochs=3, prune_rounds=2, retrain_epochs=1, progress=False).fit_task(
        sampled, val_loader=[(x_val, y_val)])
    # 3 epochs of training and 2 rounds of 1 retraining epoch; rerelrp reads the task's data in order without it
    assert sampler.passes == 3 + 2 * 1


def test_data_parallel_is_refused_pointing_at_ddp(digits):
    x, y = digits[0][0]
    with pytest.raises(TypeError, match="DataParallel is not supported.*DistributedDataParallel"):
        ReReLRP(torch.nn.DataParallel(digits_mlp()), progress=False).fit_task(loader(x, y))


def test_labels_outside_the_task_are_named_by_the_loss(digits, one_task):
    x, y = digits[0][1]
    with pytest.raises(ValueError, match=r"labels \[0\] are not classes of the task"), \
            one_task.training(loader(x, y)) as task:
        task.loss(one_task.model(x[:4]), torch.tensor([0, 2, 3, 2]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine: the CUDA path of the "
                                                           "learner runs where one is present")
def test_cuda_own_loop_prediction_and_explanation(digits, tmp_path):
    train, test = digits
    model = digits_mlp(batchnorm=True).cuda()
    learner = ReReLRP(model, progress=False)
    snapshots = []
    for t, (x, y) in enumerate(train[:2]):
        with learner.training(loader(x, y)) as task:
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            for _ in range(20):
                for xb, yb in task.loader:
                    optimizer.zero_grad()
                    task.loss(model(xb.cuda()), yb.cuda()).backward()
                    optimizer.step()
        snapshots.append(snapshot(learner))
    for param, (mask, value) in snapshots[0].items():
        assert param.is_cuda and torch.equal(param.detach()[mask], value[mask])
    x_te, y_te = torch.cat([x for x, _ in test[:2]]), torch.cat([y for _, y in test[:2]])
    batches = DataLoader(TensorDataset(x_te, y_te), batch_size=37)
    assert float((learner.predict(batches) == y_te).float().mean()) > 0.9
    assert learner.explain(x_te[:5]).shape == (5, 64)
    again = learner.save(tmp_path / "cuda.rerelrp")
    from rerelrp import load
    assert torch.equal(load(again, digits_mlp(batchnorm=True)).predict(x_te), learner.predict(x_te).cpu())


def test_a_model_changed_between_tasks_is_refused_naming_what_changed(digits, one_task):
    (x, y), (x0, _) = digits[0][1], digits[1][0]
    answers = one_task.predict(x0, task_id=0)
    saved = {k: v.clone() for k, v in one_task.model.state_dict().items()}
    one_task.model[-1].reset_parameters()  # e.g. a plugin re-initialising the head before the next experience
    before = learned_state(one_task)
    for learn in (lambda: one_task.fit_task(loader(x, y)), lambda: one_task.training(loader(x, y)).__enter__()):
        with pytest.raises(RuntimeError, match=r"frozen entries of 6\.weight, 6\.bias changed since task 0 was "
                                               r"learned.*left as it was"):
            learn()
        assert_unchanged(one_task, before)
    one_task.model.load_state_dict(saved)  # put back as the learner left it: it goes on
    one_task.fit_task(loader(x, y))
    assert len(one_task.tasks_) == 2 and torch.equal(one_task.predict(x0, task_id=0), answers)


def test_batchnorm_statistics_changed_between_tasks_are_refused(digits):
    train, _ = digits
    model = digits_mlp(batchnorm=True)
    learner = ReReLRP(model, epochs=2, progress=False).fit_task(loader(*train[0]))
    model.train()
    model(train[1][0])  # a forward in training mode moves every running statistic, kept channels too
    with pytest.raises(RuntimeError, match=r"frozen entries of 1\.running_mean, 1\.running_var, 4\.running_mean"):
        learner.fit_task(loader(*train[1]))
    assert len(learner.tasks_) == 1


def test_a_loaded_learner_notices_a_model_changed_after_loading(digits, one_task, tmp_path):
    from rerelrp import load

    loaded = load(one_task.save(tmp_path / "one.rerelrp"), digits_mlp(seed=7))
    with torch.no_grad():
        loaded.model[0].weight.add_(1e-3)
    with pytest.raises(RuntimeError, match=r"frozen entries of 0\.weight changed since task 0 was learned"):
        loaded.fit_task(loader(*digits[0][1]))
    assert len(loaded.tasks_) == 1
