"""Data of one task: checks, the validation split, the reference set.

A task arrives as a ``torch.utils.data.DataLoader`` over a map-style dataset
of ``(x, y)`` pairs with global class ids ``y``. It is read once, in order, to
check it (labels, shapes, finiteness) before the model is touched. With a
``val_loader``, training iterates ``loader`` itself (its sampler included).
Without one, a stratified share of the task is held out for the pruning
threshold and training iterates the rest with the loader's own batch size,
shuffled, or with a new ``DistributedSampler`` like the loader's over the
training share; a loader with another sampler of its own is refused then,
since the rebuilt loader could not keep it.
The reference set (N samples per class) is drawn from the training share.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import (BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler,
                              Subset)

__all__ = ["TaskData", "prepare_task", "check_input", "collect", "MAX_INPUT"]

#: Largest absolute input accepted, in training and prediction: raw 8- and 16-bit images and CT values fit; inputs
#: far beyond it broke every later task, and gave NaN scores and class 0 at prediction.
MAX_INPUT = 1e6


@dataclass
class TaskData:
    """One task, checked and split.

    Attributes
    ----------
    classes
        sorted global class ids of the task.
    train
        loader of the training share.
    train_x, train_y
        ``(n_train, *input_shape)`` inputs and ``(n_train,)`` labels of the training share.
    val_x, val_y
        ``(n_val, *input_shape)`` inputs and ``(n_val,)`` labels for the pruning threshold.
    ref_x, ref_y
        ``(n_ref, *input_shape)`` reference inputs and ``(n_ref,)`` labels.
    input_shape
        shape of one input, without the batch dimension.
    """

    classes: list[int]
    train: Iterable
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    ref_x: torch.Tensor
    ref_y: torch.Tensor
    input_shape: tuple[int, ...]


def check_input(x: torch.Tensor, input_shape: Sequence[int] | None, name: str = "x") -> None:
    """Raise TypeError/ValueError unless ``x`` is a finite float tensor ``(n, *input_shape)`` within
    +-:data:`MAX_INPUT` (checked in its own dtype: a float64 1e300 is refused before a cast to float32 makes it
    Inf)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0 or len(x) == 0:
        raise ValueError(f"{name} has no samples (shape {tuple(x.shape)}): pass at least one input (n, *input_shape)")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}; expected (n, {', '.join(map(str, input_shape))}) "
            f"as in the tasks learned so far"
        )
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum()) if x.dim() > 1 else 1
        raise ValueError(f"{name} contains NaN or Inf values ({bad} sample(s) affected)")
    largest = float(x.abs().max())
    if largest > MAX_INPUT:
        raise ValueError(f"{name}: its largest absolute value is {largest:.3g}, beyond +-{MAX_INPUT:g}: training, the "
                         "network's activations and the detectors' covariances break down at such values; scale the "
                         "inputs as the training inputs were (e.g. to [0, 1])")


def _labels(y: torch.Tensor | np.ndarray | Sequence[int], name: str) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if y.dim() == 2 and y.shape[1] == 1:  # MedMNIST-style (n, 1) labels
        y = y[:, 0]
    if y.dim() != 1 or y.is_floating_point() or y.is_complex():
        raise ValueError(f"{name} must yield integer class ids of shape (batch,), got {tuple(y.shape)} {y.dtype}")
    if y.dtype in (torch.uint8, torch.bool):
        raise TypeError(f"{name} yields labels of dtype {y.dtype}, which torch takes as a mask, not as class ids, "
                        "when it indexes with them: give the labels as integers, e.g. y.long() (torch.long)")
    return y.long()


def collect(loader: Iterable, name: str = "loader") -> tuple[torch.Tensor, torch.Tensor]:
    """Read every ``(x, y)`` batch of ``loader`` into two CPU tensors ``(n, ...)`` and ``(n,)``."""
    xs, ys = [], []
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"{name} must yield (x, y) pairs")
        x, y = batch
        xs.append(torch.as_tensor(x).cpu())
        ys.append(_labels(y, name).cpu())
    if not xs or sum(len(y) for y in ys) == 0:
        raise ValueError(f"{name} is empty: a task needs at least two classes with two samples each")
    return torch.cat(xs), torch.cat(ys)


def _in_order(loader: DataLoader, dataset: Dataset) -> DataLoader:
    return DataLoader(dataset, batch_size=loader.batch_size or 64, shuffle=False,
                      collate_fn=loader.collate_fn, num_workers=loader.num_workers)


def _training_share(loader: DataLoader, share: Subset, seed: int) -> DataLoader:
    """A loader like ``loader`` over the training ``share``: shuffled with ``seed``, or, for a loader with a
    ``DistributedSampler``, with the same kind of sampler (same replicas, rank, shuffle, seed, drop_last), so that
    each rank trains on its own part of the share. Call ``loader.sampler.set_epoch`` on the returned loader."""
    common = dict(batch_size=loader.batch_size or 64, collate_fn=loader.collate_fn, num_workers=loader.num_workers,
                  drop_last=loader.drop_last)
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        return DataLoader(share, sampler=DistributedSampler(share, num_replicas=sampler.num_replicas, rank=sampler.rank,
                                                            shuffle=sampler.shuffle, seed=sampler.seed,
                                                            drop_last=sampler.drop_last), **common)
    return DataLoader(share, shuffle=True, generator=torch.Generator().manual_seed(seed), **common)


def prepare_task(
    loader: DataLoader,
    val_loader: Iterable | None,
    *,
    n_outputs: int,
    learned: Sequence[int],
    input_shape: Sequence[int] | None,
    val_fraction: float,
    n_reference: int,
    seed: int,
) -> TaskData:
    """Check one task's data and split it into training, validation and reference sets.

    Parameters
    ----------
    loader
        the task's training data (a DataLoader over a map-style dataset).
    val_loader
        the task's validation data, or None to hold out ``val_fraction``.
    n_outputs
        rows of the model's output layer; labels must lie in ``[0, n_outputs)``.
    learned
        class ids of earlier tasks (a task may not repeat them).
    input_shape
        shape of one input as in earlier tasks (None on the first task).
    val_fraction
        share held out, stratified by class, when ``val_loader`` is None.
    n_reference
        reference samples per class (fewer if the class has fewer).
    seed
        seed of the split, the reference draw and the training shuffle.
    """
    dataset = _check_loader(loader)
    x, y = collect(_in_order(loader, dataset), "loader")
    classes = _check_training_data(x, y, input_shape, n_outputs, learned)
    counts = torch.bincount(y, minlength=n_outputs)[classes]
    rng = np.random.default_rng(seed)
    indices = np.arange(len(y))
    if val_loader is None:
        train_idx, train, val_x, val_y = _hold_out(loader, x, y, classes, counts, indices, val_fraction, seed)
    else:
        train_idx, train = indices, loader
        val_x, val_y = _given_validation(val_loader, x, classes)
    _check_batches(train, loader, len(train_idx), len(y))
    ref_idx = np.concatenate([
        rng.permutation(train_idx[(y[train_idx] == c).numpy()])[:n_reference] for c in classes
    ])
    return TaskData(classes, train, x[train_idx], y[train_idx], val_x, val_y, x[ref_idx], y[ref_idx],
                    tuple(x.shape[1:]))


def _check_loader(loader: DataLoader) -> Dataset:
    """Raise TypeError/ValueError unless ``loader`` is a DataLoader yielding batches of a map-style dataset;
    the dataset."""
    if not isinstance(loader, DataLoader):
        raise TypeError(f"loader must be a torch.utils.data.DataLoader, got {type(loader).__name__}")
    dataset = loader.dataset
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError("loader must read a map-style dataset (with __len__ and __getitem__)")
    if loader.batch_size is None and loader.batch_sampler is None:
        raise ValueError("loader has batch_size=None, so it yields single samples, not batches: give it a batch_size "
                         "(e.g. DataLoader(dataset, batch_size=64, shuffle=True))")
    return dataset


def _check_batches(train: Iterable, loader: DataLoader, n_train: int, n: int) -> None:
    """Raise ValueError when ``train``, the loader the task trains on (``n_train`` of ``loader``'s ``n`` samples),
    yields no batch: ``drop_last=True`` with fewer samples than a batch would learn nothing and freeze the task."""
    try:
        batches = len(train)
    except TypeError:  # a loader of unknown length: its batches are not counted
        return
    if batches == 0:
        share = "all" if n_train == n else "the training share"
        where = " in this process" if isinstance(getattr(train, "sampler", None), DistributedSampler) else ""
        raise ValueError(f"loader has drop_last={loader.drop_last} and batch_size={loader.batch_size}, but the task "
                         f"trains on {n_train} samples ({share} of its {n}): it would yield no batch{where}, so "
                         "nothing would be learned and the untrained task frozen; set drop_last=False or a batch_size "
                         f"of at most {n_train}")


def _check_training_data(x: torch.Tensor, y: torch.Tensor, input_shape: Sequence[int] | None, n_outputs: int,
                         learned: Sequence[int]) -> list[int]:
    """Raise TypeError/ValueError unless the task's inputs ``x`` ``(n, *input_shape)`` and labels ``y`` ``(n,)``
    are fit to learn (see :func:`prepare_task`); the task's sorted class ids."""
    check_input(x, input_shape, "training inputs")
    classes = sorted(int(c) for c in torch.unique(y))
    outside = [c for c in classes if c < 0 or c >= n_outputs]
    if outside:
        raise ValueError(f"labels {outside} lie outside the output layer, which has {n_outputs} rows (0..{n_outputs - 1})")
    repeated = sorted(set(classes) & set(learned))
    if repeated:
        raise ValueError(f"classes {repeated} were learned in an earlier task; each task must bring new classes")
    if len(classes) < 2:
        raise ValueError(f"a task needs at least two classes, got only class {classes}")
    return classes


def _hold_out(loader: DataLoader, x: torch.Tensor, y: torch.Tensor, classes: list[int], counts: torch.Tensor,
              indices: np.ndarray, val_fraction: float, seed: int
              ) -> tuple[np.ndarray, DataLoader, torch.Tensor, torch.Tensor]:
    """Hold out a stratified ``val_fraction`` of the task (``counts``: samples per class of ``classes``): the
    sorted training indices, the loader of the training share, the validation inputs and labels."""
    samplers = (RandomSampler, SequentialSampler, DistributedSampler)
    if type(loader.sampler) not in samplers or type(loader.batch_sampler) is not BatchSampler:
        raise ValueError(
            f"loader draws its batches with its own {type(loader.sampler).__name__} / "
            f"{type(loader.batch_sampler).__name__}: holding out validation data would rebuild the loader without "
            "them (a weighted sampler would stop weighting); pass val_loader, and the task trains on loader as it "
            "is")
    if int(counts.min()) < 2:
        raise ValueError("each class needs at least two samples to hold out validation data; pass val_loader")
    n_val = max(int(round(val_fraction * len(y))), len(classes))
    train_idx, val_idx = train_test_split(indices, test_size=n_val, stratify=y.numpy(), random_state=seed)
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    train = _training_share(loader, Subset(loader.dataset, train_idx.tolist()), seed)
    return train_idx, train, x[val_idx], y[val_idx]


def _given_validation(val_loader: Iterable, x: torch.Tensor, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and check ``val_loader``: its inputs (shaped like the training inputs ``x``) and labels, of the
    task's ``classes`` only."""
    val_x, val_y = collect(val_loader, "val_loader")
    check_input(val_x, x.shape[1:], "validation inputs")
    foreign = sorted(set(torch.unique(val_y).tolist()) - set(classes))
    if foreign:
        raise ValueError(f"val_loader has classes {foreign} that the task's loader does not have ({classes})")
    return val_x, val_y
