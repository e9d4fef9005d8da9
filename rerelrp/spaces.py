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

__all__ = ["DetectorSpace", "UnitsSpace", "HeadSpace", "LayersSpace", "SPACES", "DETECTOR_SPACES", "resolve",
           "moved_columns"]

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
        return (len(_column_names(self.reduce(units), units, units.sizes))
                + (units.output.in_features if self.head_input else 0))

    def moved(self, units: Units, added: list[int]) -> torch.Tensor:
        """:func:`moved_columns` of this space's columns after the unit layers of ``units`` grew by ``added``; the
        output layer's input (``head_input``) only grows at its end, so its columns keep their places."""
        return moved_columns(self.reduce(units), units, added, self.head_input)

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
#: Accepted values of ``ReReLRP(detector_space=...)``: a space's name, or ``"auto"`` (:func:`resolve`).
DETECTOR_SPACES = ("auto", *SPACES)


def resolve(detector_space: str, recognizer: str, units: Units, head_reader: nn.Module | None) -> str:
    """The space's name for the option ``detector_space``: a name is taken as it is; ``"auto"`` is ``"units"`` for
    ``recognizer="paper"`` (whose forests read relevance), else ``"layers"`` where the output layer reads the last
    hidden unit layer through elementwise modules only (``head_reader``, the module that reads that layer's units,
    is ``units.output``: a plain network), and ``"head"`` where it does not (a residual sum or a concatenation
    lies between them: the output layer reads more than the last unit layer)."""
    if detector_space != "auto":
        return detector_space
    if recognizer != "gaussian":
        return "units"
    return "layers" if head_reader is units.output else "head"


def moved_columns(reduce: Reduce, units: Units, added: list[int], head_input: bool = False) -> torch.Tensor:
    """Where every column of the concatenated outputs ``reduce`` reads (in its order; then, with ``head_input``, the
    output layer's input) went when the unit layers of ``units`` (now grown) grew by ``added`` units each, at their
    end: ``(n_columns_before,)`` new column indices. A column is named by its layer, its unit and its place among
    that unit's columns (:func:`_column_names`), so that a memory that indexes columns can follow growth."""
    before = _column_names(reduce, units, [n - a for n, a in zip(units.sizes, added)])
    after = {name: i for i, name in enumerate(_column_names(reduce, units, units.sizes))}
    moved = [after[name] for name in before]
    if head_input:  # grows at its end only: its old columns keep their places after the layers' columns
        moved += range(len(after), len(after) + units.output.in_features)
    return torch.as_tensor(moved, dtype=torch.long)


def _column_names(reduce: Reduce, units: Units, sizes: list[int]) -> list[tuple[int, int, int]]:
    """``(layer, unit, place)`` of every column of the outputs ``reduce`` makes of unit layers of ``sizes`` units:
    found by giving each unit in turn a pattern over a 2 x 2 grid of positions (a dense unit: one value), the others
    zero, and seeing which columns it moves."""
    names = []
    for k, reduction in reduce.items():
        layer, n = k % len(units.layers), sizes[k]
        conv = isinstance(units.layers[k].module, nn.Conv2d)
        probe = torch.zeros((n, n, 2, 2) if conv else (n, n), dtype=torch.float64)
        probe[torch.arange(n), torch.arange(n)] = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64) \
            if conv else 1.0
        owner = reduction(probe).abs().argmax(0).tolist()  # per column: the unit whose pattern moves it
        places = dict.fromkeys(range(n), 0)
        for unit in owner:
            names.append((layer, unit, places[unit]))
            places[unit] += 1
    return names
