"""
Your own training loop
======================

``fit_task`` trains with its own loop. To keep yours (an optimizer, a schedule, mixed precision, your loss), train
inside ``with learner.training(loader) as task:``: any optimizer over the model leaves the frozen units
bit-identical, and on leaving the block rerelrp runs relevance, pruning, freezing and the detectors. Here: SGD with
momentum, a cosine schedule and bfloat16 autocast.
"""
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
learner = rerelrp.ReReLRP(model, random_state=0, progress=False)

for t, rows in enumerate(task_indices(y_train, tasks)):
    loader = DataLoader(TensorDataset(x_train[rows], y_train[rows]), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(t))
    with learner.training(loader) as task:            # task.loader: the training share (10 % held out)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=20)
        for epoch in range(20):
            model.train()
            for x, y in task.loader:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = task.loss(model(x), y)     # cross-entropy over this task's classes
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            schedule.step()
    print(f"task {t} {task.classes}: accuracy without task id on the tasks so far "
          f"{(learner.predict(x_test[y_test < 2 * (t + 1)]) == y_test[y_test < 2 * (t + 1)]).float().mean():.3f}")
