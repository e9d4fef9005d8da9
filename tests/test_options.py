"""Option validation (rerelrp.options): every option's refusals, the rules between options and those the first task
fixes, at first use (fit_task, the verbs) and through set_params, which leaves the options as they were after a
refusal. Real data: scikit-learn's 8x8 digits."""
import re

import numpy as np
import pytest
from zennit.composites import EpsilonPlusFlat
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import rerelrp
from rerelrp import InvalidParameterError, ReReLRP
from rerelrp.options import CONSTRAINTS, validate
from conftest import digits_mlp, loader

#: What the message of a refusal says each option accepts.
ACCEPTED = {
    "model": r"a torch\.nn\.Module",
    "epochs": "a positive int",
    "lr": "a number > 0",
    "optimizer": r"a callable \(params, lr=\.\.\.\) -> torch\.optim\.Optimizer",
    "acc_drop": r"a number in \[0, 100\] \(percentage points",
    "drop_confidence": r"a number in \[0\.5, 1\) \(0\.5: the raw accuracy difference\)",
    "drop_measure": "one of 'auto', 'accuracy', 'probability'",
    "min_keep": r"a number in \[0, 1\] \(a fraction of each layer's units\)",
    "prune_rounds": "a positive int",
    "retrain_epochs": "None or an int >= 0",
    "reset_free": "a bool",
    "n_tasks": r"None or a positive int \(the tasks the stream will have\)",
    "grow": r"one of 'auto' or a number in \[0, 1\) \(the fraction of each layer's initial width",
    "known_fraction": r"a number in \(0, 1\] \(the share of each task's validation inputs",
    "n_reference": "a positive int",
    "n_features": "one of 'auto' or a positive int",
    "n_components": "a positive int",
    "later_tasks": r"None or an int >= 0 \(tasks after its own whose classes each detector keeps; None: all\)",
    "detector_space": "one of 'auto', 'units', 'head', 'layers'",
    "recognizer": "one of 'gaussian', 'paper'",
    "input_weight": r"a number >= 0 \(the power of the input recognizer",
    "input_filters": "one of 'random', 'patches'",
    "val_fraction": r"a number in \(0, 1\)",
    "composite": "None or a zennit Composite",
    "detector": "None or a scikit-learn classifier with fit and predict_proba",
    "batch_size": "a positive int",
    "device": "None or a torch device such as 'cpu' or 'cuda:0'",
    "random_state": r"an int \(rerelrp's runs are reproducible by design",
    "progress": "a bool",
}

#: Every option's refused values.
BAD = {
    "model": [3, "mlp", None],
    "epochs": [0, -1, 1.5, True, "3", None],
    "lr": [0, -1e-3, True, "1e-3", None],
    "optimizer": ["adam", None],
    "acc_drop": [-1, 100.5, "2", None],
    "drop_confidence": [0.4, 1.0, "0.9"],
    "drop_measure": ["loss", None, 1],
    "min_keep": [-0.1, 1.5, None],
    "prune_rounds": [0, 1.0, True],
    "retrain_epochs": [-1, 1.5, "2"],
    "reset_free": [1, "yes", None],
    "n_tasks": [0, -2, 2.0, True],
    "grow": [1.0, -0.1, True, "0.5"],
    "known_fraction": [0.0, 1.01, None],
    "n_reference": [0, 10.0],
    "n_features": [0, None],
    "n_components": [0, "4"],
    "later_tasks": [-1, 2.0, "all", True],
    "detector_space": ["pixels", "Units", None],
    "recognizer": ["forest", "Gaussian", None],
    "input_weight": [-0.5, "1", None, True],
    "input_filters": ["kmeans", "Random", None],
    "val_fraction": [0, 1, 1.5],
    "composite": ["epsilon", 1],
    "detector": ["forest", 1, object()],
    "batch_size": [0, 32.0, None],
    "device": ["gpu", 1.5],
    "random_state": [None, 1.5, True, "0"],
    "progress": [1, "no", None],
}
CASES = [pytest.param(option, value, id=f"{option}={type(value).__name__ if type(value) is object else repr(value)}")
         for option, values in BAD.items() for value in values]  # ids without addresses: xdist workers must agree
#: Options whose refusal other options would hide: set with them.
WITH = {"detector": {"recognizer": "paper"}}


def shown(value) -> str:
    return re.escape(repr(value))


def refusal(option, value) -> str:
    return rf"^{option} must be {ACCEPTED[option]}.*, got {shown(value)}"


def learner_with(**options) -> ReReLRP:
    model = options.pop("model") if "model" in options else digits_mlp()
    return ReReLRP(model, **{"epochs": 1, "progress": False, **options})


@pytest.fixture(scope="module")
def fitted(digits):
    """One digit task learned (default recognizer and detector space)."""
    return learner_with(epochs=2).fit_task(loader(*digits[0][0]))


def test_the_table_holds_every_option_and_accepts_the_defaults():
    options = ReReLRP(digits_mlp()).get_params(deep=False)
    assert set(CONSTRAINTS) == set(options) == set(ACCEPTED) == set(BAD)
    validate(options)


def test_the_error_is_a_value_error_and_a_type_error():
    assert issubclass(InvalidParameterError, ValueError) and issubclass(InvalidParameterError, TypeError)
    assert "InvalidParameterError" in rerelrp.__all__


@pytest.mark.parametrize("option, value", CASES)
def test_each_refused_value_is_named_at_first_use(digits, option, value):
    learner = learner_with(**{**WITH.get(option, {}), option: value})
    with pytest.raises(InvalidParameterError, match=refusal(option, value)):
        learner.fit_task(loader(*digits[0][0]))
    assert not hasattr(learner, "tasks_")  # nothing learned, the model untouched


@pytest.mark.parametrize("option, value", CASES)
def test_each_refused_value_is_named_by_set_params_which_changes_nothing(option, value):
    learner = learner_with(**WITH.get(option, {}))
    before = learner.get_params(deep=False)
    with pytest.raises(InvalidParameterError, match=refusal(option, value)):
        learner.set_params(**{option: value})
    after = learner.get_params(deep=False)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


@pytest.mark.parametrize("option, value", CASES)
def test_validate_refuses_each_value_alone(option, value):
    with pytest.raises(InvalidParameterError, match=refusal(option, value)):
        validate({option: value})


@pytest.mark.parametrize("options", [
    {"acc_drop": 0, "drop_confidence": 0.5, "min_keep": 0.0, "known_fraction": 1.0, "grow": 0.0},
    {"acc_drop": 100, "min_keep": 1, "retrain_epochs": 0, "n_tasks": None, "val_fraction": 0.5},
    {"lr": np.float64(0.01), "random_state": np.int64(3), "epochs": 1, "device": torch.device("cpu")},
    {"device": "cpu", "retrain_epochs": None, "n_tasks": 5, "reset_free": np.bool_(False), "progress": True},
    {"recognizer": "paper", "detector": LogisticRegression(), "drop_measure": "probability"},
    {"recognizer": "gaussian", "detector_space": "layers", "composite": None},
])
def test_values_on_the_bounds_and_numpy_scalars_are_accepted(options):
    validate(options)
    learner = learner_with()
    learner.set_params(**options)
    assert all(learner.get_params(deep=False)[k] is v for k, v in options.items())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for machines without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", 0])
def test_cuda_without_a_gpu_is_named(digits, device):
    message = r"device must be None or a torch device .*: torch sees no CUDA device here"
    with pytest.raises(InvalidParameterError, match=message):
        learner_with(device=device).fit_task(loader(*digits[0][0]))
    learner = learner_with()
    with pytest.raises(InvalidParameterError, match=message):
        learner.set_params(device=device)
    assert learner.device is None


def test_an_unknown_option_is_named_with_the_nearest_one():
    learner = learner_with()
    with pytest.raises(InvalidParameterError, match=r"'lrr' is not an option \(did you mean 'lr'\?\)"):
        learner.set_params(lr=0.5, lrr=0.1)
    assert learner.lr == 1e-3
    with pytest.raises(InvalidParameterError, match="'colour' is not an option; the options are model, epochs"):
        validate({"colour": "red"})


class FakeDDP(DistributedDataParallel):
    """A DistributedDataParallel model without a process group (only its type matters here)."""

    def __init__(self, module: nn.Module):
        nn.Module.__init__(self)
        self.module = module


@pytest.mark.parametrize("options, message", [
    ({"detector_space": "head", "recognizer": "paper"},
     r"detector_space='head' applies to recognizer='gaussian' only; the paper's forests read relevance"),
    ({"detector_space": "layers", "recognizer": "paper"}, r"detector_space='layers' applies to recognizer='gaussian'"),
    ({"detector": LogisticRegression(), "recognizer": "gaussian"},
     r"detector applies to recognizer='paper' only \(the forests on relevance vectors\); recognizer='gaussian'"),
    ({"grow": 0.5, "model": "ddp"}, r"grow=0\.5: grow > 0 is not supported with DistributedDataParallel"),
])
def test_rules_between_options(digits, options, message):
    options = {**options, "model": FakeDDP(digits_mlp())} if options.get("model") == "ddp" else options
    with pytest.raises(InvalidParameterError, match=message):
        validate(options)
    with pytest.raises(InvalidParameterError, match=message):
        learner_with(**options).fit_task(loader(*digits[0][0]))
    for first, then in ((k, [o for o in options if o != k]) for k in options if k != "model"):
        learner = learner_with(**{k: v for k, v in options.items() if k != first})  # valid without ``first``
        before = learner.get_params(deep=False)
        with pytest.raises(InvalidParameterError, match=message):
            learner.set_params(**{first: options[first]})
        assert all(learner.get_params(deep=False)[k] is before[k] for k in before), (first, then)
    learner = learner_with(**({"model": options["model"]} if "model" in options else {}))
    with pytest.raises(InvalidParameterError, match=message):  # several at once, the learner's others left as set
        learner.set_params(**{k: v for k, v in options.items() if k != "model"})


def test_a_rule_between_options_reads_only_the_options_given():
    validate({"detector_space": "head"})  # the recognizer not given: no rule applies
    validate({"grow": 0.5})
    validate({"grow": 0.0, "model": FakeDDP(digits_mlp())})


def test_set_params_is_validated_on_a_learned_learner_and_leaves_it_as_it_was(fitted):
    with pytest.raises(InvalidParameterError, match=r"batch_size must be a positive int, got 0"):
        fitted.set_params(batch_size=0)
    assert fitted.batch_size == 256  # left as it was
    with pytest.raises(InvalidParameterError, match="batch_size must be a positive int"):
        fitted.set_params(known_fraction=0.9, batch_size=0)  # all or nothing
    assert fitted.known_fraction == 0.95 and fitted.batch_size == 256
    fitted.set_params(known_fraction=0.9)
    assert fitted.known_fraction == 0.9
    fitted.set_params(known_fraction=0.95)


@pytest.mark.parametrize("change, message", [
    ({"recognizer": "paper"}, r"recognizer cannot change once a task is learned \(the memory of the earlier tasks "
                              r"was kept for the other one\): it is 'gaussian', got 'paper'"),
    ({"detector_space": "head"}, r"detector_space cannot change once a task is learned \(the earlier tasks' "
                                 r"statistics live in another space\): it is 'layers', got 'head'"),
    ({"device": "cpu"}, r"device cannot change once a task is learned \(.*rerelrp\.load it with device=\.\.\.\): "
                        r"it is None, got 'cpu'"),
    ({"model": "other"}, r"model cannot change once a task is learned \(the masks, freeze masks and memory belong "
                         r"to its units.*: it is <Sequential model>, got <Sequential model>"),
    ({"recognizer": "paper", "detector": LogisticRegression()}, "recognizer cannot change once a task is learned"),
    ({"detector_space": "units", "lr": 0.5}, "detector_space cannot change once a task is learned"),
    ({"composite": EpsilonPlusFlat()}, r"composite cannot change once a task is learned \(the earlier tasks were "
                                       r"pruned"),  # was silently ignored: the first task's composite stayed
])
def test_what_the_first_task_fixes_cannot_change_through_set_params(fitted, change, message):
    change = {**change, "model": digits_mlp()} if "model" in change else change
    before = fitted.get_params(deep=False)
    with pytest.raises(InvalidParameterError, match=message):
        fitted.set_params(**change)
    assert all(fitted.get_params(deep=False)[k] is before[k] for k in before)


def test_what_the_first_task_fixed_can_be_set_to_the_same_value(fitted):
    assert fitted.detector_space_ == "layers"  # "auto" on a plain network
    fitted.set_params(model=fitted.model, device=None, recognizer="gaussian", detector_space="layers")
    assert fitted.recognizer == "gaussian" and fitted.detector_space == "layers" and fitted.device is None
    fitted.set_params(detector_space="auto")  # what it resolves to: the same space


@pytest.mark.parametrize("option, value, message", [
    ("recognizer", "paper", "recognizer cannot change once a task is learned"),
    ("detector_space", "head", "detector_space cannot change once a task is learned"),
])
def test_what_the_first_task_fixes_is_refused_by_fit_task_when_set_around_set_params(digits, option, value,
                                                                                      message):
    learner = learner_with(epochs=2).fit_task(loader(*digits[0][0]))
    setattr(learner, option, value)  # set around set_params: fit_task still refuses it
    with pytest.raises(InvalidParameterError, match=message):
        learner.fit_task(loader(*digits[0][1]))
    assert len(learner.tasks_) == 1


def test_an_option_set_around_set_params_is_refused_by_the_verbs(digits, fitted):
    x = digits[1][0][0]
    with pytest.raises(InvalidParameterError, match=r"known_fraction must be a number in \(0, 1\]"):
        fitted.set_params(known_fraction=0.0)
    assert fitted.known_fraction == 0.95
    fitted.known_fraction = 0.0  # set around set_params: the verbs still refuse it
    try:
        with pytest.raises(InvalidParameterError, match=r"known_fraction must be a number in \(0, 1\] .*, got 0\.0"):
            fitted.score_samples(x)
        with pytest.raises(InvalidParameterError, match="known_fraction must be"):
            fitted.predict(x, reject=True)
    finally:
        fitted.known_fraction = 0.95
    assert fitted.score_samples(x).shape == (len(x),)


def test_validate_with_fitted_values_refuses_only_a_change():
    model = digits_mlp()
    fixed = {"model": model, "device": "cpu", "recognizer": "gaussian", "detector_space": "units"}
    validate({"model": model, "device": "cpu", "lr": 0.1}, fitted=fixed)
    validate({"lr": 0.1}, fitted=fixed)
    for option, value in (("model", digits_mlp()), ("device", None), ("recognizer", "paper"), ("detector_space", "head")):
        with pytest.raises(InvalidParameterError, match=f"^{option} cannot change once a task is learned"):
            validate({option: value}, fitted=fixed)
