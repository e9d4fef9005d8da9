"""Capacity: retraining after pruning, budgets per task, the report, the early warning, fresh free units (and their
BatchNorm statistics) and the warning for a task learned at chance. Real data: scikit-learn's 8x8 digits, five tasks of two digits."""
import warnings

import pytest
import torch
from torch import nn

import rerelrp
from rerelrp.capacity import capacity_report, kept_by
from rerelrp.contexts import hooks
from rerelrp.network import find_units, masked
from rerelrp.prune import paired_drop, prune_to_threshold
from rerelrp.reinit import refresh_free_statistics, reset_free_units
from conftest import TASKS, digits_mlp, loader


def old_logits(learner, x, t):
    with torch.no_grad(), masked(learner.units_, learner.masks_[t]):
        learner.model.eval()
        return learner.model(x)[:, learner.tasks_[t]]  # task t's head


@pytest.fixture(scope="module")
def budgeted(digits):
    """Five digit tasks with a budget for five tasks; after each task, the freeze masks with the parameters'
    values and task 0's logits through its subnetwork."""
    train, test = digits
    learner = rerelrp.ReReLRP(digits_mlp(), epochs=10, n_tasks=5, progress=False)
    snapshots = []
    for x, y in train:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            learner.fit_task(loader(x, y))
        frozen = {name: (learner.frozen_.masks[p].clone(), p.detach().clone())
                  for name, p in learner.model.named_parameters() if p in learner.frozen_.masks}
        snapshots.append((frozen, old_logits(learner, test[0][0], 0)))
    return learner, snapshots


def test_retraining_and_fresh_free_units_leave_every_frozen_entry_and_old_subnetwork_bit_identical(budgeted):
    learner, snapshots = budgeted
    final = dict(learner.model.named_parameters())
    for frozen, logits in snapshots:
        for name, (mask, values) in frozen.items():
            assert mask.any()
            assert torch.equal(final[name].detach()[mask], values[mask]), name
        assert torch.equal(logits, snapshots[0][1])


def test_retraining_runs_and_the_recorded_accuracy_is_the_retrained_subnetworks(digits):
    train, test = digits
    # one task of all ten digits: hard enough that the first pruning stops above the floor
    x, y = torch.cat([x for x, _ in train]), torch.cat([y for _, y in train])
    vx, vy = torch.cat([x for x, _ in test]), torch.cat([y for _, y in test])
    # recorded: the accuracy; a stream of one task (n_tasks=1): no budget caps the pruning
    options = dict(epochs=10, min_keep=0.0, drop_measure="accuracy", n_tasks=1, progress=False)
    once = rerelrp.ReReLRP(digits_mlp(), prune_rounds=1, retrain_epochs=0, **options)
    retrained = rerelrp.ReReLRP(digits_mlp(), prune_rounds=3, retrain_epochs=3, **options)
    for learner in (once, retrained):
        learner.fit_task(loader(x, y), val_loader=loader(vx, vy))
    result = retrained.prune_results_[0]
    assert result.accuracy == float((retrained.predict(vx, task_id=0) == vy).float().mean())
    assert retrained.fit_times_[0]["retrain"] > 0 and once.fit_times_[0]["retrain"] == 0
    # retraining lets later rounds prune more than one pruning of the same trained network
    assert result.n_pruned > once.prune_results_[0].n_pruned


def test_each_task_keeps_at_most_its_budget_of_free_units_and_reuses_every_frozen_unit(budgeted):
    learner, _ = budgeted
    rows = learner.capacity_report()
    free_before = list(learner.units_.sizes)
    for t in range(len(TASKS)):
        mine = [r for r in rows if r["task"] == t]
        budget = learner.prune_results_[t].budget
        # a share of what is free that leaves each task still to come of the five as much, and the last task all
        assert all(0 < b and b * (5 - t) <= f for b, f in zip(budget, free_before))
        assert t < 4 or budget == free_before
        assert all(r["new"] <= b for r, b in zip(mine, budget))  # per layer, the budget is a hard cap
        for r in mine:
            assert r["kept"] == r["new"] + r["reused"]
            assert r["reused"] == sum(q["new"] for q in rows if q["task"] < t and q["layer"] == r["layer"])
        free_before = [f - r["new"] for f, r in zip(free_before, mine)]
        assert free_before == [r["free"] for r in mine]
    assert learner.free_capacity()["overall"] == pytest.approx(sum(free_before) / learner.units_.total)


def test_report_matches_the_masks(budgeted):
    learner, _ = budgeted
    rows = capacity_report(learner.units_, learner.masks_)
    assert len(rows) == len(TASKS) * len(learner.units_.layers)
    for r in rows:
        i = [layer.name for layer in learner.units_.layers].index(r["layer"])
        assert r["kept"] == int(learner.masks_[r["task"]][i].sum())


def test_free_units_start_each_task_fresh_and_frozen_ones_do_not(digits):
    train, _ = digits
    learner = rerelrp.ReReLRP(digits_mlp(), epochs=5, prune_rounds=1, retrain_epochs=0, progress=False)
    learner.fit_task(loader(*train[0]))
    first = learner.units_.layers[0].module
    free = ~kept_by(learner.masks_, learner.units_.sizes)[0]
    before = first.weight.detach().clone()
    reset_free_units(learner.units_, learner.masks_, seed=1)
    assert not torch.equal(first.weight[free], before[free])
    assert torch.equal(first.weight[~free], before[~free])
    bound = 1 / first.in_features ** 0.5  # nn.Linear's default initialisation
    assert first.weight[free].abs().max() <= bound


def narrow() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 10))


def test_an_open_ended_stream_that_cannot_grow_leaves_every_layer_free_units_to_its_last_task(digits):
    """Five tasks on 12 units a layer with min_keep=0.3 (3.6 units each) fill the layers without a budget; open-ended,
    each task keeps at most a quarter of what is free (at least one unit), so no layer ever runs out."""
    train, _ = digits
    learner = rerelrp.ReReLRP(narrow(), epochs=10, min_keep=0.3, grow=0, progress=False)
    for x, y in train:
        learned = len(getattr(learner, "tasks_", []))
        free_before = [r["free"] for r in learner.capacity_report() if r["task"] == learned - 1] if learned else [12, 12]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            learner.fit_task(loader(x, y))
        rows = [r for r in learner.capacity_report() if r["task"] == len(learner.tasks_) - 1]
        assert [r["new"] for r in rows] == [max(1, f // 4) for f in free_before]  # min_keep wants more: its share
        assert all(r["free"] > 0 for r in rows)
    assert learner.growth_ == [[0, 0]] * 5 and learner.parameter_growth() == 1.0


def test_by_default_a_network_that_can_grow_refills_its_pool_up_to_its_parameter_cap(digits, monkeypatch):
    """grow="auto" with its pool raised from a quarter to 0.9 of each layer (11 of 12 units) and its cap lowered from
    2x to 1.5x the parameters, so that five tasks grow the layers every time and reach the cap."""
    monkeypatch.setattr(rerelrp.growth, "AUTO_GROW", 0.9)
    monkeypatch.setattr(rerelrp.growth, "AUTO_MAX_PARAMETERS", 1.5)
    train, _ = digits
    learner = rerelrp.ReReLRP(narrow(), epochs=10, min_keep=0.3, progress=False)
    capped_at = None
    for t, (x, y) in enumerate(train):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            learner.fit_task(loader(x, y))
        grown = learner.parameter_growth()
        assert grown <= 1.5  # the cap is a bound: the growth that would pass it is cut to fit
        report = [r for r in learner.capacity_report() if r["task"] == t]
        stopped = [str(w.message) for w in caught if "stops growing" in str(w.message)]
        if stopped:
            capped_at = t
            assert stopped[0].startswith(f"grow='auto' stops growing: the model has {grown:.2f}x its initial "
                                         "parameters, and a pool of 90% of each layer's initial width would pass its "
                                         f"cap of 1.5x (rerelrp.growth.AUTO_MAX_PARAMETERS): task {t} got "
                                         f"{sum(learner.growth_[t])} new unit")
        elif t > 0 and capped_at is None:
            assert all(r["free"] + r["new"] >= 11 for r in report)  # the pool the task started with
        elif capped_at is not None:
            assert learner.growth_[t] == [0, 0]
    assert capped_at is not None and learner.grow_ == 0.9 and learner.parameter_growth() > 1.45


def test_a_budget_set_after_an_open_ended_start_forecasts_a_layer_that_will_not_last(digits):
    train, _ = digits
    learner = rerelrp.ReReLRP(narrow(), epochs=10, min_keep=0.3, grow=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for x, y in train[:2]:
            learner.fit_task(loader(x, y))
    learner.set_params(n_tasks=12)  # 10 more tasks: at 3 and 2 units a task, the layers' 7 free units will not do
    with pytest.warns(RuntimeWarning, match=r"capacity forecast after 3 tasks: at the rate so far, '0' \(\d+ of 12 "
                                            r"free, [\d.]+ taken per task: [\d.]+ tasks' worth\).* will not last the 9 "
                                            r"tasks still expected \(n_tasks=12\)"):
        learner.fit_task(loader(*train[2]))


def test_a_task_learned_at_chance_is_not_learned_silently(digits):
    train, _ = digits
    x, y = train[0]
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]  # labels carry no signal
    learner = rerelrp.ReReLRP(digits_mlp(), epochs=3, progress=False)
    with pytest.warns(RuntimeWarning, match=r"no better than always answering its most frequent class \(\d+\.\d% of "
                                            r"its validation images\); 256 of 256 units were free for it.*train it "
                                            r"longer") as record:
        learner.fit_task(loader(x, shuffled))
    assert not any("n_tasks" in str(w.message) for w in record)  # capacity was not the cause: no advice about it
    learner = rerelrp.ReReLRP(digits_mlp(), epochs=3, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        learner.fit_task(loader(x, y))  # the real labels: no warning


def test_pruning_never_prunes_frozen_units_and_honours_the_budget():
    scores = torch.arange(20.0)  # unit 0 is the least relevant
    frozen = [torch.arange(10) < 4, torch.zeros(10, dtype=torch.bool)]
    result = prune_to_threshold(scores, [10, 10], lambda keep: 1.0, acc_drop=2.0, frozen=frozen)
    assert torch.cat(result.keep)[:4].all() and result.n_pruned == 16  # every free unit pruned at no cost

    def needs_eight(keep):  # accurate while at least 8 free units are kept
        return 1.0 if int(torch.cat(keep)[4:].sum()) >= 8 else 0.5

    free = prune_to_threshold(scores, [10, 10], needs_eight, acc_drop=2.0, frozen=frozen)
    assert torch.cat(free.keep)[12:].all() and not torch.cat(free.keep)[4:12].any()  # the 8 most relevant
    roomy = prune_to_threshold(scores, [10, 10], needs_eight, acc_drop=2.0, frozen=frozen, budget=[6, 10])
    assert torch.equal(torch.cat(roomy.keep), torch.cat(free.keep)) and not roomy.over_threshold
    tight = prune_to_threshold(scores, [10, 10], needs_eight, acc_drop=2.0, frozen=frozen, budget=[2, 3])
    kept = torch.cat(tight.keep)
    assert kept[[8, 9, 17, 18, 19]].all() and int(kept[4:].sum()) == 5  # each layer's most relevant, its budget
    assert tight.over_threshold and tight.budget == [2, 3] and tight.accuracy == 0.5


def test_paired_drop_is_the_raw_difference_at_half_confidence_and_lower_above():
    base = torch.tensor([True] * 70 + [False] * 8)
    pruned = base.clone()
    pruned[:3] = False
    assert paired_drop(base, pruned, 0.5) == pytest.approx(3 / 78)
    assert paired_drop(base, pruned, 0.9) < 3 / 78
    assert paired_drop(base, base, 0.99) == 0.0


def test_free_channels_get_the_new_tasks_batchnorm_statistics(digits):
    """The statistics of a free channel are its input's mean and (unbiased) variance on the new task's inputs, with
    the earlier layers' free channels already renormalised; kept channels and their old answers stay as they were."""
    train, _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()
    units = find_units(model)
    masks = [[torch.arange(8) < 4, torch.arange(8) % 2 == 0]]  # one task keeps these channels
    old, new = train[0][0].view(-1, 1, 8, 8), train[1][0].view(-1, 1, 8, 8)
    with torch.no_grad(), masked(units, masks[0]):
        answers = model(old)
    refresh_free_statistics(model, units, masks, new)
    with torch.no_grad(), masked(units, masks[0]):
        assert torch.equal(model(old), answers)
    seen = []
    with torch.no_grad(), hooks(*(model[i].register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
                                  for i in (1, 4))):
        model(new)
    for norm, kept, inputs in zip((model[1], model[4]), masks[0], seen):
        values = inputs.transpose(0, 1).flatten(1)
        torch.testing.assert_close(norm.running_mean[~kept], values[~kept].mean(1))
        torch.testing.assert_close(norm.running_var[~kept], values[~kept].var(1))
        assert torch.equal(norm.running_mean[kept], torch.zeros(int(kept.sum())))  # untouched initial values


@pytest.mark.parametrize("prune_rounds", [1, 3])
def test_a_budget_that_costs_more_than_acc_drop_is_warned_after_any_number_of_rounds(digits, prune_rounds):
    """One task of all ten digits with a budget for 128 tasks: one free unit per layer, far below what it needs. The
    later rounds prune the units the first round's budget forced as already pruned: the budget still caused it."""
    train, test = digits
    x, y = torch.cat([x for x, _ in train]), torch.cat([y for _, y in train])
    vx, vy = torch.cat([x for x, _ in test]), torch.cat([y for _, y in test])
    learner = rerelrp.ReReLRP(digits_mlp(), epochs=5, n_tasks=128, prune_rounds=prune_rounds,
                              drop_measure="accuracy", progress=False)
    with pytest.warns(RuntimeWarning, match=r"task 0 needed more than its budget of 2 free units") as record:
        learner.fit_task(loader(x, y), val_loader=loader(vx, vy))
    assert {w.filename for w in record if "budget" in str(w.message)} == {__file__}  # the caller's line
    result = learner.prune_results_[0]
    assert result.over_threshold and result.budget == [1, 1]
    assert result.accuracy < result.base_accuracy - learner.acc_drop / 100
    assert result.accuracy == pytest.approx(float((learner.predict(vx, task_id=0) == vy).float().mean()))


def test_a_budget_the_task_fits_in_is_not_over_the_threshold(digits):
    train, _ = digits
    learner = rerelrp.ReReLRP(digits_mlp(), epochs=5, n_tasks=2, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        learner.fit_task(loader(*train[0]))
    assert not learner.prune_results_[0].over_threshold


def test_summary_states_what_each_task_was_given_and_survives_a_save(default_learner, tmp_path):
    text = default_learner.summary()
    lines = text.splitlines()
    n_warnings = len(default_learner.warnings_)
    assert len(lines) == 5 + len(default_learner.tasks_) + n_warnings
    report = default_learner.capacity_report()
    for t, (line, result) in enumerate(zip(lines[1:], default_learner.prune_results_)):
        assert line.startswith(f"{t} | {default_learner.tasks_[t]} | ")
        for r, budget in zip([r for r in report if r["task"] == t], result.budget or [None] * 2):
            assert f"{r['layer']}: {r['kept']} ({r['new']}) / {'-' if budget is None else budget}, +{r['grown']}, " \
                   f"{r['free']} free" in line
        assert f"{result.accuracy:.1%} ({result.base_accuracy:.1%}), {result.measure}" in line
    budget, detectors, inputs, said = lines[1 + len(default_learner.tasks_):5 + len(default_learner.tasks_)]
    assert budget.startswith("budget: open-ended (n_tasks=None: at most 25% of the free units per task); "
                             "grow='auto' -> 0.25; parameters ")
    assert f"parameters {default_learner.parameter_growth():.2f}x" in budget
    assert "detector_space='auto' -> 'layers'" in detectors
    assert inputs == (f"input space: {default_learner.input_recognizer_.memory.widths[0]} features, "
                      "input_filters='patches', input_weight=1.0")
    assert said == f"warnings: {n_warnings}"
    for line, (t, kind, message) in zip(lines[-n_warnings:] if n_warnings else [], default_learner.warnings_):
        assert line == f"  task {t} [{kind}]: {message}"
    loaded = rerelrp.load(default_learner.save(tmp_path / "learner.zip"), digits_mlp(seed=3))
    assert loaded.summary() == text
