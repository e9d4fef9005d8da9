"""Hardening (issue 19): saves that validate what they load, clear errors for bad input, set_params validated.
Each test failed on the code before it. Real data: scikit-learn's 8x8 digits."""
import json
import os
import stat
import zipfile

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rerelrp
from rerelrp import ReReLRP, UntrustedFileError
from conftest import digits_mlp, loader
from test_persist import rewritten


@pytest.fixture(scope="module")
def two_tasks(digits, tmp_path_factory):
    train, _ = digits
    learner = ReReLRP(digits_mlp(), epochs=5, progress=False)
    for x, y in train[:2]:
        learner.fit_task(loader(x, y))
    return learner, learner.save(tmp_path_factory.mktemp("save") / "learner.zip")


def test_a_paper_learner_with_a_custom_detector_loads(digits, tmp_path):
    train, test = digits
    learner = ReReLRP(digits_mlp(), epochs=3, recognizer="paper", detector=LogisticRegression(C=0.5), progress=False)
    for x, y in train[:2]:
        learner.fit_task(loader(x, y))
    loaded = rerelrp.load(learner.save(tmp_path / "paper.zip"), digits_mlp())
    assert loaded.detector.C == 0.5
    assert torch.equal(loaded.predict(test[0][0]), learner.predict(test[0][0]))


def test_labels_shaped_n_by_1_train_like_flat_labels(digits):
    train, test = digits
    x, y = train[0]
    flat = ReReLRP(digits_mlp(), epochs=3, progress=False).fit_task(loader(x, y))
    column = ReReLRP(digits_mlp(), epochs=3, progress=False).fit_task(loader(x, y[:, None]))
    assert torch.equal(column.predict(test[0][0]), flat.predict(test[0][0]))


def test_set_params_is_validated_and_refuses_what_cannot_change(two_tasks):
    learner, _ = two_tasks
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        learner.set_params(batch_size=0)
    assert learner.batch_size == 256  # left as it was
    for change in ({"recognizer": "paper"}, {"device": "meta"}, {"model": digits_mlp()}):
        with pytest.raises(ValueError, match="cannot change once a task is learned"):
            learner.set_params(**change)
    learner.set_params(known_fraction=0.9)
    assert learner.known_fraction == 0.9
    learner.set_params(known_fraction=0.95)


@pytest.mark.parametrize("option, value, message", [
    ("random_state", None, "random_state must be an int"),
    ("acc_drop", "2", "acc_drop must be a number"),
    ("lr", True, "lr must be a number"),
])
def test_bad_option_types_are_named(digits, option, value, message):
    with pytest.raises(ValueError, match=message):
        ReReLRP(digits_mlp(), progress=False, **{option: value}).fit_task(loader(*digits[0][0]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for machines without CUDA")
def test_cuda_without_a_gpu_is_named(digits):
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        ReReLRP(digits_mlp(), device="cuda", progress=False).fit_task(loader(*digits[0][0]))


def test_inputs_that_cannot_work_are_refused_with_a_reason(digits, two_tasks):
    learner, _ = two_tasks
    train, test = digits
    x = test[0][0]
    assert torch.equal(learner.predict(x.double()), learner.predict(x))  # converted, as scikit-learn does
    assert torch.equal(learner.predict(x.half().float()), learner.predict(x.half()))
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


def test_training_that_diverges_is_not_learned(digits):
    train, _ = digits
    learner = ReReLRP(digits_mlp(), epochs=1, progress=False)
    with pytest.raises(RuntimeError, match="diverged"):
        with learner.training(loader(*train[0])):
            with torch.no_grad():
                learner.model[0].weight.fill_(float("nan"))  # what a loss that blew up leaves behind
    assert not hasattr(learner, "tasks_")


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


def test_a_distributed_sampler_loader_without_val_loader_trains_each_rank_on_its_part_of_the_share(digits):
    from torch.utils.data import DistributedSampler

    train, _ = digits
    dataset = TensorDataset(*train[0])
    shards = []
    for rank in (0, 1):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=3)
        learner = ReReLRP(digits_mlp(), epochs=1, progress=False)
        with learner.training(DataLoader(dataset, batch_size=16, sampler=sampler)) as task:
            rebuilt = task.loader.sampler
            assert isinstance(rebuilt, DistributedSampler)
            assert (rebuilt.num_replicas, rebuilt.rank, rebuilt.shuffle, rebuilt.seed) == (2, rank, True, 3)
            share = task.loader.dataset
            shards.append({int(share.indices[i]) for i in rebuilt})
            optimizer = torch.optim.Adam(learner.model.parameters(), lr=1e-3)
            for x, y in task.loader:
                optimizer.zero_grad()
                task.loss(learner.model(x), y).backward()
                optimizer.step()
    assert not shards[0] & shards[1]  # each rank its own part of the training share
    assert len(shards[0] | shards[1]) == len(share.indices)  # together: all of it, validation data held out
    assert len(share.indices) < len(dataset)


class Tokens(nn.Module):
    """A Linear over tokens (N, T, C), then a max over T: the Linear's units would mask the token axis."""

    def __init__(self):
        super().__init__()
        self.embed, self.relu, self.out = nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10)

    def forward(self, x):
        return self.out(self.relu(self.embed(x.view(x.size(0), 8, 8))).amax(1))


@pytest.mark.parametrize("norm, name", [(nn.LayerNorm(128), "LayerNorm"), (nn.GroupNorm(4, 128), "GroupNorm"),
                                        (nn.PReLU(), "PReLU")])
def test_modules_whose_parameters_cannot_be_frozen_are_refused_by_name(digits, norm, name):
    model = nn.Sequential(nn.Linear(64, 128), norm, nn.ReLU(), nn.Linear(128, 10))
    with pytest.raises(TypeError, match=rf"module '1' \({name}\) has parameters"):
        ReReLRP(model, progress=False).fit_task(loader(*digits[0][0]))


def test_a_linear_over_tokens_is_refused(digits):
    with pytest.raises(TypeError, match="'embed' is applied to a 3-d tensor"):
        ReReLRP(Tokens(), progress=False).fit_task(loader(*digits[0][0]))
