"""Detector spaces: what the Gaussian detectors read through the subnetworks S_0..S_m.

Three spaces, one object each (``ReReLRP(detector_space=...)``; ``docs/method.md``, section Remember):

- :class:`UnitsSpace` (``"units"``): the last hidden unit layer's outputs (a convolution's channels averaged over
  positions); detector m reads the ``n_features`` units kept by S_0..S_m that vary most on task m's data.
- :class:`HeadSpace` (``"head"``): the vector the output layer reads; detector m reads its ``n_features``
  principal components on task m's data. For residual networks, whose last hidden unit layer is a convolution
  before the block's residual addition.
- :class:`LayersSpace` (``"layers"``): every unit layer's outputs together (the first layer's channel means and
  spreads over positions, every later convolution's channel means over a 2 x 2 grid of positions, dense layers as
  they are); detector m reads the ``n_features`` principal components of them, each column scaled to unit
  variance on task m's data.

A space says which layer outputs one pass collects (:attr:`DetectorSpace.reduce`, :attr:`DetectorSpace.head_input`),
how wide their concatenation is, and how the newest detector's features are fixed in an
:class:`rerelrp.remember.ActivationStatistics` (:meth:`DetectorSpace.choose`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .network import Units, position_grid, position_mean, position_spread
from .remember import ActivationStatistics

__all__ = ["DetectorSpace", "UnitsSpace", "HeadSpace", "LayersSpace", "SPACES", "DETECTOR_SPACES"]

Reduce = dict[int, Callable[[torch.Tensor], torch.Tensor]]


class DetectorSpace:
    """What the detectors read: the unit layers' outputs of :meth:`reduce` (each reduced as it says) and, with
    :attr:`head_input`, the output layer's input, concatenated in that order into ``(n, width(units))``."""

    name = ""
    head_input = False

    def reduce(self, units: Units) -> Reduce:
        """``{unit layer index: reduction of its output to (n, columns)}``, in the order the columns come."""
        raise NotImplementedError

    def width(self, units: Units) -> int:
        """Columns of the space for a network of ``units``."""
        def columns(k: int, reduce) -> int:
            layer = units.layers[k]
            shape = (1, layer.n_units, 2, 2) if isinstance(layer.module, nn.Conv2d) else (1, layer.n_units)
            return reduce(torch.zeros(shape)).shape[1]

        return (sum(columns(k, reduce) for k, reduce in self.reduce(units).items())
                + (units.output.in_features if self.head_input else 0))

    def choose(self, memory: ActivationStatistics, outputs: torch.Tensor, union: list[torch.Tensor],
               names: list[str]) -> None:
        """Fix the newest detector's features in ``memory`` from its task's ``(n, width)`` ``outputs`` in this space;
        ``union``: the units of S_0..S_t per unit layer, ``names``: the unit layers' names (for errors)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class UnitsSpace(DetectorSpace):
    """The last hidden unit layer's outputs, channels averaged over positions; detectors read kept units."""

    name = "units"

    def reduce(self, units: Units) -> Reduce:
        return {-1: position_mean}

    def choose(self, memory: ActivationStatistics, outputs: torch.Tensor, union: list[torch.Tensor],
               names: list[str]) -> None:
        candidates = union[-1].nonzero()[:, 0]
        if not len(candidates):
            raise RuntimeError(f"task {memory.n_tasks} keeps no unit of the last hidden layer {names[-1]!r}; "
                               "use min_keep > 0")
        memory.choose_units(candidates.cpu(), outputs.cpu())


class HeadSpace(DetectorSpace):
    """The output layer's input; detectors read its principal components on their task's data."""

    name = "head"
    head_input = True

    def reduce(self, units: Units) -> Reduce:
        return {}

    def choose(self, memory: ActivationStatistics, outputs: torch.Tensor, union: list[torch.Tensor],
               names: list[str]) -> None:
        memory.choose_basis(outputs)


class LayersSpace(DetectorSpace):
    """Every unit layer's outputs; detectors read the principal components of the standardized columns."""

    name = "layers"

    def reduce(self, units: Units) -> Reduce:
        return {k: position_spread if k == 0 else position_grid for k in range(len(units.layers))}

    def choose(self, memory: ActivationStatistics, outputs: torch.Tensor, union: list[torch.Tensor],
               names: list[str]) -> None:
        memory.choose_basis(outputs, standardize=True)


#: The spaces by the name ``ReReLRP(detector_space=...)`` takes.
SPACES = {space.name: space for space in (UnitsSpace(), HeadSpace(), LayersSpace())}
#: Accepted values of ``ReReLRP(detector_space=...)``.
DETECTOR_SPACES = tuple(SPACES)
