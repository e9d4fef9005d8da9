"""
A stream of five tasks, without a task id
=========================================

Five tasks of two digits each are learned one after the other; after each task, every task learned so far is
tested with the task id (task-aware, TAw) and without it (task-agnostic, TAg). rerelrp freezes each task's
subnetwork, so the task-aware accuracy of an old task never changes; what the task-agnostic answer loses is
task recognition.
"""
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rerelrp
from rerelrp.datasets import class_splits, load_digits, task_indices

torch.set_num_threads(1)  # small models: one thread is the fast setting
torch.manual_seed(0)
x_train, y_train, x_test, y_test = load_digits()
tasks = class_splits(10, 5)  # [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
train_rows, test_rows = task_indices(y_train, tasks), task_indices(y_test, tasks)

model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
learner = rerelrp.ReReLRP(model, epochs=30, random_state=0, progress=False)

# %%
# Learn the tasks; after each, measure both accuracies on every task seen so far.
tag = np.full((5, 5), np.nan)
taw = np.full((5, 5), np.nan)
for t, rows in enumerate(train_rows):
    loader = DataLoader(TensorDataset(x_train[rows], y_train[rows]), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(t))
    learner.fit_task(loader)
    for u in range(t + 1):
        x, y = x_test[test_rows[u]], y_test[test_rows[u]]
        tag[t, u] = (learner.predict(x) == y).float().mean()
        taw[t, u] = (learner.predict(x, task_id=u) == y).float().mean()
print(f"after the last task: TAg {100 * tag[-1].mean():.1f} %, TAw {100 * taw[-1].mean():.1f} %")

# %%
# Rows: after learning task t; columns: accuracy on task u. The task-aware matrix is constant down each column.
fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), constrained_layout=True)
names = ["{%d,%d}" % tuple(c) for c in tasks]
for ax, matrix, title in zip(axes, (taw, tag), ("task-aware (TAw)", "task-agnostic (TAg)")):
    image = ax.imshow(100 * matrix, vmin=80, vmax=100, cmap="viridis")
    for (t, u), value in np.ndenumerate(matrix):
        if not np.isnan(value):
            ax.text(u, t, f"{100 * value:.0f}", ha="center", va="center", color="white" if value < 0.93 else "black")
    ax.set(title=title, xlabel="tested on task", ylabel="after learning task", xticks=range(5), yticks=range(5),
           xticklabels=names, yticklabels=names)
fig.colorbar(image, ax=axes, label="accuracy (%)", shrink=0.8)
plt.show()

# %%
# What the learner decided, task by task: units kept against each task's budget, growth, detector space.
print(learner.summary())
