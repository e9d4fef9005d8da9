"""Save, load and resume: complete, safe (nothing is unpickled), atomic."""
import functools
import os
import pickle
import signal
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import rerelrp
from rerelrp import InvalidParameterError, ReReLRP, UntrustedFileError
from benchmarks.refused_loads import rewritten
from conftest import digits_mlp, loader


def learn(train, n_tasks, **options):
    learner = ReReLRP(digits_mlp(), epochs=5, progress=False, **options)
    for x, y in train[:n_tasks]:
        learner.fit_task(loader(x, y))
    return learner


@pytest.fixture(scope="module")
def saves(digits, tmp_path_factory):
    """``saves(recognizer)``: a learner of 3 tasks with that recognizer, and its save; each trained once for the
    module (a module fixture with params, overridden by a test's indirect parametrization, is set up anew for each
    such test)."""
    train, _ = digits
    made = {}

    def get(recognizer):
        if recognizer not in made:
            learner = learn(train, 3, optimizer=functools.partial(torch.optim.AdamW, weight_decay=0.01),
                            recognizer=recognizer)
            made[recognizer] = learner, learner.save(tmp_path_factory.mktemp("save") / "learner.rerelrp")
        return made[recognizer]

    return get


@pytest.fixture(scope="module", params=["gaussian", "paper"])
def saved(saves, request):
    """A learner of 3 tasks with each recognizer, and its save."""
    return saves(request.param)


@pytest.fixture(scope="module")
def two_tasks(digits, tmp_path_factory):
    """A learner of 2 tasks and its save: the contents the validation of a load is checked on."""
    train, _ = digits
    learner = learn(train, 2)
    return learner, learner.save(tmp_path_factory.mktemp("save") / "learner.zip")



def test_round_trip_gives_identical_predictions(saved, digits):
    learner, path = saved
    x = torch.cat([x for x, _ in digits[1][:3]])
    loaded = rerelrp.load(path, digits_mlp(seed=99))
    assert loaded.tasks_ == learner.tasks_
    assert torch.equal(loaded.predict(x), learner.predict(x))
    np.testing.assert_array_equal(loaded.predict_proba_task(x), learner.predict_proba_task(x))
    for t in range(3):
        assert torch.equal(loaded.predict(x, task_id=t), learner.predict(x, task_id=t))
    assert loaded.free_capacity() == learner.free_capacity()
    assert loaded.get_params()["optimizer"].keywords == {"weight_decay": 0.01}
    assert loaded.input_range_ == learner.input_range_
    torch.testing.assert_close(loaded.explain(x[:8]), learner.explain(x[:8]))


def test_a_learner_without_input_range_saves_loads_and_explains(saved, digits, tmp_path):
    learner, path = saved
    old = rerelrp.load(path, digits_mlp(seed=99))
    old.input_range_ = None  # as loaded from a file written before input_range_ was kept
    again = rerelrp.load(old.save(tmp_path / "old.rerelrp"), digits_mlp(seed=98))
    assert again.input_range_ is None
    x = digits[1][0][0][:8]
    torch.testing.assert_close(again.explain(x), learner.explain(x))  # digits span [0, 1] in any batch of them


def test_learning_after_load_equals_learning_without_it(digits, tmp_path):
    train, test = digits
    straight = learn(train, 2)
    path = straight.save(tmp_path / "two.rerelrp")
    resumed = rerelrp.load(path, digits_mlp(seed=5))
    for learner in (straight, resumed):
        learner.fit_task(loader(*train[2]))
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.cat([x for x, _ in test[:3]])
    assert torch.equal(straight.predict(x), resumed.predict(x))


class _Exploit:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_in_place_of_any_member_is_refused_and_never_run(saved, tmp_path):
    learner, path = saved
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    detectors = {"detector-0.skops", "detector-1.skops"} if learner.recognizer == "paper" else set()
    assert {"meta.json", "tensors.safetensors"} | detectors == set(members)
    for name in members:
        marker = tmp_path / f"ran-{name}"
        forged = tmp_path / f"forged-{name}.rerelrp"
        with zipfile.ZipFile(forged, "w") as archive:
            for other, data in members.items():
                archive.writestr(other, pickle.dumps(_Exploit(marker)) if other == name else data)
        with pytest.raises(UntrustedFileError, match="untrusted|not a rerelrp save"):
            rerelrp.load(forged, digits_mlp())
        assert not marker.exists(), f"loading a forged {name} ran code"
    whole = tmp_path / "whole.pickle"
    whole.write_bytes(pickle.dumps(_Exploit(tmp_path / "ran-whole")))
    with pytest.raises(UntrustedFileError, match="not a rerelrp save"):
        rerelrp.load(whole, digits_mlp())
    assert not (tmp_path / "ran-whole").exists()


def test_untrusted_detector_types_are_named(saves, tmp_path):
    _, path = saves("paper")  # the default recognizer saves no skops file
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer
    forged = tmp_path / "forged.rerelrp"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(forged, "w") as dst:
        for name in src.namelist():
            data = sio.dumps(FunctionTransformer(os.getcwd)) if name == "detector-0.skops" else src.read(name)
            dst.writestr(name, data)
    with pytest.raises(UntrustedFileError, match=r"untrusted types \['posix.getcwd'\]"):
        rerelrp.load(forged, digits_mlp())


def test_a_paper_learner_with_a_custom_detector_loads(digits, tmp_path):
    train, test = digits
    learner = ReReLRP(digits_mlp(), epochs=3, recognizer="paper", detector=LogisticRegression(C=0.5), progress=False)
    for x, y in train[:2]:
        learner.fit_task(loader(x, y))
    loaded = rerelrp.load(learner.save(tmp_path / "paper.zip"), digits_mlp())
    assert loaded.detector.C == 0.5
    assert torch.equal(loaded.predict(test[0][0]), learner.predict(test[0][0]))



def test_other_format_or_architecture_is_named_and_other_versions_of_the_format_load(saved, digits, tmp_path):
    learner, path = saved
    with pytest.raises(ValueError, match=r"another architecture; differences: 0.weight: saved \[\[128, 64\]"):
        rerelrp.load(path, torch.nn.Sequential(torch.nn.Linear(64, 100), torch.nn.ReLU(), torch.nn.Linear(100, 128),
                                               torch.nn.ReLU(), torch.nn.Linear(128, 10)))
    old = rewritten(path, tmp_path / "old.rerelrp", lambda meta: meta.update(rerelrp="0.0.1"))
    x = digits[1][0][0]
    assert torch.equal(rerelrp.load(old, digits_mlp()).predict(x), learner.predict(x))
    other = rewritten(path, tmp_path / "other.rerelrp", lambda meta: meta.update(format=2))
    with pytest.raises(ValueError, match=rf"save format 2; this is rerelrp {rerelrp.__version__}, which reads format"):
        rerelrp.load(other, digits_mlp())


def digits_cnn(activation=torch.nn.ReLU, pool=torch.nn.MaxPool2d) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Unflatten(1, (1, 8, 8)), torch.nn.Conv2d(1, 8, 3, padding=1), activation(),
                               pool(2), torch.nn.Flatten(), torch.nn.Linear(128, 32), activation(),
                               torch.nn.Linear(32, 10))


@pytest.mark.parametrize("other, message", [
    (lambda: digits_cnn(activation=torch.nn.Tanh), "2: saved 'ReLU' vs model 'Tanh'; 6: saved 'ReLU'"),
    (lambda: digits_cnn(pool=torch.nn.AvgPool2d), "3: saved 'MaxPool2d' vs model 'AvgPool2d'"),
], ids=["tanh-for-relu", "avgpool-for-maxpool"])
def test_a_save_is_refused_by_a_model_whose_parameter_free_modules_differ(digits, tmp_path, other, message):
    """Same parameters, other computation: a ReLU save answered 25 % of inputs differently in a Tanh model."""
    train, test = digits
    learner = ReReLRP(digits_cnn(), epochs=1, progress=False).fit_task(loader(*train[0]))
    path = learner.save(tmp_path / "cnn.zip")
    model = other()
    before = model_state(model)
    with pytest.raises(ValueError, match=r"saved from a model with other modules \(activations, poolings\); "
                                         r"differences: " + message):
        rerelrp.load(path, model)
    assert same_state(model, before)
    assert torch.equal(rerelrp.load(path, digits_cnn()).predict(test[0][0]), learner.predict(test[0][0]))


def test_options_that_cannot_be_saved_must_be_given_to_load(digits, tmp_path):
    train, _ = digits
    custom = lambda params, lr: torch.optim.SGD(params, lr=lr)  # noqa: E731
    path = learn(train, 1, optimizer=custom).save(tmp_path / "custom.rerelrp")
    with pytest.raises(ValueError, match=r"options \['optimizer'\] were not saved"):
        rerelrp.load(path, digits_mlp())
    assert rerelrp.load(path, digits_mlp(), optimizer=custom).optimizer is custom


SAVER = """
import sys, time, zipfile, rerelrp
sys.path.insert(0, sys.argv[2])
from conftest import digits_mlp
learner = rerelrp.load(sys.argv[1], digits_mlp())
write = zipfile.ZipFile.writestr
def slow_write(self, name, data, *args, **kwargs):  # announce each member, then dawdle: the parent kills us here
    write(self, name, data, *args, **kwargs)
    if name in ("meta.json", "tensors.safetensors") or name.startswith("detector-"):  # not skops' own zip
        print("wrote", name, flush=True)
        time.sleep(0.5)
zipfile.ZipFile.writestr = slow_write
learner.save(sys.argv[1])
"""


@pytest.mark.parametrize("recognizer, kill_after", [("gaussian", "meta.json"), ("gaussian", "tensors.safetensors"),
                                                    ("paper", "detector-1.skops")])
def test_a_save_killed_halfway_leaves_the_previous_save_intact(saves, digits, tmp_path, recognizer, kill_after):
    learner, path = saves(recognizer)
    target = tmp_path / "target.rerelrp"
    target.write_bytes(path.read_bytes())
    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(target), str(Path(__file__).parent)],
                             stdout=subprocess.PIPE, text=True)
    for line in saver.stdout:
        if line.strip() == f"wrote {kill_after}":
            saver.send_signal(signal.SIGKILL)
            break
    assert saver.wait() == -signal.SIGKILL, "the saver finished before it could be killed"
    assert list(tmp_path.glob(".target.rerelrp.*.partial")), "the half-written save is not where expected"
    assert target.read_bytes() == path.read_bytes()
    x = digits[1][2][0]
    assert torch.equal(rerelrp.load(target, digits_mlp()).predict(x), learner.predict(x))


def test_saves_keep_the_file_mode_and_clean_what_killed_saves_left(two_tasks, tmp_path):
    learner, _ = two_tasks
    path = tmp_path / "learner.zip"
    mask = os.umask(0o022)
    os.umask(mask)
    learner.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    path.chmod(0o640)
    dead = tmp_path / f".{path.name}.999999999.partial"  # a writer killed halfway: no such process
    dead.write_bytes(b"half a save")
    learner.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and not dead.exists()
    assert not list(tmp_path.glob("*.partial"))


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        rerelrp.load(tmp_path / "nothing.zip", digits_mlp())


def test_a_member_that_would_decompress_far_beyond_its_size_is_refused_unread(two_tasks, tmp_path):
    _, path = two_tasks
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "meta.json":
                data = data[:-1] + b" " * (200 << 20) + b"}"  # 200 MB of spaces: valid JSON, ~200 KB deflated
            dst.writestr(name, data)
    assert bomb.stat().st_size < 2 << 20
    with pytest.raises(UntrustedFileError, match="meta.json .* would decompress"):
        rerelrp.load(bomb, digits_mlp())


def drop_frozen(tensors):
    for key in [k for k in tensors if k.startswith("frozen.")]:
        del tensors[key]


def nan_mean(tensors):
    key = next(k for k in tensors if k.startswith("means."))
    tensors[key] = torch.full_like(tensors[key], float("nan"))


def float_mask(tensors):
    tensors["mask.0.0"] = tensors["mask.0.0"].float()


def short_mask(tensors):
    tensors["mask.1.1"] = tensors["mask.1.1"][:-1]


def missing_mask(tensors):
    del tensors["mask.1.0"]


@pytest.mark.parametrize("meta_change, tensor_change, message", [
    (None, drop_frozen, "does not freeze every row"),
    (None, nan_mean, "not finite"),
    (None, float_mask, "mask.0.0 as torch.float32"),
    (None, short_mask, r"mask.1.1 as torch.bool \(127,\)"),
    (None, missing_mask, "do not fit together.*mask.1.0"),
    (lambda meta: meta["tasks"][1].__setitem__(0, 99), None, "not two or more distinct ids"),
    (lambda meta: meta["tasks"].__setitem__(1, meta["tasks"][0]), None, "classes .* of an earlier task"),
    (lambda meta: meta["tasks"].pop(), None, "memory of 2 tasks for 1 learned"),
])
def test_inconsistent_contents_are_refused_naming_file_and_member(two_tasks, tmp_path, meta_change, tensor_change,
                                                                  message):
    _, path = two_tasks
    bad = rewritten(path, tmp_path / "bad.zip", meta_change, tensor_change)
    with pytest.raises(UntrustedFileError, match=message) as error:
        rerelrp.load(bad, digits_mlp())
    assert str(bad) in str(error.value)


def model_state(model) -> dict:
    """Every parameter and buffer of ``model``, cloned: what a refused load must leave as it was."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model, state: dict) -> bool:
    now = model.state_dict()
    return list(now) == list(state) and all(now[k].shape == v.shape and torch.equal(now[k], v)
                                            for k, v in state.items())


@pytest.mark.parametrize("option, value", [("detector_space", "head"), ("detector_space", "units"),
                                           ("recognizer", "paper")])
def test_load_refuses_to_change_what_the_first_task_fixed(two_tasks, option, value):
    """Detectors rebuilt in another space answer otherwise than the saved learner: refused as set_params does."""
    _, path = two_tasks
    model = digits_mlp(seed=3)
    before = model_state(model)
    with pytest.raises(InvalidParameterError, match=rf"{option} cannot change once a task is learned .*it is "
                                                    rf"'\w+', got '{value}'") as error:
        rerelrp.load(path, model, **{option: value})
    assert not isinstance(error.value, UntrustedFileError)
    assert same_state(model, before)
    for space in ("layers", "auto"):  # the space the memory is in, and the saved option that chose it: accepted
        loaded = rerelrp.load(path, digits_mlp(seed=3), detector_space=space, recognizer="gaussian")
        assert loaded.detector_space_ == "layers" and loaded.detector_space == space


@pytest.mark.parametrize("given, message", [
    ({"batch_size": 0}, "batch_size must be a positive int"),
    ({"known_fraction": 5}, r"known_fraction must be a number in \(0, 1\]"),
    ({"lr": -1}, "lr must be a number > 0"),
    ({"bogus": 1}, "'bogus' is not an option"),
    ({"device": "meta"}, "device must be .*meta device holds shapes without data"),
    ({"recognizer": "paper", "detector_space": "head"}, "detector_space='head' applies to recognizer='gaussian'"),
])
def test_invalid_options_given_to_load_are_invalid_parameters_not_untrusted_files(two_tasks, given, message):
    _, path = two_tasks
    model = digits_mlp(seed=3)
    before = model_state(model)
    with pytest.raises(InvalidParameterError, match=message) as error:
        rerelrp.load(path, model, **given)
    assert not isinstance(error.value, UntrustedFileError)
    assert same_state(model, before)


def test_invalid_options_in_the_file_are_refused_and_can_be_given_instead(two_tasks, digits, tmp_path):
    learner, path = two_tasks
    bad = rewritten(path, tmp_path / "bad.zip", lambda meta: meta["options"].update(batch_size=0))
    with pytest.raises(UntrustedFileError, match="batch_size must be a positive int") as error:
        rerelrp.load(bad, digits_mlp())
    assert "meta.json" in str(error.value) and str(bad) in str(error.value)
    x = digits[1][0][0]
    assert torch.equal(rerelrp.load(bad, digits_mlp(), batch_size=64).predict(x), learner.predict(x))


def set_input_range(value):
    return lambda meta: meta.update(input_range=value)


def set_widths(meta):  # 18 KB of file that would make load grow the first layer to 200,000 units
    meta["widths"]["0"] = 200_000
    meta["growth"][1][0] = 200_000 - meta["initial_sizes"][0]


@pytest.mark.parametrize("meta_change, message", [
    (set_input_range([float("nan"), 1.0]), r"input_range .* finite"),
    (set_input_range([1.0, 0.0]), r"input_range .* low <= high"),
    (set_input_range([0.0, "1"]), r"input_range"),
    (lambda meta: meta.update(input_shape=[65]), r"input_shape \[65\].*cannot take"),
    (lambda meta: meta.update(input_shape=[0]), r"input_shape \[0\]"),
    (lambda meta: meta.update(initial_sizes=[*meta["initial_sizes"], 5]), r"initial_sizes .* widths"),
    (lambda meta: meta.update(initial_sizes=[129] + meta["initial_sizes"][1:]), r"initial_sizes .* widths"),
    (set_widths, r"widths .* '0': 200000 units.*model\.0\.weight.*128"),
    (lambda meta: meta["architecture"][0][1].__setitem__(0, 200_000), r"architecture .*model\.0\.weight"),
    (lambda meta: meta.update(modules=[["0", 5]]), r"modules \[\['0', 5\]\] in meta.json is not a list of \[name, "
                                                   r"class name\] pairs"),
])
def test_inconsistent_meta_is_refused_before_the_model_is_touched(two_tasks, tmp_path, monkeypatch, meta_change,
                                                                  message):
    """meta.json is checked against itself and against the file's tensors before anything is grown or loaded: a
    load allocates no more than about what the file declares, and a refused one leaves the caller's model as it
    was."""
    from rerelrp import growth

    grown = []
    real = growth.grow_layer

    def recording(module, path, n_new, frozen=None):
        if not module.weight.is_meta:
            grown.append((module, n_new))
        return real(module, path, n_new, frozen)

    monkeypatch.setattr(growth, "grow_layer", recording)
    _, path = two_tasks
    bad = rewritten(path, tmp_path / "bad.zip", meta_change)
    assert bad.stat().st_size < 1 << 20
    model = digits_mlp(seed=3)
    before = model_state(model)
    with pytest.raises(UntrustedFileError, match=message) as error:
        rerelrp.load(bad, model)
    assert str(bad) in str(error.value)
    assert grown == [] and same_state(model, before)


@pytest.fixture(scope="module")
def grown_save(digits, tmp_path_factory):
    """A learner of 2 tasks that grew, saved, and a model of its original widths."""
    train, _ = digits

    def narrow(seed=0):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                                   torch.nn.ReLU(), torch.nn.Linear(32, 10))

    learner = ReReLRP(narrow(), epochs=3, grow=0.9, progress=False)
    for x, y in train[:2]:
        learner.fit_task(loader(x, y))
    assert any(learner.growth_[1])
    return learner, learner.save(tmp_path_factory.mktemp("save") / "grown.zip"), narrow


def test_a_refused_load_of_a_grown_save_leaves_the_model_at_its_widths_and_weights(grown_save, digits, tmp_path):
    learner, path, narrow = grown_save
    bad = rewritten(path, tmp_path / "bad.zip", tensor_change=nan_mean)  # refused after the model was widened
    model = narrow(seed=3)
    before = model_state(model)
    with pytest.raises(UntrustedFileError, match="not finite"):
        rerelrp.load(bad, model)
    assert same_state(model, before) and model[0].out_features == 32 and model[2].in_features == 32
    x = digits[1][0][0]
    assert torch.equal(rerelrp.load(path, model).predict(x), learner.predict(x))  # the same model loads after


def test_a_model_on_the_meta_device_is_refused_naming_it(two_tasks):
    _, path = two_tasks
    with pytest.raises(InvalidParameterError, match=r"model must be a torch.nn.Module.*'0.weight' is on the meta "
                                                    r"device"):
        rerelrp.load(path, digits_mlp().to("meta"))
