"""The input-space recognizer (ReReLRP(input_weight=..., input_filters=...)): it recognizes tasks from the inputs
alone with either kind of filters, the chain still stops early exactly with its prior, it is saved and refused like the
rest of the memory, and it keeps no input."""
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_tensors
from scipy.special import logsumexp

import rerelrp
from rerelrp import InvalidParameterError, ReReLRP
from rerelrp.input_space import FILTERS, SIZE, InputRecognizer, patch_filters
from rerelrp.recognize import chain_scores, route
from conftest import TASKS, loader


def digits_cnn() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(128, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def images(split):
    return [(x.view(-1, 1, 8, 8), y) for x, y in split]


def truth_of(test) -> np.ndarray:
    return np.concatenate([np.full(len(y), t) for t, (_, y) in enumerate(test)])


@pytest.fixture(scope="module")
def weighted(digits):
    """A learner with input_weight=1 on the 5 digit tasks as 8 x 8 images."""
    learner = ReReLRP(digits_cnn(), epochs=5, input_weight=1.0, n_tasks=5, progress=False)
    for x, y in images(digits[0]):
        learner.fit_task(loader(x, y))
    return learner


@pytest.mark.parametrize("shape, kind", [((1, 8, 8), "random"), ((1, 8, 8), "patches"), ((64,), "random")],
                         ids=["images", "images-patches", "vectors"])
def test_recognizes_held_out_digit_tasks_from_the_inputs_alone(digits, shape, kind):
    train, test = digits
    recognizer = InputRecognizer(kind, random_state=0)
    for t, (x, y) in enumerate(train):
        recognizer.remember(x.view(-1, *shape), y, TASKS[t])
        recognizer.fit(TASKS[:t + 1])
    log_posterior = recognizer.log_posterior(torch.cat([x for x, _ in test]).view(-1, *shape))
    accuracy = float((log_posterior.argmax(1) == truth_of(test)).mean())
    print(f"input recognizer alone, {kind} filters, digits as {shape}: {accuracy:.3f} of held-out inputs' tasks "
          "(chance 0.2)")
    assert log_posterior.shape == (sum(len(y) for _, y in test), 5)
    np.testing.assert_allclose(logsumexp(log_posterior, axis=1), 0, atol=1e-9)
    assert accuracy > 0.9
    assert (recognizer.filters is None) == (len(shape) == 1)


def test_the_chain_stops_early_exactly_with_the_input_prior(digits, weighted):
    x = torch.cat([x for x, _ in images(digits[1])])
    early = weighted.route(x, heads=False).task
    whole = weighted.predict_proba_task(x).argmax(1)
    assert torch.equal(early, whole)
    assert torch.equal(weighted.predict_task(x), whole)


def test_the_weight_moves_recognition_and_zero_leaves_the_chain_alone(digits, weighted):
    test = images(digits[1])
    x, truth = torch.cat([x for x, _ in test]), truth_of(test)
    with_input = weighted.predict_proba_task(x).numpy()
    weighted.set_params(input_weight=0.0)
    try:
        chain_only = weighted.predict_proba_task(x).numpy()
        p = route(weighted.recognizer_, weighted.subnetworks(), x, stop_early=False, heads=False).p
        np.testing.assert_allclose(chain_only, chain_scores(p), rtol=1e-12, atol=0)
    finally:
        weighted.set_params(input_weight=1.0)
    recognized = {name: float((scores.argmax(1) == truth).mean())
                  for name, scores in (("chain", chain_only), ("chain + input", with_input))}
    print(f"held-out digits' task recognition: {recognized}")
    assert not np.allclose(with_input, chain_only)
    assert recognized["chain + input"] >= recognized["chain"] - 0.01


def test_a_save_answers_the_same_and_keeps_no_input(digits, weighted, tmp_path):
    x = torch.cat([x for x, _ in images(digits[1])])
    path = weighted.save(tmp_path / "learner.zip")
    loaded = rerelrp.load(path, digits_cnn())
    assert torch.equal(loaded.predict(x), weighted.predict(x))
    assert torch.equal(loaded.predict_proba_task(x), weighted.predict_proba_task(x))
    with zipfile.ZipFile(path) as archive:
        tensors = load_tensors(archive.read("tensors.safetensors"))
    assert tensors["input.filters"].shape == (FILTERS, 1, 5, 5)
    inputs = torch.cat([x.flatten(1) for x, _ in images(digits[0])]).double()
    for name, tensor in tensors.items():
        flat = tensor.double().flatten()
        if name.startswith("input.") and len(flat) >= inputs.shape[1]:
            windows = flat.unfold(0, inputs.shape[1], 1)
            assert torch.cdist(windows, inputs).min() > 1e-3, f"{name} holds a training input"


def test_a_learner_that_kept_no_input_statistics_refuses_a_weight(digits, tmp_path):
    x, y = images(digits[0])[0]
    learner = ReReLRP(digits_cnn(), epochs=1, input_weight=0.0, progress=False).fit_task(loader(x, y))
    with pytest.raises(InvalidParameterError, match="input_weight cannot change once a task is learned"):
        learner.set_params(input_weight=1.0)
    assert learner.input_weight == 0.0
    path = learner.save(tmp_path / "plain.zip")
    with pytest.raises(ValueError, match="holds no input statistics"):
        rerelrp.load(path, digits_cnn(), input_weight=1.0)
    with pytest.raises(InvalidParameterError, match="input_weight"):
        ReReLRP(digits_cnn(), epochs=1, input_weight=-1.0, progress=False).fit_task(loader(x, y))


def test_a_state_whose_filters_do_not_fit_the_inputs_is_refused(weighted):
    state = weighted.state_dict()
    state["tensors"]["input.filters"] = state["tensors"]["input.filters"][:, :, :3]
    with pytest.raises(ValueError, match="input.filters"):
        ReReLRP(digits_cnn(), input_weight=1.0).load_state_dict(state)


def test_the_summary_says_whether_an_input_space_is_kept(digits, weighted):
    assert (f"input space: {weighted.input_recognizer_.memory.widths[0]} features, input_filters='patches', "
            "input_weight=1.0"
            in weighted.summary())
    x, y = images(digits[0])[0]
    plain = ReReLRP(digits_cnn(), epochs=1, input_weight=0.0, progress=False).fit_task(loader(x, y))
    assert "input space: none (input_weight=0 at the first task)" in plain.summary()


def test_patch_filters_are_centred_seeded_centroids_of_the_images_patches(digits):
    x = torch.cat([x for x, _ in images(digits[0])])
    filters = patch_filters(x, random_state=0)
    assert filters.shape == (FILTERS, 1, SIZE, SIZE) and filters.dtype == torch.float32
    np.testing.assert_allclose(filters.sum((1, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(filters.flatten(1).norm(dim=1), 1 / SIZE, rtol=1e-5)  # unit norm over the fan-in
    assert torch.equal(filters, patch_filters(x, random_state=0))
    assert not torch.allclose(filters, patch_filters(x, random_state=1))
    # shaped like the images' strokes: on the digits' own patches they respond more than random filters of that norm
    patches = torch.nn.functional.unfold(x, SIZE).transpose(1, 2).reshape(-1, SIZE * SIZE)
    random = torch.randn(FILTERS, SIZE * SIZE, generator=torch.Generator().manual_seed(0))
    random = random - random.mean(1, keepdim=True)
    random = random / random.norm(dim=1, keepdim=True) / SIZE
    strongest = (patches @ filters.flatten(1).T).relu().max(1).values.mean()
    print(f"mean strongest response on the digits' patches: patch filters {strongest:.4f}, random "
          f"{(patches @ random.T).relu().max(1).values.mean():.4f}")
    assert strongest > (patches @ random.T).relu().max(1).values.mean()
    with pytest.raises(ValueError, match="input_filters='random'"):
        patch_filters(x[:, :, :4, :4])


def test_the_filters_kind_is_saved_and_fixed_by_the_first_task(digits, tmp_path):
    x, y = images(digits[0])[0]
    learner = ReReLRP(digits_cnn(), epochs=1, input_filters="random", progress=False).fit_task(loader(x, y))
    assert "input_filters='random'" in learner.summary()
    with pytest.raises(InvalidParameterError, match="input_filters cannot change once a task is learned"):
        learner.set_params(input_filters="patches")
    path = learner.save(tmp_path / "random.zip")
    loaded = rerelrp.load(path, digits_cnn())
    assert loaded.input_filters == "random" and loaded.input_recognizer_.kind == "random"
    assert torch.equal(loaded.input_recognizer_.filters, learner.input_recognizer_.filters)
    with pytest.raises(ValueError, match="input_filters='random'"):
        rerelrp.load(path, digits_cnn(), input_filters="patches")
    with pytest.raises(InvalidParameterError, match="input_filters must be one of 'random', 'patches'"):
        ReReLRP(digits_cnn(), epochs=1, input_filters="kmeans", progress=False).fit_task(loader(x, y))


def test_images_too_small_for_the_default_patch_filters_are_refused_before_training(digits):
    x, y = images(digits[0])[0]
    x = x[:, :, 2:6, 2:6]  # 4 x 4 pixels: no 5 x 5 patch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(128, 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    learner = ReReLRP(model, epochs=1, progress=False)
    with pytest.raises(ValueError, match="4 x 4 pixels hold no 5 x 5 patch to cluster: use input_filters='random'"):
        learner.fit_task(loader(x, y))
    assert not hasattr(learner, "tasks_")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # refused before training
    learner.set_params(input_filters="random").fit_task(loader(x, y))
    assert learner.tasks_ == [sorted(set(y.tolist()))]
