"""Distributed training: DistributedDataParallel on 2 CPU processes (gloo), examples/ddp_digits.py run as printed in
docs/howto/ddp.md; a DistributedSampler's loader, each rank training on its part of the task's training share."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import rerelrp
from rerelrp import ReReLRP
from conftest import digits_mlp

ROOT = Path(__file__).resolve().parent.parent
EPOCHS, BATCH = 5, 16


def example():
    spec = importlib.util.spec_from_file_location("ddp_digits", ROOT / "examples" / "ddp_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_example(out, *options):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "ddp_digits.py"), "--out", str(out),
                           "--epochs", str(EPOCHS), "--batch-size", str(BATCH), *options],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """The example with the learner's defaults: retraining after pruning runs on every rank, through DDP."""
    return run_example(tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def ranks_without_retraining(tmp_path_factory):
    """The example with ``retrain_epochs=0``: every optimizer step is the caller's loop's."""
    return run_example(tmp_path_factory.mktemp("ddp-no-retrain"), "--retrain-epochs", "0")


@pytest.mark.slow  # processes of a gloo process group
def test_every_rank_holds_the_same_learner_and_trained_on_its_shard(ranks):
    out, (first, second) = ranks
    for a, b in zip(first["masks"], second["masks"]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    for name, (mask, value) in first["frozen"].items():
        assert torch.equal(mask, second["frozen"][name][0]) and torch.equal(value, second["frozen"][name][1]), name
    assert torch.equal(first["predictions"], second["predictions"])
    ddp = example()
    halves = sum((len(ddp.task_data(t)[0]) + 1) // 2 for t in range(len(ddp.TASKS))) * EPOCHS
    assert first["seen"] == second["seen"] == halves  # each rank trained on its half, not on everything
    saved = rerelrp.load(out / "learner.zip", ddp.mlp())  # written once, by rank 0, loads without DDP
    x_test = torch.cat([ddp.task_data(t)[2][0] for t in range(len(ddp.TASKS))])
    assert torch.equal(saved.predict(x_test), first["predictions"])


def test_a_distributed_sampler_loader_without_val_loader_trains_each_rank_on_its_part_of_the_share(digits):
    from torch.utils.data import DistributedSampler

    train, _ = digits
    dataset = TensorDataset(*train[0])
    shards = []
    for rank in (0, 1):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=3)
        learner = ReReLRP(digits_mlp(), epochs=1, progress=False)
        with learner.training(DataLoader(dataset, batch_size=16, sampler=sampler)) as task:
            rebuilt = task.loader.sampler
            assert isinstance(rebuilt, DistributedSampler)
            assert (rebuilt.num_replicas, rebuilt.rank, rebuilt.shuffle, rebuilt.seed) == (2, rank, True, 3)
            share = task.loader.dataset
            shards.append({int(share.indices[i]) for i in rebuilt})
            optimizer = torch.optim.Adam(learner.model.parameters(), lr=1e-3)
            for x, y in task.loader:
                optimizer.zero_grad()
                task.loss(learner.model(x), y).backward()
                optimizer.step()
    assert not shards[0] & shards[1]  # each rank its own part of the training share
    assert len(shards[0] | shards[1]) == len(share.indices)  # together: all of it, validation data held out
    assert len(share.indices) < len(dataset)



class BothShards:
    """Batches of one process holding what both ranks' DistributedSamplers give in one step: rank 0's batch
    followed by rank 1's, so that the mean loss equals the mean of the two ranks' means DDP averages."""

    def __init__(self, dataset, seed):
        self.samplers = [DistributedSampler(dataset, 2, r, shuffle=True, seed=seed) for r in range(2)]
        self.epoch = 0

    def __iter__(self):
        for sampler in self.samplers:
            sampler.set_epoch(self.epoch)
        self.epoch += 1
        shards = [list(sampler) for sampler in self.samplers]
        for start in range(0, len(shards[0]), BATCH):
            yield shards[0][start:start + BATCH] + shards[1][start:start + BATCH]

    def __len__(self):
        return -(-len(self.samplers[0]) // BATCH)


@pytest.mark.slow  # processes of a gloo process group
def test_one_process_with_the_same_data_order_keeps_the_same_units(ranks_without_retraining):
    # without retraining: rerelrp's own retraining loop reads each rank's DistributedSampler in the order of its
    # last epoch, which the batches of one process below do not replay
    _, (first, _) = ranks_without_retraining
    ddp = example()
    model = ddp.mlp()
    learner = rerelrp.ReReLRP(model, retrain_epochs=0, progress=False)
    for t in range(len(ddp.TASKS)):
        dataset, val, _ = ddp.task_data(t)
        with learner.training(DataLoader(dataset, batch_sampler=BothShards(dataset, t)), val_loader=[val]) as task:
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            for _ in range(EPOCHS):
                for x, y in task.loader:
                    optimizer.zero_grad()
                    task.loss(model(x), y).backward()
                    optimizer.step()
    for a, b in zip(learner.masks_, first["masks"]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    for name, p in model.named_parameters():
        mask, value = first["frozen"][name]
        assert torch.equal(learner.frozen_.masks[p], mask), name
        # the same arithmetic up to the order of float additions (DDP averages two means)
        torch.testing.assert_close(p.detach()[mask], value[mask], rtol=1e-4, atol=1e-5)


def disagreeing_rank(rank, port, out):
    """Rank r learns classes {2r, 2r+1}: the ranks disagree on the task's classes."""
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import TensorDataset

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ddp = example()
    x, y, _, _ = ddp.load_digits()
    rows = (y == 2 * rank) | (y == 2 * rank + 1)
    learner = rerelrp.ReReLRP(DistributedDataParallel(ddp.mlp()), progress=False)
    try:
        learner.fit_task(DataLoader(TensorDataset(x[rows], y[rows]), batch_size=32), val_loader=[(x[rows], y[rows])])
        message = "no error"
    except ValueError as error:
        message = str(error)
    (Path(out) / f"rank{rank}.txt").write_text(f"{message}\nfitted: {hasattr(learner, 'tasks_')}")
    dist.destroy_process_group()


@pytest.mark.slow  # processes of a gloo process group
def test_ranks_that_disagree_on_the_classes_both_raise(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(disagreeing_rank, args=(example().free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        text = (tmp_path / f"rank{rank}.txt").read_text()
        assert "the ranks disagree on the classes of task 0: rank 0: [0, 1]; rank 1: [2, 3]" in text
        assert "fitted: False" in text  # the failed first task left the learner unfitted
