"""Promise 1: task-aware forgetting is exactly zero, whatever the optimizer."""
from functools import partial

import pytest
import torch

from rerelrp import ReReLRP
from conftest import digits_mlp, loader

OPTIMIZERS = {
    "sgd-momentum": (partial(torch.optim.SGD, momentum=0.9), 0.05),
    "adamw-weight-decay": (partial(torch.optim.AdamW, weight_decay=0.1), 1e-3),
}


@pytest.mark.parametrize("batchnorm", [False, True], ids=["mlp", "mlp-batchnorm"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_frozen_parameters_and_old_tasks_stay_bit_identical(digits, name, batchnorm):
    optimizer, lr = OPTIMIZERS[name]
    train, test = digits
    learner = ReReLRP(digits_mlp(batchnorm=batchnorm), optimizer=optimizer, lr=lr, epochs=5, progress=False)
    snapshots, answers = [], []
    for t, (x, y) in enumerate(train):
        learner.fit_task(loader(x, y))
        snapshots.append({p: (m.clone(), p.detach().clone()) for p, m in learner.frozen_.masks.items()})
        answers.append(learner.predict(test[t][0], task_id=t))
    assert len(learner.tasks_) == 5
    n_checked = 0
    for t, snapshot in enumerate(snapshots):
        for param, (mask, value) in snapshot.items():
            assert torch.equal(param.detach()[mask], value[mask]), f"a parameter frozen after task {t} moved"
            n_checked += int(mask.sum())
        assert torch.equal(learner.predict(test[t][0], task_id=t), answers[t]), f"task {t}'s answers changed"
    assert n_checked > 0
    # the free entries did train: the last task changed something that was free before it
    last_free = [(p, ~m) for p, (m, _) in snapshots[-2].items()]
    assert any(not torch.equal(p.detach()[free], snapshots[-2][p][1][free]) for p, free in last_free)


def test_frozen_entries_of_channels_last_weights_stay_bit_identical(digits):
    """Frozen entries are restored through flat indices where a weight is contiguous, and through its boolean mask
    where it is not: a CNN in channels_last memory format (4-D weights that are not contiguous) keeps them too."""
    train, _ = digits
    images = [(x.view(-1, 1, 8, 8), y) for x, y in train[:2]]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 64, 10)).to(memory_format=torch.channels_last)
    assert not model[2].weight.is_contiguous()
    learner = ReReLRP(model, epochs=3, grow=0, progress=False)
    learner.fit_task(loader(*images[0]))
    snapshot = {p: (m.clone(), p.detach().clone()) for p, m in learner.frozen_.masks.items()}
    learner.fit_task(loader(*images[1]))
    assert not model[2].weight.is_contiguous() and snapshot[model[2].weight][0].any()
    for param, (mask, value) in snapshot.items():
        assert torch.equal(param.detach()[mask], value[mask])
