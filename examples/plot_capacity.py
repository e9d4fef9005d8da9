"""
Capacity: how much of the network each task keeps
=================================================

Every unit a task keeps is frozen for good; the free units are what later tasks train. ``capacity_report()`` gives,
per task and unit layer, the units kept (``new`` ones and ``reused`` ones frozen by earlier tasks) and those left
free; ``summary()`` states each task's budget. Without ``n_tasks`` (an open-ended stream) each task keeps at most
a quarter of each layer's free units.
"""
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rerelrp
from rerelrp.datasets import class_splits, load_digits, task_indices

torch.set_num_threads(1)
torch.manual_seed(0)
x_train, y_train, x_test, y_test = load_digits()
tasks = class_splits(10, 5)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
learner = rerelrp.ReReLRP(model, epochs=30, random_state=0, progress=False)
for t, rows in enumerate(task_indices(y_train, tasks)):
    learner.fit_task(DataLoader(TensorDataset(x_train[rows], y_train[rows]), batch_size=32, shuffle=True,
                                generator=torch.Generator().manual_seed(t)))
report = learner.capacity_report()
print(report[:2])

# %%
# New units each task froze, stacked, and the units still free after the last task, per layer.
layers = sorted({row["layer"] for row in report}, key=lambda name: [r["layer"] for r in report].index(name))
fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.4), constrained_layout=True, sharey=True)
for ax, layer in zip(np.atleast_1d(axes), layers):
    rows = [r for r in report if r["layer"] == layer]
    bottom = 0
    for r in rows:
        ax.bar(0, r["new"], bottom=bottom, label=f"task {r['task']}")
        bottom += r["new"]
    ax.bar(0, rows[-1]["free"], bottom=bottom, color="lightgrey", label="free")
    ax.set(title=f"unit layer {layer} ({rows[-1]['units']} units)", xticks=[], ylabel="units")
np.atleast_1d(axes)[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
plt.show()
print(learner.summary())
