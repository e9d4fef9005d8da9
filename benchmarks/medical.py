"""MedMNIST benchmark: rerelrp against fine-tuning, joint training, EWC, LwF and replay in one run.

Scenarios (official train/val/test splits, 28x28, grey images repeated to 3 channels):
  cross-domain (default, offline with $RERELRP_DATA): PneumoniaMNIST (2 classes) -> BreastMNIST (2)
      -> RetinaMNIST (5): 3 tasks, 9 global classes; backbone small-cnn unless --backbone says otherwise;
  bloodmnist: BloodMNIST in 4 tasks of 2 classes (the paper's protocol), backbone vgg11 by default;
  pathmnist: PathMNIST in tasks of 3, 2, 2, 2 classes (the paper's protocol), backbone vgg11 by default.

    python benchmarks/medical.py                      # default scenario, 1 seed
    python benchmarks/medical.py --seeds 0 1 2 --out results/medical
    python benchmarks/medical.py --backbone resnet18 --epochs 3 --threads 2
    python benchmarks/medical.py --scenario pathmnist --download --epochs 200 --seeds 0 1 2   # as the paper ran it
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.backbones import BACKBONES  # noqa: E402
from benchmarks.cli import main, parser  # noqa: E402
from benchmarks.stream import Stream  # noqa: E402
from rerelrp.datasets import class_splits, load_medmnist  # noqa: E402

SCENARIOS = {
    "cross-domain": ["pneumoniamnist", "breastmnist", "retinamnist"],
    "bloodmnist": ["bloodmnist"],
    "pathmnist": ["pathmnist"],
}
PAPER_TASKS = {"bloodmnist": 4, "pathmnist": 4}
#: The paper ran its MedMNIST scenarios on VGG-11; the cross-domain stream keeps the small CNN by default, since
#: ResNet-18 needs about 96 s per epoch of the stream on 2 cores (docs: Benchmarks, Results).
DEFAULT_BACKBONE = {"cross-domain": "small-cnn", "bloodmnist": "vgg11", "pathmnist": "vgg11"}
DEFAULT_EPOCHS, QUICK_EPOCHS, QUICK_PER_TASK = 20, 2, 150


def load_stream(args) -> Stream:
    flags = SCENARIOS[args.scenario]
    data = [load_medmnist(flag, args.data_root, download=args.download) for flag in flags]
    if len(flags) > 1:  # one task per data set, classes offset to global ids
        tasks, splits, offset = [], {s: [] for s in ("train", "val", "test")}, 0
        for parts in data:
            n = int(parts["train"][1].max()) + 1
            tasks.append(list(range(offset, offset + n)))
            for split, (x, y) in parts.items():
                splits[split].append((x, y + offset))
            offset += n
        names = [f.replace("mnist", "").capitalize() for f in flags]
        classes = [label for flag in flags for label in class_labels(flag)]
        return Stream("MedMNIST cross-domain", tasks, splits["train"], splits["val"], splits["test"], offset, names,
                      class_names=classes)
    parts = data[0]
    n_classes = int(parts["train"][1].max()) + 1
    tasks = class_splits(n_classes, PAPER_TASKS[args.scenario])

    def per_task(split):
        x, y = parts[split]
        return [(x[mask], y[mask]) for mask in (sum(y == c for c in task).bool() for task in tasks)]

    return Stream(args.scenario, tasks, per_task("train"), per_task("val"), per_task("test"), n_classes,
                  [f"{{{','.join(map(str, t))}}}" for t in tasks], class_names=class_labels(flags[0]))


def class_labels(flag: str) -> list[str]:
    """MedMNIST's names of the data set's classes, in label order, without parenthesized details; a grade
    ("grade 3") where the name is only a number (RetinaMNIST)."""
    import medmnist

    names = medmnist.INFO[flag]["label"]
    labels = [names[str(i)].split("(")[0].strip() for i in range(len(names))]
    return [f"grade {label}" if label.isdigit() else label for label in labels]


def command_line(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments) and run the benchmark; its exit status."""
    cli = parser(Path(__file__).name, __doc__.split("\n")[0], DEFAULT_EPOCHS, QUICK_EPOCHS,
                 "small-cnn for the cross-domain stream, vgg11 for --scenario bloodmnist | pathmnist")
    cli.add_argument("--scenario", default="cross-domain", choices=sorted(SCENARIOS),
                     help="which stream: cross-domain (offline default), bloodmnist or pathmnist (download needed)")
    args = cli.parse_args(argv)
    args.backbone = args.backbone or DEFAULT_BACKBONE[args.scenario]
    return main(args, load_stream, lambda s, backbone: BACKBONES[backbone](3, s.n_classes), DEFAULT_EPOCHS,
                QUICK_EPOCHS, QUICK_PER_TASK)


if __name__ == "__main__":
    sys.exit(command_line())
