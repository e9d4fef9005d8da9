"""The input space: a second task recognizer that reads the inputs themselves, through one fixed map that every task
shares (``ReReLRP(input_weight=...)``).

The detector chain (:mod:`rerelrp.recognize`) reads each task's subnetwork, trained to tell that task's classes
apart and nothing else; where tasks look alike (a top and a shoe in one task, another top and another shoe in the
next) the subnetworks keep little that tells one task's data from another's. This recognizer keeps what the data
look like instead, in a space no training changes:

1. the map: ``FILTERS`` 5 x 5 filters (no bias) over images ``(n, C, H, W)``, ReLU, averaged over a ``GRID`` x
   ``GRID`` grid of regions: ``(n, FILTERS * GRID**2)``; inputs of any other shape are flattened as they are. The
   filters (``ReReLRP(input_filters=...)``) are ``"patches"`` (the default, :func:`patch_filters`): the k-means
   centroids of the first task's whitened 5 x 5 patches, as Coates and Ng (2011) learn single-layer features:
   filters shaped like the first task's strokes and edges; or ``"random"``: seeded normal weights, scaled by the
   fan-in;
2. the axes: the first task's ``FEATURES`` principal components of that map, each column scaled to unit variance
   (:meth:`rerelrp.remember.ActivationStatistics.choose_basis`), fixed from then on;
3. per class of every task, a Gaussian mixture of at most ``COMPONENTS`` components there
   (:class:`rerelrp.remember.ClassStatistics`; statistics only, no input is kept).

Its answer for an input is the posterior of each task (equal priors, each task the mean of its classes' densities).
:func:`rerelrp.recognize.route` adds ``input_weight`` times its log to the chain's log task scores (a product of the
two recognizers' posteriors, the input's raised to ``input_weight``); the chain still stops early, exactly.

Why these numbers: on default learners of Split Fashion-MNIST and Split MNIST (small CNN, seed 0), validation
recognition was best, among 19 variants of 16-64 filters, grids of 2-7 cells a side, 16-64 features and 1-16
components, with eight mixture components rather than four or one and a coarse grid; 20 features keep the bytes
within those of a 200-image buffer on a 5-task stream (docs: Benchmarks, Recognition). ``"patches"`` is ours on
Coates and Ng's recipe (scikit-learn's k-means, a ZCA whitening in torch); the filters are centroids of many patches,
statistics of the first task, not its images.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.cluster import KMeans
from torch.nn import functional

from .remember import ActivationStatistics, GaussianDensities

__all__ = ["InputRecognizer", "INPUT_FILTERS", "patch_filters", "FILTERS", "SIZE", "GRID", "FEATURES", "COMPONENTS",
           "PATCHES", "PATCH_IMAGES", "WHITENING", "CHUNK_FLOATS"]

#: ``ReReLRP(input_filters=...)``: how the map's filters are made (see the module docstring).
INPUT_FILTERS = ("random", "patches")

#: Filters of the map over images.
FILTERS = 64
#: Regions a side the map averages each filter's response over.
GRID = 3
#: Principal components of the map the class mixtures live in.
FEATURES = 20
#: Most Gaussian mixture components per class.
COMPONENTS = 8
#: Side of the square filters.
SIZE = 5
#: ``"patches"``: the patches k-means clusters, drawn at random positions of the images below.
PATCHES = 100_000
#: ``"patches"``: the most of the first task's images (a seeded draw) the patches come from.
PATCH_IMAGES = 3000
#: ``"patches"``: added to each patch's spread when normalizing it, and to the eigenvalues of the patches' covariance
#: when whitening them (inputs in [0, 1]).
WHITENING = 0.1
#: Filter responses held at once, in floats (128 MiB): inputs are mapped in chunks of at most this many.
CHUNK_FLOATS = 2 ** 25


def patch_filters(x: torch.Tensor, n_filters: int = FILTERS, size: int = SIZE,
                  random_state: int | None = None) -> torch.Tensor:
    """``(n_filters, C, size, size)`` float32 filters from images ``x`` ``(n, C, H, W)`` (H, W >= ``size``), after
    Coates and Ng (2011): :data:`PATCHES` patches at random positions of at most :data:`PATCH_IMAGES` images, each
    centred and divided by its spread plus :data:`WHITENING`, ZCA-whitened (eigenvalues plus :data:`WHITENING`), then
    clustered by scikit-learn's k-means; each centroid, taken back through the whitening, unit-normed and centred, is a
    filter, scaled by the fan-in as the random filters are. Seeded by ``random_state``."""
    generator = torch.Generator().manual_seed(random_state or 0)
    x = x.detach().cpu().float()
    x = x[torch.randperm(len(x), generator=generator)[:PATCH_IMAGES]]
    n, channels, height, width = x.shape
    _check_patch_size(height, width, size)
    image = torch.randint(n, (PATCHES,), generator=generator)
    top = torch.randint(height - size + 1, (PATCHES,), generator=generator)
    left = torch.randint(width - size + 1, (PATCHES,), generator=generator)
    offsets = torch.arange(size)
    rows, cols = (top[:, None] + offsets)[:, :, None], (left[:, None] + offsets)[:, None, :]
    patches = x[image[:, None, None], :, rows, cols].permute(0, 3, 1, 2).flatten(1).double()  # (PATCHES, C size size)
    patches = patches - patches.mean(1, keepdim=True)
    patches = patches / (patches.std(1, keepdim=True) + WHITENING)
    values, vectors = torch.linalg.eigh(torch.cov(patches.T))
    whitening = vectors @ torch.diag((values.clamp(min=0) + WHITENING).rsqrt()) @ vectors.T
    kmeans = KMeans(n_filters, n_init=1, random_state=random_state or 0).fit((patches @ whitening).numpy())
    centroids = torch.as_tensor(kmeans.cluster_centers_) @ whitening
    filters = (centroids / centroids.norm(dim=1, keepdim=True)).float().view(n_filters, channels, size, size)
    return (filters - filters.mean((1, 2, 3), keepdim=True)) / math.sqrt(channels * size * size)


def _check_patch_size(height: int, width: int, size: int) -> None:
    if height < size or width < size:
        raise ValueError(f"images of {height} x {width} pixels hold no {size} x {size} patch to cluster: use "
                         "input_filters='random'")


class InputRecognizer:
    """Task posteriors from class mixtures in one fixed space of the inputs (see the module docstring).

    Parameters
    ----------
    kind
        ``"patches"`` or ``"random"`` (:data:`INPUT_FILTERS`): how the first task's inputs fix the filters.
    random_state
        seed of the filters and of the mixtures' initialisation.

    Attributes
    ----------
    filters
        ``(FILTERS, C, SIZE, SIZE)`` float32 filters, fixed by the first task's inputs (None before it, and for inputs that
        are not images).
    memory
        :class:`rerelrp.remember.ActivationStatistics` with one space (index 0) holding every class of every task.
    densities
        :class:`rerelrp.remember.GaussianDensities` of :attr:`memory` (rebuilt by :meth:`fit`).
    """

    def __init__(self, kind: str = "patches", random_state: int | None = None):
        if kind not in INPUT_FILTERS:
            raise ValueError(f"kind must be one of {INPUT_FILTERS}, got {kind!r}")
        self.kind = kind
        self.random_state = random_state
        self.filters: torch.Tensor | None = None
        self.memory = ActivationStatistics(FEATURES, COMPONENTS, random_state)
        self.densities = GaussianDensities()

    def map(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed map of inputs ``x`` ``(n, *input_shape)``: ``(n, FILTERS * GRID**2)`` for images (with
        :attr:`filters`), else ``(n, prod(input_shape))``; float32, on ``x``'s device."""
        if self.filters is None:
            return x.detach().flatten(1).float()
        filters = self.filters.to(x.device)
        chunk = max(1, CHUNK_FLOATS // (FILTERS * x.shape[2] * x.shape[3]))
        with torch.no_grad():
            responses = (functional.conv2d(part.float(), filters, padding=SIZE // 2).relu_() for part in x.split(chunk))
            return torch.cat([functional.adaptive_avg_pool2d(r, GRID).flatten(1) for r in responses])

    def check(self, input_shape: tuple[int, ...]) -> None:
        """Raise ValueError where the first task's inputs of ``input_shape`` (one input's shape) cannot fix
        :attr:`kind`'s filters: ``"patches"`` needs images of at least :data:`SIZE` x :data:`SIZE` pixels."""
        if self.kind == "patches" and len(input_shape) == 3:
            _check_patch_size(input_shape[1], input_shape[2], SIZE)

    def remember(self, x: torch.Tensor, y: torch.Tensor, classes: list[int]) -> None:
        """Add a task from its training inputs ``x`` ``(n, *input_shape)`` with labels ``y`` ``(n,)`` of its
        ``classes``; the first task also fixes the filters (images) and the axes."""
        first = not self.memory.n_tasks
        if first and x.dim() == 4 and self.kind == "patches":
            self.filters = patch_filters(x, random_state=self.random_state)
        elif first and x.dim() == 4:
            generator = torch.Generator().manual_seed(self.random_state or 0)
            self.filters = torch.randn(FILTERS, x.shape[1], SIZE, SIZE, generator=generator) / math.sqrt(
                x.shape[1] * SIZE * SIZE)
        mapped = self.map(x)
        if first:
            self.memory.choose_basis(mapped, standardize=True)
        features = self.memory.select(0, mapped)
        labels = y.cpu().numpy()
        for c in classes:
            self.memory.add_class(0, c, features[labels == c])

    def fit(self, tasks: list[list[int]]) -> "InputRecognizer":
        """Rebuild the densities of the classes of ``tasks`` (class ids of each)."""
        self.densities.fit(self.memory, tasks)
        return self

    def log_posterior(self, x: torch.Tensor) -> np.ndarray:
        """Log posterior ``(n, T)`` float64 of each learned task for inputs ``x`` ``(n, *input_shape)`` (rows
        log-sum-exp to 0)."""
        loglik = self.densities.task_loglik(0, self.memory.select(0, self.map(x)))
        return loglik - logsumexp(loglik, axis=1, keepdims=True)

    def state_dict(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """``(index, tensors)``: the memory's index (JSON) with the filters' :attr:`kind`, and tensors named
        ``input.*`` (the filters as ``input.filters``)."""
        index, tensors = self.memory.state_dict(prefix="input.")
        index = {**index, "kind": self.kind}
        if self.filters is not None:
            tensors["input.filters"] = self.filters.contiguous()
        return index, tensors

    def load_state_dict(self, index: dict, tensors: dict[str, torch.Tensor], tasks: list[list[int]],
                        input_shape: tuple[int, ...]) -> None:
        """Restore from :meth:`state_dict`'s ``(index, tensors)`` for ``tasks`` (class ids of each) and inputs of
        ``input_shape``; raises ValueError naming the entry that does not fit (KeyError for a missing one)."""
        self.memory.load_state_dict(index, tensors, prefix="input.")
        self.kind = index.get("kind", "random")  # saves from before input_filters: random filters
        if self.kind not in INPUT_FILTERS:
            raise ValueError(f"meta.json gives input filters of kind {self.kind!r}, not one of {INPUT_FILTERS}")
        self.filters = tensors.get("input.filters")
        if self.memory.n_tasks != 1:
            raise ValueError(f"meta.json holds {self.memory.n_tasks} input spaces, not one")
        image = len(input_shape) == 3
        if image != (self.filters is not None) or image and (
                list(self.filters.shape) != [FILTERS, input_shape[0], SIZE, SIZE] or not self.filters.isfinite().all()):
            held = None if self.filters is None else list(self.filters.shape)
            raise ValueError(f"tensors.safetensors holds input.filters {held}, not {FILTERS} finite filters "
                             f"{[FILTERS, input_shape[0], SIZE, SIZE] if image else None} for inputs of shape "
                             f"{list(input_shape)}")
        width = FILTERS * GRID ** 2 if image else math.prod(input_shape)
        self.memory.check(tasks, width, "input")
        self.fit(tasks)
