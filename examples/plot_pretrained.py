"""
Start from a model you already trained
======================================

The RNF paper starts from a network trained on ImageNet and keeps what it knows while it learns new tasks. Here a
model is first trained on the digits 0-4 outside rerelrp; an empty ``training()`` block then makes that knowledge
task 0 (no training step: relevance, pruning and freezing run on the model as it is), and two more tasks follow.
Task 0's accuracy is measured before rerelrp and after each task.
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rerelrp
from rerelrp.datasets import load_digits, task_indices

torch.set_num_threads(1)
torch.manual_seed(0)
x_train, y_train, x_test, y_test = load_digits()
tasks = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]
train_rows, test_rows = task_indices(y_train, tasks), task_indices(y_test, tasks)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))

# %%
# The "pretrained" model: plain training on the digits 0-4, its own loop, no rerelrp.
rows = train_rows[0]
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(30):
    for x, y in DataLoader(TensorDataset(x_train[rows], y_train[rows]), batch_size=32, shuffle=True):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x)[:, :5], y).backward()
        optimizer.step()
x0, y0 = x_test[test_rows[0]], y_test[test_rows[0]]
with torch.no_grad():
    before = (model(x0)[:, :5].argmax(1) == y0).float().mean()
print(f"pretrained model on the digits 0-4: {100 * before:.1f} %")

# %%
# Task 0 is what the model knows: an empty training block. Then two new tasks, learned as usual. A pretrained
# model's knowledge is spread over many units: say how many tasks will come (``n_tasks``), so that task 0 may keep
# a third of each layer (an open-ended stream's task keeps at most a quarter). Where even that costs task 0 more
# than ``acc_drop`` of its validation measure, the learner warns and keeps its budget: a wider model leaves room.
learner = rerelrp.ReReLRP(model, epochs=30, n_tasks=3, random_state=0, progress=False)
with learner.training(DataLoader(TensorDataset(x_train[rows], y_train[rows]), batch_size=32)):
    pass                                              # no training: keep the model's knowledge as it is
for t in (1, 2):
    learner.fit_task(DataLoader(TensorDataset(x_train[train_rows[t]], y_train[train_rows[t]]), batch_size=32,
                                shuffle=True, generator=torch.Generator().manual_seed(t)))
    aware = (learner.predict(x0, task_id=0) == y0).float().mean()
    agnostic = (learner.predict(x0) == y0).float().mean()
    print(f"after task {t}: the digits 0-4 at {100 * aware:.1f} % with the task id, {100 * agnostic:.1f} % without")
