"""Freeze: keep the parameters of finished tasks bit-identical.

Masking gradients is not enough: momentum, Adam's moments and weight decay
move a parameter whose gradient is zero. ``FrozenParameters`` therefore keeps
one boolean mask per parameter (like ``torch.nn.utils.prune`` keeps
``weight_mask``) and, through torch's global optimizer step hooks, copies the
frozen entries back after every step of any optimizer, so it holds in a
training loop rerelrp did not write. The hooks are registered once, when this
module is imported, and do nothing in a thread outside :meth:`FrozenParameters.enforced`:
torch keeps them in one process-wide dict that every stepping optimizer
iterates, so registering and removing them per task raced with optimizers
stepping in other threads. Nothing but the masks is kept between
tasks; the values are taken just before each step.

Between tasks nothing may change a frozen entry either: a plugin that re-initialises the head before the next
experience, a forward in training mode that moves BatchNorm statistics. A *fingerprint* (a digest per tensor of
its frozen entries, and of the running statistics of the kept channels of every BatchNorm) is taken after each
task and when a state is loaded, and checked when the next task starts (:meth:`FrozenParameters.changed`).
"""
from __future__ import annotations

import contextlib
import hashlib
import threading
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from .network import Units

__all__ = ["FrozenParameters"]


class FrozenParameters:
    """Boolean freeze masks next to the parameters of a model.

    Parameters
    ----------
    units
        the model's unit layers and output layer (see :func:`rerelrp.network.find_units`).

    Attributes
    ----------
    masks
        dict mapping each parameter to a bool tensor of its shape, True where frozen.
    """

    def __init__(self, units: Units):
        self.units = units
        self.masks: dict[nn.Parameter, torch.Tensor] = {}
        #: per frozen tensor, a digest of its frozen entries when the last task ended (see :meth:`record`)
        self.fingerprint: dict[torch.Tensor, str] = {}

    def _mask(self, param: nn.Parameter) -> torch.Tensor:
        if param not in self.masks:
            self.masks[param] = torch.zeros_like(param, dtype=torch.bool)
        return self.masks[param]

    def _freeze_rows(self, module: nn.Module, rows: torch.Tensor) -> None:
        for param in (module.weight, module.bias):
            if param is not None:
                self._mask(param)[rows.to(param.device)] = True
        self._restamp()

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
        self._restamp()

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
        self.record()  # the loaded values are the learned tasks': a later change of them is named

    def _entries(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every frozen tensor with the mask of its frozen entries: the parameters' (their freeze masks), and the
        running mean and variance of every BatchNorm the model calls (fixed after the first task): the channels of
        the kept units of the unit layer it closes, or all of them."""
        for param, mask in self.masks.items():
            if mask.any():
                yield param, mask
        closing = {id(layer.masked_module): layer.module for layer in self.units.layers}
        for norm in self.units.batchnorms:
            if getattr(norm, "running_mean", None) is None:
                continue
            layer = closing.get(id(norm))
            if layer is None:
                rows = torch.ones(norm.num_features, dtype=torch.bool)
            elif layer.weight in self.masks:
                rows = self.masks[layer.weight].reshape(len(layer.weight), -1).all(1)
            else:
                continue
            for buffer in (norm.running_mean, norm.running_var):
                yield buffer, rows.to(buffer.device)

    def record(self) -> None:
        """Take the fingerprint of every frozen entry as it is now (:meth:`changed` compares with it)."""
        self.fingerprint = {tensor: _digest(tensor, mask) for tensor, mask in self._entries()}

    def _restamp(self) -> None:
        """After the masks grew between tasks, the fingerprint covers the entries they freeze now."""
        if self.fingerprint:
            self.record()

    def changed(self, model: nn.Module) -> list[str]:
        """The qualified names of the tensors of ``model`` whose frozen entries differ from the fingerprint taken by
        :meth:`record` (the last task's end, or a load); empty when none does, or when none was taken."""
        names = {id(t): name for name, t in (*model.named_parameters(), *model.named_buffers())}
        masks = dict(self._entries())
        moved = []
        for tensor, digest in self.fingerprint.items():
            if id(tensor) not in names:
                moved.append(f"a {tuple(tensor.shape)} tensor that is no longer the model's (replaced by a new one)")
            elif tensor not in masks or _digest(tensor, masks[tensor]) != digest:
                moved.append(names[id(tensor)])
        return moved

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

        The module's global optimizer step hooks copy the frozen entries of the stepping optimizer's parameters
        back after each step, whichever optimizer it is (several optimizers, parameter groups, a ``GradScaler``
        calling ``step``) in the thread that entered the context; optimizers stepping in other threads are left
        alone. An optimizer holding none of ``model``'s parameters raises ``ValueError`` when it steps in that
        thread. On leaving the context normally, every frozen entry is compared with its value at entry and a
        change made outside ``optimizer.step()`` (a manual update, weight averaging) raises ``RuntimeError``.
        """
        frozen = {p: m for p, m in self.masks.items() if m.any()}
        # flat indices of the frozen entries, found once: indexing by a boolean mask finds them again at every
        # call, which made the restore several times slower than the step itself once most entries were frozen
        flat = {p: m.reshape(-1).nonzero()[:, 0] for p, m in frozen.items()}
        names = {id(p): name for name, p in model.named_parameters()}
        owned = set(names)
        at_entry = {p: p.detach()[m].clone() for p, m in frozen.items()}
        saved: dict[int, list] = {}
        checked: set[int] = set()  # optimizers whose state was checked: shapes change only before the task

        def before(optimizer) -> None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if not any(id(p) in owned for p in params):
                raise ValueError(
                    f"{type(optimizer).__name__} stepped inside the task's training but holds none of the learner's "
                    "model's parameters (an optimizer of another model, or of a copy of it): build the optimizer "
                    "over the parameters of the model the learner was given")
            if id(optimizer) not in checked:
                _check_state_shapes(optimizer, params, names)
                checked.add(id(optimizer))
            saved[id(optimizer)] = [(p, _frozen_values(p, frozen[p], flat[p])) for p in params if p in frozen]

        def after(optimizer) -> None:
            with torch.no_grad():
                for p, values in saved.pop(id(optimizer), []):
                    _restore(p, frozen[p], flat[p], values)

        enforcers = _THIS_THREAD.__dict__.setdefault("enforcers", [])
        enforcers.append((before, after))
        try:
            yield
        finally:
            enforcers.remove((before, after))
        moved = [names.get(id(p), "?") for p, values in at_entry.items() if not torch.equal(p.detach()[frozen[p]], values)]
        if moved:
            raise RuntimeError(f"frozen entries of {', '.join(moved)} changed during the task's training outside "
                               "optimizer.step() (rerelrp restores them only after optimizer steps); the task is not "
                               "learned and the learner is left as it was before it")


def _frozen_values(p: torch.Tensor, mask: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """A copy of the entries of ``p`` where ``mask``, in row-major order; ``flat`` holds their flat indices."""
    return p.detach().reshape(-1).index_select(0, flat) if p.is_contiguous() else p.detach()[mask].clone()


def _restore(p: torch.Tensor, mask: torch.Tensor, flat: torch.Tensor, values: torch.Tensor) -> None:
    """Write back what :func:`_frozen_values` copied (under ``torch.no_grad``)."""
    if p.is_contiguous():
        p.view(-1).index_copy_(0, flat, values)
    else:  # channels_last and other strided layouts: the boolean mask follows the logical order as the copy did
        p[mask] = values


def _check_state_shapes(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], names: dict) -> None:
    """Raise ``RuntimeError`` naming the parameter when ``optimizer`` keeps state (Adam's moments, momentum) of
    another shape than the parameter's: the model grew since that optimizer last stepped."""
    for p in params:
        for value in optimizer.state.get(p, {}).values():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                raise RuntimeError(
                    f"{type(optimizer).__name__} keeps state of shape {tuple(value.shape)} for "
                    f"{names.get(id(p), 'a parameter')}, now {tuple(p.shape)}: the model grew at the start of this "
                    "task (the learner's grow option widens unit layers), so build the optimizer inside the "
                    "training() context, after the growth, or clear its state (optimizer.state.clear())")


_THIS_THREAD = threading.local()  # .enforcers: (before, after) of each enforced context the thread is in


def _each_enforcer(stage: int):
    """A global optimizer step hook calling stage ``stage`` (0 before, 1 after) of the calling thread's enforcers."""
    def hook(optimizer, args, kwargs) -> None:
        for enforcer in list(getattr(_THIS_THREAD, "enforcers", ())):
            enforcer[stage](optimizer)
    return hook


register_optimizer_step_pre_hook(_each_enforcer(0))
register_optimizer_step_post_hook(_each_enforcer(1))


def _digest(tensor: torch.Tensor, mask: torch.Tensor) -> str:
    """A digest of the bits of ``tensor``'s entries where ``mask`` is True (bit-exact: -0.0 is not 0.0)."""
    values = tensor.detach()[mask].cpu().contiguous()
    return hashlib.blake2b(values.view(torch.uint8).numpy().tobytes(), digest_size=16).hexdigest()
