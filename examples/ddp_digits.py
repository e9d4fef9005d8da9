"""rerelrp under DistributedDataParallel: 2 CPU processes (gloo), each training on its own shard.

Three tasks of scikit-learn's digits. Every rank runs the same script: the model is wrapped in DDP, each
task's loader draws with a DistributedSampler (each rank half of the task), the training loop is ours (here
plain Adam over the task's head), and ``learner.training`` does the rest: relevance, pruning and the
detectors run once on rank 0 and reach every rank, and ``save`` writes once. Each rank writes what it holds
to ``--out`` (masks, frozen masks and values, predictions, samples it trained on) so the two can be compared.

    python examples/ddp_digits.py --out /tmp/ddp
"""
from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import rerelrp
from rerelrp.datasets import class_splits, load_digits, task_indices

TASKS = class_splits(10, 5)[:3]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def task_data(t: int):
    """Task t of the digits: (train dataset, validation (x, y), test (x, y)); validation is every 10th image."""
    x, y, x_test, y_test = load_digits()
    rows = task_indices(y, TASKS)[t]
    val = rows[::10]
    train = rows[torch.ones(len(rows), dtype=torch.bool).index_fill_(0, torch.arange(0, len(rows), 10), False)]
    test = task_indices(y_test, TASKS)[t]
    return TensorDataset(x[train], y[train]), (x[val], y[val]), (x_test[test], y_test[test])


def worker(rank: int, world_size: int, port: int, out: str, epochs: int, batch_size: int,
           retrain_epochs: int | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    model = DistributedDataParallel(mlp())
    learner = rerelrp.ReReLRP(model, retrain_epochs=retrain_epochs, progress=False)
    seen = 0
    for t in range(len(TASKS)):
        dataset, val, _ = task_data(t)
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=t)
        with learner.training(DataLoader(dataset, batch_size=batch_size, sampler=sampler), val_loader=[val]) as task:
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            for epoch in range(epochs):
                sampler.set_epoch(epoch)
                for x, y in task.loader:
                    optimizer.zero_grad()
                    task.loss(model(x), y).backward()
                    optimizer.step()
                    seen += len(y)
    x_test = torch.cat([task_data(t)[2][0] for t in range(len(TASKS))])
    learner.save(Path(out) / "learner.zip")
    torch.save({"masks": learner.masks_, "frozen": {name: (learner.frozen_.masks[p], p.detach().clone())
                                                    for name, p in learner.model.module.named_parameters()},
                "predictions": learner.predict(x_test), "seen": seen},
               Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for learner.zip and one rank<r>.pt per rank")
    parser.add_argument("--world-size", type=int, default=2, help="processes (ranks) to spawn")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per task")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size per rank")
    parser.add_argument("--retrain-epochs", type=int, default=None,
                        help="epochs of retraining after each pruning round (default: the learner's)")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    mp.spawn(worker, args=(args.world_size, free_port(), args.out, args.epochs, args.batch_size, args.retrain_epochs),
             nprocs=args.world_size)
    print(f"wrote {args.out}/learner.zip and rank0.pt .. rank{args.world_size - 1}.pt")
