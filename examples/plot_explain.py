"""
Heatmaps: what the recognized subnetwork looked at
==================================================

``learner.explain(x)`` gives the input relevance (LRP, zennit's rules) of each input's predicted class, through
the subnetwork of the task the input is recognized as: same shape as ``x``; red pixels spoke for the class, blue
ones against it.
"""
import matplotlib.pyplot as plt
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

# %%
# One test image of each digit, its prediction and recognized task, and its heatmap.
x = torch.stack([x_test[(y_test == d).nonzero()[0, 0]] for d in range(10)])
heatmaps = learner.explain(x)
predicted, task = learner.predict(x), learner.predict_task(x)
fig, axes = plt.subplots(2, 10, figsize=(12, 3.2), constrained_layout=True)
limit = float(heatmaps.abs().max())
for d in range(10):
    axes[0, d].imshow(x[d].view(8, 8), cmap="gray_r")
    axes[0, d].set_title(f"{predicted[d].item()} (task {task[d].item()})", fontsize=8)
    shown = axes[1, d].imshow(heatmaps[d].view(8, 8), cmap="bwr", vmin=-limit, vmax=limit)
for ax in axes.flat:
    ax.set_axis_off()
fig.colorbar(shown, ax=axes[1, :], shrink=0.9, label="relevance", format="%.2f")
plt.show()
