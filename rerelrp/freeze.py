"""Freeze: keep the parameters of finished tasks bit-identical.

Masking gradients is not enough: momentum, Adam's moments and weight decay
move a parameter whose gradient is zero. ``FrozenParameters`` therefore keeps
one boolean mask per parameter (like ``torch.nn.utils.prune`` keeps
``weight_mask``) and, through removable global optimizer hooks, copies the
frozen entries back after every step of any optimizer, so it holds in a
training loop rerelrp did not write. Nothing but the masks is kept between
tasks; the values are taken just before each step.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from .contexts import hooks
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

    def freeze_shared(self) -> None:
        """Freeze what every task shares, trained by the first task only: the affine parameters of every BatchNorm
        the model's forward calls (``units.batchnorms``), whether it closes a unit layer or not, and the gates'
        layers (``units.gates``): each may feed a kept unit."""
        for module in (*self.units.batchnorms, *self.units.gates):
            for param in module.parameters(recurse=False):
                self._mask(param).fill_(True)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The masks by the name of their parameter in ``model``: ``{name: bool tensor of its shape}`` (CPU)."""
        return {name: self.masks[p].cpu().contiguous() for name, p in model.named_parameters() if p in self.masks}

    def load_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> None:
        """Take the masks of :meth:`state_dict` for the parameters of ``model``; raises KeyError for a name that is
        not one of its parameters and ValueError, naming the entry, for a mask that is not a bool of its shape."""
        named = dict(model.named_parameters())
        for name, mask in state.items():
            if mask.dtype != torch.bool or mask.shape != named[name].shape:
                raise ValueError(f"tensors.safetensors holds frozen.{name} as {mask.dtype} {tuple(mask.shape)}, not "
                                 f"bool {tuple(named[name].shape)}")
        self.masks = {named[name]: mask.to(named[name].device) for name, mask in state.items()}

    def check_covers(self, kept: Sequence[torch.Tensor], classes: Sequence[int], model: nn.Module) -> None:
        """Raise ValueError unless every row of a unit in ``kept`` (one bool ``(n_units,)`` per unit layer) and the
        head rows of ``classes`` are frozen in ``model``: else the next task would change old tasks."""
        names = {id(p): name for name, p in model.named_parameters()}
        n_out = self.units.output.out_features
        rows = [(layer.module, k) for layer, k in zip(self.units.layers, kept)] + [
            (self.units.output, torch.isin(torch.arange(n_out), torch.tensor(sorted(classes), dtype=torch.long)))]
        for module, needed in rows:
            mask = self.masks.get(module.weight)
            if needed.any() and (mask is None or not mask[needed.to(mask.device)].all()):
                raise ValueError(f"tensors.safetensors does not freeze every row of {names[id(module.weight)]} that "
                                 "a learned task keeps (frozen.* entries missing or cleared): the next task would "
                                 "change old tasks")

    @contextlib.contextmanager
    def enforced(self, model: nn.Module) -> Iterator[None]:
        """Within the context, every optimizer step leaves the frozen entries of ``model`` bit-identical.

        torch's global optimizer step hooks copy the frozen entries of the stepping optimizer's parameters back
        after each step, whichever optimizer it is (several optimizers, parameter groups, a ``GradScaler``
        calling ``step``) in the thread that entered the context; optimizers stepping in other threads are left
        alone. An optimizer holding none of ``model``'s parameters raises ``ValueError`` when it steps in that
        thread. On leaving the context normally, every frozen entry is compared with its value at entry and a
        change made outside ``optimizer.step()`` (a manual update, weight averaging) raises ``RuntimeError``.
        """
        frozen = {p: m for p, m in self.masks.items() if m.any()}
        owned = {id(p) for p in model.parameters()}
        at_entry = {p: p.detach()[m].clone() for p, m in frozen.items()}
        saved: dict[int, list] = {}

        owner = threading.get_ident()

        def before(optimizer, args, kwargs) -> None:
            if threading.get_ident() != owner:  # torch's hooks are process-wide: another thread's optimizer
                return
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if not any(id(p) in owned for p in params):
                raise ValueError(
                    f"{type(optimizer).__name__} stepped inside the task's training but holds none of the learner's "
                    "model's parameters (an optimizer of another model, or of a copy of it): build the optimizer "
                    "over the parameters of the model the learner was given")
            saved[id(optimizer)] = [(p, frozen[p], p.detach()[frozen[p]].clone()) for p in params if p in frozen]

        def after(optimizer, args, kwargs) -> None:
            with torch.no_grad():
                for p, m, values in saved.pop(id(optimizer), []):
                    p[m] = values

        with hooks(register_optimizer_step_pre_hook(before), register_optimizer_step_post_hook(after)):
            yield
        names = {id(p): name for name, p in model.named_parameters()}
        moved = [names.get(id(p), "?") for p, values in at_entry.items() if not torch.equal(p.detach()[frozen[p]], values)]
        if moved:
            raise RuntimeError(f"frozen entries of {', '.join(moved)} changed during the task's training outside "
                               "optimizer.step() (rerelrp restores them only after optimizer steps); the task is not "
                               "learned and the learner is left as it was before it")
