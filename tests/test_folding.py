"""Folding later tasks (``later_tasks``): each detector keeps the classes of a few tasks after its own and one bounded
mixture of the rest, so its memory stops growing with the stream; the mixture reduction keeps the moments; a save
answers as the learner did; a file whose folding does not fit its tasks is refused."""
import json
import zipfile

import numpy as np
import pytest
import torch

import rerelrp
from rerelrp import ReReLRP
from rerelrp.persist import UntrustedFileError
from rerelrp.remember import FOLD_SAMPLES, REST_COMPONENTS, ClassStatistics, fold_sample, reduce_mixture
from conftest import digits_mlp, loader, task_recognition


def learned(train, **options) -> ReReLRP:
    learner = ReReLRP(digits_mlp(), progress=False, **options)
    for x, y in train:
        learner.fit_task(loader(x, y))
    return learner


@pytest.fixture(scope="module")
def pair(digits):
    """The 5 digit tasks learned twice from the same seed: every later task kept, and every later task folded."""
    train, _ = digits
    return learned(train, later_tasks=None), learned(train, later_tasks=0)


def mixture_moments(weights, means, covariances):
    mean = weights @ means
    spread = means - mean
    return mean, np.einsum("k,kij->ij", weights, covariances) + np.einsum("k,ki,kj->ij", weights, spread, spread)


def test_reducing_a_mixture_keeps_its_mean_and_covariance_and_its_component_bound(digits):
    train, _ = digits
    x = torch.cat([x for x, _ in train]).double().numpy()[:, :6]  # real digit pixels, 6 columns
    y = torch.cat([y for _, y in train]).numpy()
    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.ones(10))
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    covariances = np.stack([np.cov(x[y == c].T) + 1e-3 * np.eye(6) for c in range(10)])
    for k in (1, 3, 10, 20):
        w, mu, cov = reduce_mixture(weights, means, covariances, k)
        assert len(w) == min(k, 10) and np.isclose(w.sum(), 1)
        for before, after in zip(mixture_moments(weights, means, covariances), mixture_moments(w, mu, cov)):
            np.testing.assert_allclose(after, before, atol=1e-9)
        assert all(np.linalg.eigvalsh(c).min() > 0 for c in cov)


def test_a_folded_class_is_the_gaussian_a_one_component_mixture_fits(digits):
    train, _ = digits
    x, y = train[0]
    features = x[y == y[0]].double().numpy()[:, 20:30]  # one digit class, 10 pixel columns
    closed, fitted = ClassStatistics.gaussian(features), ClassStatistics.of(features, 1, random_state=0)
    np.testing.assert_allclose(closed.means, fitted.means, atol=1e-5)
    np.testing.assert_allclose(closed.covariances, fitted.covariances, atol=1e-5)


def test_a_folded_task_is_read_from_at_most_fold_samples_of_each_class():
    y = torch.repeat_interleave(torch.arange(3), torch.tensor([50, FOLD_SAMPLES + 30, 3 * FOLD_SAMPLES]))
    rows = fold_sample(y, seed=0)
    assert torch.equal(rows, rows.unique()) and torch.equal(rows, fold_sample(y, seed=0))
    assert torch.bincount(y[rows]).tolist() == [50, FOLD_SAMPLES, FOLD_SAMPLES]
    assert not torch.equal(rows, fold_sample(y, seed=1))


def test_each_detector_keeps_the_classes_of_its_task_and_folds_the_later_ones(digits, pair):
    kept, folding = pair
    tasks = folding.tasks_
    for m in range(len(tasks)):
        assert sorted(kept.memory_.classes[m]) == sorted(c for classes in tasks[m:] for c in classes)
        assert sorted(folding.memory_.classes[m]) == sorted(tasks[m])
        assert folding.memory_.folded[m] == len(tasks) - 1 - m
        rest = folding.memory_.rests[m]
        assert (rest is None) == (m == len(tasks) - 1)
        assert rest is None or len(rest.weights) <= REST_COMPONENTS
    assert "later_tasks=0: tasks folded per detector [4, 3, 2, 1, 0]" in folding.summary()


def test_folding_changes_only_the_detectors_and_recognizes_as_keeping_every_class(digits, pair):
    """Folding touches nothing the network learns. A folded class is one Gaussian, which is what BIC chooses for a
    digit class of about 70 samples, and 4 folded tasks of 2 classes need no merge: the rest scores what the kept
    classes would, and the same tasks are recognized."""
    _, test = digits
    kept, folding = pair
    for a, b in zip(kept.subnetworks().net.state_dict().values(), folding.subnetworks().net.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.cat([x for x, _ in test])
    assert torch.equal(kept.predict_task(x), folding.predict_task(x))
    print(f"digits task recognition, every class kept and every later task folded: {task_recognition(folding, test):.3f}")


def test_merging_the_folded_tasks_costs_little_recognition(digits, monkeypatch):
    """With at most 2 components per rest mixture the folded tasks are merged: recognition on held-out digits stays
    within 3 points of keeping every class."""
    train, test = digits
    monkeypatch.setattr("rerelrp.remember.REST_COMPONENTS", 2)
    merged = learned(train, later_tasks=0)
    assert max(len(rest.weights) for rest in merged.memory_.rests if rest is not None) <= 2
    kept = learned(train, later_tasks=None)
    print(f"digits task recognition: kept {task_recognition(kept, test):.3f}, merged {task_recognition(merged, test):.3f}")
    assert task_recognition(merged, test) > task_recognition(kept, test) - 0.03


def test_a_saved_folding_learner_answers_as_before_and_keeps_folding(digits, pair, tmp_path):
    train, test = digits
    _, folding = pair
    x = torch.cat([x for x, _ in test])
    loaded = rerelrp.load(folding.save(tmp_path / "folding.zip"), digits_mlp())
    assert torch.equal(loaded.predict(x), folding.predict(x))
    assert torch.equal(loaded.predict_proba_task(x), folding.predict_proba_task(x))
    assert loaded.memory_.folded == folding.memory_.folded and loaded.later_tasks == 0


def test_changing_later_tasks_mid_stream_never_keeps_a_task_after_a_folded_one(digits, tmp_path):
    train, test = digits
    learner = learned(train[:3], later_tasks=0)
    learner.set_params(later_tasks=None)
    for x, y in train[3:]:
        learner.fit_task(loader(x, y))
    assert learner.memory_.folded == [4, 3, 0, 0, 0]
    loaded = rerelrp.load(learner.save(tmp_path / "changed.zip"), digits_mlp())  # its checks accept the memory
    x = torch.cat([x for x, _ in test])
    assert torch.equal(loaded.predict(x), learner.predict(x))


def rewritten(path, out, change) -> str:
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "meta.json":
                meta = json.loads(data)
                change(meta["memory"])
                data = json.dumps(meta).encode()
            target.writestr(item, data)
    return out


@pytest.mark.parametrize("change, message", [
    (lambda memory: memory["folded"].__setitem__(0, 5), "folds 5 tasks into detector 0"),
    (lambda memory: memory["folded"].__setitem__(1, 2), "detector 1 the classes"),
    (lambda memory: memory["folded"].pop(), "folded tasks for 4 detectors"),
], ids=["more tasks than follow", "a kept task folded", "a detector missing"])
def test_a_file_whose_folding_does_not_fit_its_tasks_is_refused(pair, tmp_path, change, message):
    _, folding = pair
    path = rewritten(folding.save(tmp_path / "folding.zip"), tmp_path / "changed.zip", change)
    with pytest.raises(UntrustedFileError, match=message):
        rerelrp.load(path, digits_mlp())
