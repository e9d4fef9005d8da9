"""Freeze: keep the parameters of finished tasks bit-identical.

Masking gradients is not enough: momentum, Adam's moments and weight decay
move a parameter whose gradient is zero. ``FrozenParameters`` therefore keeps
one boolean mask per parameter (like ``torch.nn.utils.prune`` keeps
``weight_mask``) and, through removable optimizer hooks, copies the frozen
entries back after every step. Nothing but the masks is kept between steps;
the values are taken just before each step.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from .network import Units

__all__ = ["FrozenParameters"]


class FrozenParameters:
    """Boolean freeze masks next to the parameters of a model.

    Parameters
    ----------
    units: the model's unit layers and output layer (see :func:`rerelrp.network.find_units`).

    Attributes
    ----------
    masks: dict mapping each parameter to a bool tensor of its shape, True where frozen.
    """

    def __init__(self, units: Units):
        self.units = units
        self.masks: dict[nn.Parameter, torch.Tensor] = {}

    def _mask(self, param: nn.Parameter) -> torch.Tensor:
        if param not in self.masks:
            self.masks[param] = torch.zeros_like(param, dtype=torch.bool)
        return self.masks[param]

    def _freeze_rows(self, module: nn.Module, rows: torch.Tensor) -> None:
        for param in (module.weight, module.bias):
            if param is not None:
                self._mask(param)[rows.to(param.device)] = True

    def freeze_units(self, keep: Sequence[torch.Tensor]) -> None:
        """Freeze the incoming weights and bias of every unit whose ``keep`` entry is True."""
        for layer, mask in zip(self.units.layers, keep):
            self._freeze_rows(layer.module, mask)

    def freeze_head(self, classes: Sequence[int]) -> None:
        """Freeze the output-layer rows (weights and bias) of ``classes``."""
        self._freeze_rows(self.units.output, torch.as_tensor(list(classes), dtype=torch.long))

    def freeze_batchnorm(self) -> None:
        """Freeze the affine parameters of every BatchNorm the model's forward calls (``units.batchnorms``),
        whether it closes a unit layer or not: each may feed a kept unit."""
        for norm in self.units.batchnorms:
            if norm.affine:
                self._freeze_rows(norm, torch.ones(norm.num_features, dtype=torch.bool))

    @contextlib.contextmanager
    def enforced(self, optimizer: torch.optim.Optimizer) -> Iterator[None]:
        """Within the context, every ``optimizer.step()`` leaves frozen entries bit-identical."""
        frozen = [(p, m) for p, m in self.masks.items() if m.any()]
        saved: list[torch.Tensor] = []

        def before(opt, args, kwargs) -> None:
            saved[:] = [p.detach()[m] for p, m in frozen]

        def after(opt, args, kwargs) -> None:
            with torch.no_grad():
                for (p, m), values in zip(frozen, saved):
                    p[m] = values
            saved.clear()

        handles = [optimizer.register_step_pre_hook(before), optimizer.register_step_post_hook(after)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
