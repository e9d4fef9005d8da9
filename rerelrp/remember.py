"""Remember: the relevance datasets, all that is kept of past data.

For every subnetwork S_m and every reference sample of every task s >= m,
the memory holds the relevance that sample leaves in S_m's units, cut down to
the ``n_features`` units detector m reads. Those units are the ones with the
highest mean relevance on task m's own reference samples, fixed once task m
is learned. Only these float vectors are stored: no inputs, no activations.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["RelevanceMemory"]


class RelevanceMemory:
    """Relevance vectors per detector and source task.

    Parameters
    ----------
    n_features: units (features) each detector reads.

    Attributes
    ----------
    features: per detector m, a ``(k,)`` LongTensor of unit indices into the
        concatenated unit vector.
    vectors: ``vectors[m][s]`` is a float32 array ``(n_ref_s, k)``: task s's
        reference samples seen through S_m, for s >= m.
    """

    def __init__(self, n_features: int):
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        self.n_features = n_features
        self.features: list[torch.Tensor] = []
        self.vectors: list[dict[int, np.ndarray]] = []

    @property
    def n_tasks(self) -> int:
        """Number of tasks remembered."""
        return len(self.features)

    def add_task(self, relevance: list[torch.Tensor]) -> None:
        """Store the newest task's reference samples as seen through every subnetwork.

        ``relevance[m]`` is ``(n_ref, total_units)``: normalised unit relevance
        of the new task's reference samples through S_m, for m = 0..t, where
        t is the new task's index.
        """
        t = self.n_tasks
        if len(relevance) != t + 1:
            raise ValueError(f"expected relevance through {t + 1} subnetworks, got {len(relevance)}")
        k = min(self.n_features, relevance[t].shape[1])
        self.features.append(torch.topk(relevance[t].mean(0), k).indices.sort().values.cpu())
        self.vectors.append({})
        for m, rel in enumerate(relevance):
            self.vectors[m][t] = self.select(m, rel)

    def select(self, m: int, relevance: torch.Tensor) -> np.ndarray:
        """Cut ``(n, total_units)`` relevance through S_m down to detector m's ``(n, k)`` features."""
        return relevance[:, self.features[m].to(relevance.device)].detach().cpu().numpy().astype(np.float32)

    def dataset(self, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detector m's training set: ``X (n, k)``, ``y (n,)`` (1 = task m, 0 = a later task)
        and ``sample_weight (n,)`` giving every source task the same total weight."""
        parts = sorted(self.vectors[m].items())
        X = np.concatenate([v for _, v in parts])
        y = np.concatenate([np.full(len(v), int(s == m)) for s, v in parts])
        w = np.concatenate([np.full(len(v), 1.0 / len(v)) for _, v in parts])
        return X, y, w * len(w) / w.sum()

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored vectors and feature indices."""
        return sum(v.nbytes for d in self.vectors for v in d.values()) + sum(
            f.numel() * f.element_size() for f in self.features)
