"""Save, load and resume: complete, safe (nothing is unpickled), atomic."""
import functools
import json
import os
import pickle
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import rerelrp
from rerelrp import ReReLRP, UntrustedFileError
from conftest import digits_mlp, loader


def learn(train, n_tasks, **options):
    learner = ReReLRP(digits_mlp(), epochs=5, progress=False, **options)
    for x, y in train[:n_tasks]:
        learner.fit_task(loader(x, y))
    return learner


@pytest.fixture(scope="module", params=["gaussian", "paper"])
def saved(digits, tmp_path_factory, request):
    """A learner of 3 tasks with each recognizer, and its save."""
    train, test = digits
    learner = learn(train, 3, optimizer=functools.partial(torch.optim.AdamW, weight_decay=0.01),
                    recognizer=request.param)
    path = learner.save(tmp_path_factory.mktemp("save") / "learner.rerelrp")
    return learner, path


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


@pytest.mark.parametrize("saved", ["paper"], indirect=True)  # the default recognizer saves no skops file
def test_untrusted_detector_types_are_named(saved, tmp_path):
    _, path = saved
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer
    forged = tmp_path / "forged.rerelrp"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(forged, "w") as dst:
        for name in src.namelist():
            data = sio.dumps(FunctionTransformer(os.getcwd)) if name == "detector-0.skops" else src.read(name)
            dst.writestr(name, data)
    with pytest.raises(UntrustedFileError, match=r"untrusted types \['posix.getcwd'\]"):
        rerelrp.load(forged, digits_mlp())


def rewritten(path: Path, out: Path, meta_change=None, tensor_change=None) -> Path:
    """A copy of the save at ``path`` with ``meta_change(meta)`` / ``tensor_change(tensors)`` applied in place."""
    from safetensors.torch import load as load_tensors, save as save_tensors

    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "meta.json" and meta_change:
                meta = json.loads(data)
                meta_change(meta)
                data = json.dumps(meta).encode()
            if name == "tensors.safetensors" and tensor_change:
                tensors = load_tensors(data)
                tensor_change(tensors)
                data = save_tensors(tensors)
            dst.writestr(name, data)
    return out


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


@pytest.mark.parametrize("saved, kill_after", [("gaussian", "meta.json"), ("gaussian", "tensors.safetensors"),
                                               ("paper", "detector-1.skops")], indirect=["saved"])
def test_a_save_killed_halfway_leaves_the_previous_save_intact(saved, digits, tmp_path, kill_after):
    learner, path = saved
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
