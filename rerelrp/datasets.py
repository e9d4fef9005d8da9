"""Real data for examples, tests and benchmarks, read offline.

Nothing here downloads unless asked to. Data locations come from the
``root`` argument or the ``RERELRP_DATA`` environment variable, a folder that
holds ``mnist/`` and ``fashion-mnist/`` (the four original ``.gz`` files of each) and ``medmnist/``
(the official ``<flag>.npz`` files).
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["data_root", "class_splits", "task_indices", "load_digits", "prepare_idx", "load_mnist", "load_medmnist",
           "MNIST_FILES", "IDX_DATASETS"]

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def data_root(root: str | os.PathLike | None = None) -> Path | None:
    """The folder the full data sets are read from.

    Parameters
    ----------
    root : str or os.PathLike, optional
        A folder given by the caller (``--data-root``).

    Returns
    -------
    pathlib.Path or None
        ``root`` if given, else ``$RERELRP_DATA`` if set, else None.
    """
    if root is not None:
        return Path(root)
    env = os.environ.get("RERELRP_DATA")
    return Path(env) if env else None


def class_splits(n_classes: int, n_tasks: int) -> list[list[int]]:
    """Classes in label order, split into ``n_tasks`` tasks; the remainder goes to the first tasks.

    Parameters
    ----------
    n_classes : int
        Classes in all, ids ``0 .. n_classes - 1``.
    n_tasks : int
        Tasks, in ``[1, n_classes]``.

    Returns
    -------
    list of list of int
        The class ids of each task.

    Examples
    --------
    >>> class_splits(9, 4)
    [[0, 1, 2], [3, 4], [5, 6], [7, 8]]
    """
    if not 1 <= n_tasks <= n_classes:
        raise ValueError(f"n_tasks must lie in [1, {n_classes}], got {n_tasks}")
    base, extra = divmod(n_classes, n_tasks)
    bounds = np.cumsum([0] + [base + (i < extra) for i in range(n_tasks)])
    return [list(range(bounds[i], bounds[i + 1])) for i in range(n_tasks)]


def task_indices(y: torch.Tensor, tasks: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """The samples of each task.

    Parameters
    ----------
    y : torch.Tensor
        ``(n,)`` labels (global class ids).
    tasks : sequence of sequences of int
        The class ids of each task.

    Returns
    -------
    list of torch.Tensor
        Per task, the ``(n_t,)`` int64 indices into ``y`` of the samples whose label is one of the task's classes.
    """
    return [torch.isin(y, torch.as_tensor(list(classes))).nonzero()[:, 0] for classes in tasks]


def load_digits(test_size: float = 0.3, random_state: int = 0):
    """scikit-learn's 8x8 digits (shipped with scikit-learn: no download), scaled to [0, 1], in a stratified split.

    Parameters
    ----------
    test_size : float, default 0.3
        Share of the 1,797 images held out for testing.
    random_state : int, default 0
        Seed of the split.

    Returns
    -------
    x_train, y_train, x_test, y_test : torch.Tensor
        ``(n, 64)`` float32 inputs, ``(n,)`` int64 labels 0-9, then the same for the ``m`` test images.
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_digits(return_X_y=True)
    parts = train_test_split(x / 16.0, y, test_size=test_size, stratify=y, random_state=random_state)
    x_tr, x_te, y_tr, y_te = parts
    return (torch.tensor(x_tr, dtype=torch.float32), torch.tensor(y_tr), torch.tensor(x_te, dtype=torch.float32),
            torch.tensor(y_te))


#: Per dataset of the four IDX files: torchvision's class name (its raw folder) and the folders searched under the
#: data root, in order.
IDX_DATASETS = {"mnist": ("MNIST", ("", "mnist", "MNIST/raw")),
                "fashion-mnist": ("FashionMNIST", ("fashion-mnist", "FashionMNIST/raw"))}


def prepare_idx(dataset: str, root: str | os.PathLike | None, dest: str | os.PathLike) -> Path:
    """Copy the four original IDX files of a data set, unzipped, to where torchvision's ``MNIST`` /
    ``FashionMNIST`` read them with ``download=False`` (``dest/<class name>/raw``).

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist"}
        Which data set.
    root : str or os.PathLike, optional
        Folder searched (else ``$RERELRP_DATA``), in the sub-folders :data:`IDX_DATASETS` names; files gzipped or not.
    dest : str or os.PathLike
        Folder to copy them into.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    ValueError
        An unknown ``dataset``.
    FileNotFoundError
        Naming the files and where to put them.
    """
    if dataset not in IDX_DATASETS:
        raise ValueError(f"dataset must be one of {sorted(IDX_DATASETS)}, got {dataset!r}")
    name, folders = IDX_DATASETS[dataset]
    base = data_root(root)
    found = None
    for folder in (base / f for f in folders) if base is not None else ():
        present = [next((c for c in (folder / (f + ".gz"), folder / f) if c.is_file()), None) for f in MNIST_FILES]
        if all(present):
            found = present
            break
    if found is None:
        where = f"{base}/{folders[-2]}/" if base is not None else (
            f"a folder named by --data-root or $RERELRP_DATA, in {folders[-2]}/")
        raise FileNotFoundError(f"{name} not found: put {', '.join(f + '.gz' for f in MNIST_FILES)} in {where}")
    raw = Path(dest, name, "raw")
    raw.mkdir(parents=True, exist_ok=True)
    for file, path in zip(MNIST_FILES, found):
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as src, open(raw / file, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return Path(dest)


def load_mnist(root: str | os.PathLike | None = None, dataset: str = "mnist"):
    """The full MNIST, or Fashion-MNIST, through torchvision, offline (the files found as :func:`prepare_idx`
    says).

    Parameters
    ----------
    root : str or os.PathLike, optional
        Data folder (else ``$RERELRP_DATA``).
    dataset : {"mnist", "fashion-mnist"}, default "mnist"
        Which data set.

    Returns
    -------
    x_train, y_train, x_test, y_test : torch.Tensor
        ``(60000, 1, 28, 28)`` float32 in [0, 1], ``(60000,)`` int64 labels, ``(10000, 1, 28, 28)``, ``(10000,)``.

    Raises
    ------
    FileNotFoundError
        Naming the files and where to put them.
    """
    import torchvision.datasets

    with tempfile.TemporaryDirectory(prefix=f"rerelrp-{dataset}-") as tmp:
        prepare_idx(dataset, root, tmp)
        kind = getattr(torchvision.datasets, IDX_DATASETS[dataset][0])
        splits = [kind(tmp, train=train, download=False) for train in (True, False)]
    out = []
    for ds in splits:
        out += [ds.data.unsqueeze(1).float() / 255.0, ds.targets.clone()]
    return tuple(out)


def load_medmnist(flag: str, root: str | os.PathLike | None = None, download: bool = False) -> dict:
    """One official 28x28 MedMNIST subset through the ``medmnist`` package.

    Parameters
    ----------
    flag : str
        The subset, e.g. ``"pneumoniamnist"``, ``"bloodmnist"``. Its file ``<flag>.npz`` is looked for in ``root``,
        ``root/medmnist``, else in medmnist's own default folder (``~/.medmnist``).
    root : str or os.PathLike, optional
        Data folder (else ``$RERELRP_DATA``).
    download : bool, default False
        Let medmnist fetch a missing file (where there is internet).

    Returns
    -------
    dict
        ``{"train" | "val" | "test": (x, y)}``: ``x`` ``(n, 3, 28, 28)`` float32 in [0, 1] (grey images repeated to 3
        channels), ``y`` ``(n,)`` int64 labels.

    Raises
    ------
    ValueError
        An unknown ``flag``.
    FileNotFoundError
        In one line, naming the file and the folder.
    """
    import medmnist

    if flag not in medmnist.INFO:
        raise ValueError(f"unknown MedMNIST flag {flag!r}; known: {', '.join(sorted(medmnist.INFO))}")
    base = data_root(root)
    folders = [base, base / "medmnist"] if base is not None else []
    folders.append(Path(getattr(medmnist.dataset, "DEFAULT_ROOT", Path.home() / ".medmnist")))
    folder = next((f for f in folders if (f / f"{flag}.npz").is_file()), None)
    if folder is None:
        target = folders[-1] if base is None else (base / "medmnist")
        if not download:
            raise FileNotFoundError(f"{flag}.npz not found: put the official 28x28 file {flag}.npz in {target}/ "
                                    f"(or allow downloading where there is internet)")
        target.mkdir(parents=True, exist_ok=True)
        folder = target
    cls = getattr(medmnist, medmnist.INFO[flag]["python_class"])
    out = {}
    for split in ("train", "val", "test"):
        try:
            ds = cls(split=split, root=str(folder), download=download and split == "train", size=28)
        except Exception as error:  # medmnist raises bare RuntimeErrors, its downloader anything
            raise FileNotFoundError(f"{flag}.npz could not be read or downloaded into {folder}/: {error}") from error
        x = torch.as_tensor(np.asarray(ds.imgs), dtype=torch.float32) / 255.0
        x = x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous() if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()
        out[split] = (x, torch.as_tensor(np.asarray(ds.labels)).reshape(-1).long())
    return out
