"""Split MNIST in Avalanche: rerelrp's ReReLRPStrategy beside Avalanche's Naive and Replay, one EvaluationPlugin,
Avalanche's metrics, no task labels at evaluation.

--dataset mnist (default): Avalanche's own SplitMNIST(n_experiences=5, return_task_id=False, fixed_class_order
0..9), read from the four original MNIST files in --data-root / $RERELRP_DATA (mnist/; nothing is downloaded).
--dataset digits: scikit-learn's 8x8 digits through Avalanche's nc_benchmark, the same five tasks (seconds).

    RERELRP_DATA=../shared/data python examples/avalanche_split_mnist.py
    python examples/avalanche_split_mnist.py --dataset digits --epochs 30
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STRATEGIES = ("rerelrp", "naive", "replay")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=["mnist", "digits"], help="which data (see above)")
    p.add_argument("--data-root", default=None, help="folder holding mnist/ (default: $RERELRP_DATA)")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES, help="what to run")
    p.add_argument("--epochs", type=int, default=5, help="training epochs per experience, every strategy")
    p.add_argument("--batch-size", type=int, default=64, help="training minibatch size, every strategy")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, shuffles and rerelrp's splits")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return p.parse_args()


def split_mnist(root: str | None, tmp: Path):
    """Avalanche's SplitMNIST from the original files: copied, unzipped, where torchvision looks (no download)."""
    from avalanche.benchmarks.classic import SplitMNIST

    from rerelrp.datasets import prepare_idx

    try:
        prepare_idx("mnist", root, tmp)
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error}; or use --dataset digits") from error
    return SplitMNIST(n_experiences=5, return_task_id=False, fixed_class_order=list(range(10)), dataset_root=tmp)


def split_digits(seed: int):
    """The same five tasks of two classes on scikit-learn's digits, through Avalanche's nc_benchmark."""
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    from torch.utils.data import TensorDataset

    from rerelrp.datasets import load_digits

    x_tr, y_tr, x_te, y_te = load_digits()

    def dataset(x, y):
        data = TensorDataset(x, y)
        data.targets = y.tolist()
        return data

    return nc_benchmark(dataset(x_tr, y_tr), dataset(x_te, y_te), n_experiences=5, task_labels=False,
                        fixed_class_order=list(range(10)), seed=seed)


def network(dataset: str) -> nn.Module:
    from benchmarks.backbones import small_cnn

    if dataset == "digits":
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    return small_cnn(1, 10)


def strategy(name: str, model: nn.Module, args: argparse.Namespace, evaluator):
    from avalanche.training.supervised import Naive, Replay

    from rerelrp.avalanche import ReReLRPStrategy

    common = dict(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), criterion=nn.CrossEntropyLoss(),
                  train_mb_size=args.batch_size, train_epochs=args.epochs, eval_mb_size=512, evaluator=evaluator)
    if name == "rerelrp":
        return ReReLRPStrategy(**common, n_tasks=5, random_state=args.seed, progress=False)
    return Naive(**common) if name == "naive" else Replay(**common, mem_size=200)


def main() -> int:
    from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
    from avalanche.logging import TextLogger
    from avalanche.training.plugins import EvaluationPlugin

    args = parse()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # Avalanche's notices about its own defaults
    with tempfile.TemporaryDirectory(prefix="rerelrp-avalanche-") as tmp:
        benchmark = split_digits(args.seed) if args.dataset == "digits" else split_mnist(args.data_root, Path(tmp))
        final = {}
        for name in args.strategies:
            evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                                         forgetting_metrics(experience=True, stream=True),
                                         loggers=[TextLogger(open(Path(tmp) / f"{name}.log", "w"))])
            torch.manual_seed(args.seed)
            learner = strategy(name, network(args.dataset), args, evaluator)
            for experience in benchmark.train_stream:  # train, then evaluate on every test experience
                learner.train(experience, eval_streams=[])
                metrics = learner.eval(benchmark.test_stream)
            final[name] = metrics
            print(f"{name:8s} Top1_Acc_Stream {100 * metrics['Top1_Acc_Stream/eval_phase/test_stream/Task000']:.1f} %  "
                  f"StreamForgetting {100 * metrics['StreamForgetting/eval_phase/test_stream']:.1f} pts", flush=True)
    print("\n| strategy | Top1_Acc_Stream (%) | StreamForgetting (pts) |\n|---|---|---|")
    for name, metrics in final.items():
        print(f"| {name} | {100 * metrics['Top1_Acc_Stream/eval_phase/test_stream/Task000']:.1f} "
              f"| {100 * metrics['StreamForgetting/eval_phase/test_stream']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
