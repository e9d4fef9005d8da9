"""Promise: saves of format 3 written before the redesign (tests/data, made by rerelrp at commit eb47bfd on digits,
3 tasks, 3 epochs) load and give the answers they gave when they were written, and save again to the same members
(plus the record of the model's modules added since)."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import rerelrp
from rerelrp import architecture
from conftest import digits_mlp

LATER_TASKS_DEFAULT = inspect.signature(rerelrp.ReReLRP).parameters["later_tasks"].default

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def answers():
    return dict(np.load(DATA / "format3-answers.npz"))


@pytest.mark.parametrize("recognizer", ["gaussian", "paper"])
def test_a_format3_save_loads_and_answers_as_it_did(answers, recognizer):
    learner = rerelrp.load(DATA / f"format3-{recognizer}.zip", digits_mlp(seed=1))
    x = torch.from_numpy(answers["x"])
    assert np.array_equal(learner.predict(x).numpy(), answers[f"{recognizer}_predict"])
    assert np.array_equal(learner.predict_task(x).numpy(), answers[f"{recognizer}_task"])
    if recognizer == "gaussian":
        assert np.array_equal(learner.predict(x, reject=True).numpy(), answers["gaussian_reject"])
        np.testing.assert_allclose(learner.score_samples(x).numpy(), answers["gaussian_score"], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("recognizer", ["gaussian", "paper"])
def test_a_format3_save_loaded_and_saved_again_holds_the_same_members(tmp_path, recognizer):
    import zipfile

    learner = rerelrp.load(DATA / f"format3-{recognizer}.zip", digits_mlp(seed=1))
    again = learner.save(tmp_path / "again.zip")
    with zipfile.ZipFile(DATA / f"format3-{recognizer}.zip") as before, zipfile.ZipFile(again) as after:
        assert sorted(before.namelist()) == sorted(after.namelist())
        assert before.read("tensors.safetensors") == after.read("tensors.safetensors")
        meta = json.loads(after.read("meta.json"))
        # the additions since: the model's parameter-free modules, recorded from the model it was loaded into; the
        # warnings given (none recorded in a format-3 save); the detector space the saved option chose; the option
        # that would have kept input statistics, at 0 as the learner ran (a save lacks it: options.UNSAVED_BEFORE; so no
        # input_memory), and the filters it would have used, random; the number of later tasks
        # each detector keeps before folding, at its default (nothing folded: no "folded" entry in the memory)
        assert meta.pop("modules") == architecture.modules(digits_mlp())
        assert meta.pop("warnings") == [] and meta.pop("detector_space") == meta["options"]["detector_space"]
        assert "input_memory" not in meta and meta["options"].pop("input_weight") == 0.0
        assert meta["options"].pop("input_filters") == "random"
        assert meta["options"].pop("later_tasks") == LATER_TASKS_DEFAULT and "folded" not in meta["memory"]
        assert json.dumps(meta, indent=1).encode() == before.read("meta.json")
