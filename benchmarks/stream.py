"""A class-incremental stream of tasks, and the training loader every method reads it through."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, TensorDataset


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 64, seed: int = 0) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


@dataclass
class Stream:
    """A class-incremental stream: per task, ``(x, y)`` tensors of its train, val and test data."""

    name: str
    tasks: list[list[int]]
    train: list[tuple[torch.Tensor, torch.Tensor]]
    val: list[tuple[torch.Tensor, torch.Tensor]]
    test: list[tuple[torch.Tensor, torch.Tensor]]
    n_classes: int
    task_names: list[str]
    note: str = ""
    class_names: list[str] = field(default_factory=list)  # by global class id; empty: the ids themselves
    #: when tasks reuse labels under new class ids (Permuted MNIST: task k's digit d is class 10 k + d), the
    #: number of labels: ``class % label_count`` is the label, and results also report its accuracy
    label_count: int | None = None

    def class_name(self, c: int) -> str:
        """The name of global class ``c`` (its id when the stream has no names)."""
        return self.class_names[c] if self.class_names else str(c)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train[0][0].shape[1:])

    def subsample(self, per_task: int, seed: int) -> "Stream":
        """The same stream with at most ``per_task`` samples per task and split (for --quick)."""
        g = torch.Generator().manual_seed(seed)

        def cut(parts):
            return [(x[i], y[i]) for x, y in parts for i in [torch.randperm(len(y), generator=g)[:per_task]]]

        return Stream(self.name, self.tasks, cut(self.train), cut(self.val), cut(self.test), self.n_classes,
                      self.task_names, self.note, self.class_names, self.label_count)
