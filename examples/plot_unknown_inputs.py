"""
Unknown inputs: "none of my tasks"
==================================

A deployed learner sees inputs of no task it has learned. ``score_samples`` gives each input's typicality under
the task it is recognized as (higher: more typical; 0 at the median of that task's validation inputs), and
``predict(x, reject=True)`` answers -1 below the level that accepts ``known_fraction`` of them. Here the learner
knows the digits 0-5; the digits 6-9 and uniform noise are unknown.
"""
import matplotlib.pyplot as plt
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rerelrp
from rerelrp.datasets import class_splits, load_digits, task_indices

torch.set_num_threads(1)
torch.manual_seed(0)
x_train, y_train, x_test, y_test = load_digits()
known = class_splits(10, 5)[:3]  # digits 0-5, in three tasks
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
learner = rerelrp.ReReLRP(model, epochs=30, known_fraction=0.95, random_state=0, progress=False)
for t, rows in enumerate(task_indices(y_train, known)):
    learner.fit_task(DataLoader(TensorDataset(x_train[rows], y_train[rows]), batch_size=32, shuffle=True,
                                generator=torch.Generator().manual_seed(t)))

# %%
# Score held-out inputs of the known tasks, of the digits 6-9 (tasks not learned yet), and noise.
sets = {"known tasks (test)": x_test[y_test < 6], "digits 6-9 (not learned)": x_test[y_test >= 6],
        "uniform noise": torch.rand(300, 64)}
scores = {name: learner.score_samples(x).numpy() for name, x in sets.items()}
known_scores = scores["known tasks (test)"]
for name, s in scores.items():
    rejected = (learner.predict(sets[name], reject=True) == -1).float().mean()
    line = f"{name}: {100 * rejected:.1f} % rejected"
    if name != "known tasks (test)":
        auroc = roc_auc_score([1] * len(known_scores) + [0] * len(s), list(known_scores) + list(s))
        line += f", AUROC against the known tasks {auroc:.3f}"
    print(line)

# %%
# The typicality of each set; the dashed line is the level ``reject=True`` uses (per task; shown for task 0).
fig, ax = plt.subplots(figsize=(7, 3.5), constrained_layout=True)
for name, s in scores.items():
    ax.hist(s.clip(-15, None), bins=40, alpha=0.55, label=name, density=True)
ax.axvline(-1, color="k", linestyle="--", linewidth=1, label="5 % quantile of validation inputs")
ax.set(xlabel="typicality (score_samples, clipped at -15)", ylabel="density")
ax.legend(fontsize=8)
plt.show()
