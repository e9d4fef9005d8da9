"""The options of :class:`rerelrp.ReReLRP` and the values each accepts, declared as data (as scikit-learn's
``_parameter_constraints``), and :func:`validate`, which checks them and raises :class:`InvalidParameterError`.

:data:`CONSTRAINTS` maps each option to the constraints it accepts: a value is valid when it satisfies any one of
them (``None`` in a list accepts ``None``). :data:`NOTES` says why an option is as it is, for the error message.
The rules that relate several options (:func:`validate`'s cross-option rules) and those fixed by the first task
(:data:`FIXED`) live here too; the learner only calls :func:`validate` with its options and fitted values.
"""
from __future__ import annotations

import difflib
import functools
import json
import numbers
import reprlib
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from zennit.core import Composite

from .input_space import INPUT_FILTERS
from .prune import MEASURES
from .recognize import RECOGNIZERS
from .spaces import DETECTOR_SPACES

__all__ = ["InvalidParameterError", "Interval", "Options", "Types", "HasMethods", "IsCallable", "TorchDevice", "Model",
           "CONSTRAINTS", "NOTES", "FIXED", "validate", "UNSAVED", "UNSAVED_BEFORE", "encode", "decode"]


class InvalidParameterError(ValueError, TypeError):
    """An option of :class:`rerelrp.ReReLRP` has a value it does not accept, or one that does not fit the other
    options or the tasks already learned. Both a ``ValueError`` and a ``TypeError`` (as scikit-learn's), so that
    either ``except`` catches it; the message names the option, the value and what is accepted."""


class Constraint:
    """One set of accepted values: :meth:`accepts` tells whether a value is in it, ``str()`` says which in words."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def reason(self, value: Any) -> str | None:
        """Why ``value``, refused, is refused when its look would suggest otherwise (None: nothing to add)."""
        return None


class _NoneConstraint(Constraint):
    def accepts(self, value: Any) -> bool:
        return value is None

    def __str__(self) -> str:
        return "None"


class Interval(Constraint):
    """Numbers of ``types`` (a type or tuple; never bool) between ``low`` and ``high`` (None: unbounded);
    ``closed``: which bounds belong to it, ``"both"``, ``"left"``, ``"right"`` or ``"neither"``."""

    def __init__(self, types: type | tuple[type, ...], low: float | None = None, high: float | None = None,
                 closed: str = "both"):
        if closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed must be 'both', 'left', 'right' or 'neither', got {closed!r}")
        self.types = types if isinstance(types, tuple) else (types,)
        self.low, self.high, self.closed = low, high, closed

    @property
    def integral(self) -> bool:
        return all(issubclass(t, numbers.Integral) for t in self.types)

    def accepts(self, value: Any) -> bool:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, self.types):
            return False
        left, right = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.low is not None and not (value >= self.low if left else value > self.low):
            return False
        return self.high is None or bool(value <= self.high if right else value < self.high)

    def __str__(self) -> str:
        kind = "an int" if self.integral else "a number"
        left, right = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.low is None and self.high is None:
            return kind
        if self.high is None:
            if self.integral and self.low == 1 and left:
                return "a positive int"
            return f"{kind} {'>=' if left else '>'} {self.low:g}"
        if self.low is None:
            return f"{kind} {'<=' if right else '<'} {self.high:g}"
        return f"{kind} in {'[' if left else '('}{self.low:g}, {self.high:g}{']' if right else ')'}"


class Options(Constraint):
    """One of the strings ``values`` (kept in their order for the message)."""

    def __init__(self, values):
        self.values = tuple(values)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.values

    def __str__(self) -> str:
        return f"one of {', '.join(map(repr, self.values))}"


class Types(Constraint):
    """Instances of ``types`` (a type or tuple); ``name``: how the message calls them."""

    def __init__(self, types: type | tuple[type, ...], name: str):
        self.types, self.name = types, name

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.types)

    def __str__(self) -> str:
        return self.name


class HasMethods(Constraint):
    """Objects with each of the methods ``names`` (duck-typed, as scikit-learn's ``HasMethods``)."""

    def __init__(self, *names: str, name: str | None = None):
        self.names, self.name = names, name

    def accepts(self, value: Any) -> bool:
        return all(callable(getattr(value, n, None)) for n in self.names)

    def __str__(self) -> str:
        return self.name or f"an object with methods {', '.join(self.names)}"


class IsCallable(Constraint):
    """Callables; ``name``: how the message calls them."""

    def __init__(self, name: str = "a callable"):
        self.name = name

    def accepts(self, value: Any) -> bool:
        return callable(value)

    def __str__(self) -> str:
        return self.name


class TorchDevice(Constraint):
    """What ``torch.device`` takes (``'cpu'``, ``'cuda:0'``, a ``torch.device``) and torch can use here: a CUDA
    device only where ``torch.cuda.is_available()``."""

    @staticmethod
    def _parse(value: Any) -> torch.device | None:
        if isinstance(value, (bool, np.bool_)):
            return None
        try:
            return torch.device(value)
        except (RuntimeError, TypeError, ValueError):
            return None

    def accepts(self, value: Any) -> bool:
        device = self._parse(value)
        return device is not None and device.type != "meta" and (device.type != "cuda" or torch.cuda.is_available())

    def reason(self, value: Any) -> str | None:
        device = self._parse(value)
        if device is not None and device.type == "cuda":
            return "torch sees no CUDA device here (torch.cuda.is_available() is False): use device='cpu' or None"
        if device is not None and device.type == "meta":
            return "the meta device holds shapes without data: nothing can be trained or predicted there"
        return None

    def __str__(self) -> str:
        return "a torch device such as 'cpu' or 'cuda:0'"


class Model(Constraint):
    """A ``torch.nn.Module`` whose parameters and buffers hold data (none on the meta device)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, nn.Module) and self._on_meta(value) is None

    @staticmethod
    def _on_meta(model: nn.Module) -> str | None:
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.is_meta:
                return name
        return None

    def reason(self, value: Any) -> str | None:
        name = self._on_meta(value) if isinstance(value, nn.Module) else None
        if name is not None:
            return (f"its tensor {name!r} is on the meta device (a shape without data): materialize the model first, "
                    "e.g. model.to_empty(device='cpu') and then load or initialise its weights")
        return None

    def __str__(self) -> str:
        return "a torch.nn.Module"


_INT = int  # Python ints only (never bool): the options are saved as JSON
_NUMBER = (int, float, np.integer, np.floating)
_POSITIVE = Interval(_INT, 1, None)

#: Option name -> the constraints it accepts (any one of them; ``None`` accepts None).
CONSTRAINTS: dict[str, list] = {
    "model": [Model()],
    "epochs": [_POSITIVE],
    "lr": [Interval(_NUMBER, 0, None, closed="neither")],
    "optimizer": [IsCallable("a callable (params, lr=...) -> torch.optim.Optimizer")],
    "acc_drop": [Interval(_NUMBER, 0, 100)],
    "drop_confidence": [Interval(_NUMBER, 0.5, 1, closed="left")],
    "drop_measure": [Options(MEASURES)],
    "min_keep": [Interval(_NUMBER, 0, 1)],
    "prune_rounds": [_POSITIVE],
    "retrain_epochs": [None, Interval(_INT, 0, None)],
    "reset_free": [Types((bool, np.bool_), "a bool")],
    "n_tasks": [None, _POSITIVE],
    "grow": [Options(("auto",)), Interval(_NUMBER, 0, 1, closed="left")],
    "known_fraction": [Interval(_NUMBER, 0, 1, closed="right")],
    "n_reference": [_POSITIVE],
    "n_features": [Options(("auto",)), _POSITIVE],
    "n_components": [_POSITIVE],
    "later_tasks": [None, Interval(_INT, 0, None)],
    "detector_space": [Options(DETECTOR_SPACES)],
    "recognizer": [Options(RECOGNIZERS)],
    "input_weight": [Interval(_NUMBER, 0, None)],
    "input_filters": [Options(INPUT_FILTERS)],
    "val_fraction": [Interval(_NUMBER, 0, 1, closed="neither")],
    "composite": [None, Types(Composite, "a zennit Composite")],
    "detector": [None, HasMethods("fit", "predict_proba", name="a scikit-learn classifier with fit and predict_proba")],
    "batch_size": [_POSITIVE],
    "device": [None, TorchDevice()],
    "random_state": [Interval((int, np.integer))],
    "progress": [Types((bool, np.bool_), "a bool")],
}

#: Option name -> why it accepts what it does, added to the message of a refusal.
NOTES: dict[str, str] = {
    "acc_drop": "percentage points of validation accuracy",
    "drop_confidence": "0.5: the raw accuracy difference",
    "min_keep": "a fraction of each layer's units",
    "n_tasks": "the tasks the stream will have",
    "n_features": "'auto': rerelrp.remember.auto_features of each task's classes",
    "grow": "the fraction of each layer's initial width every task finds free; 0: no growth; 'auto': "
            "rerelrp.growth.AUTO_GROW where the model can grow",
    "later_tasks": "tasks after its own whose classes each detector keeps; None: all",
    "known_fraction": "the share of each task's validation inputs predict(reject=True) accepts",
    "input_weight": "the power of the input recognizer's task posterior; 0: not kept",
    "val_fraction": "the share of a task held out for pruning",
    "random_state": "rerelrp's runs are reproducible by design: every split, draw and shuffle derives from it",
}

#: Options the first task fixes -> why they cannot change afterwards.
FIXED: dict[str, str] = {
    "model": "the masks, freeze masks and memory belong to its units; save the learner and rerelrp.load it into "
             "another model",
    "device": "the masks, freeze masks and memory live there; save the learner and rerelrp.load it with device=...",
    "recognizer": "the memory of the earlier tasks was kept for the other one",
    "detector_space": "the earlier tasks' statistics live in another space",
    "input_weight": "it was 0 at the first task, so no input statistics were kept: learn the tasks again with "
                    "input_weight > 0",
    "input_filters": "the first task's input statistics live in the space of its filters: learn the tasks again "
                     "with the other filters",
    "composite": "the earlier tasks were pruned, and with recognizer='paper' are recognized, by its relevance; a "
                 "new composite for explanations: pass it to zennit with learner.subnetworks()",
}

_shown = reprlib.Repr()
_shown.maxstring = _shown.maxother = 80


def _show(value: Any) -> str:
    """``repr(value)``, short (a model is named by its type)."""
    return f"<{type(value).__name__} model>" if isinstance(value, nn.Module) else _shown.repr(value)


def _refuse(name: str, value: Any, constraints: list) -> InvalidParameterError:
    accepted = [_NoneConstraint() if c is None else c for c in constraints]
    words = " or ".join(map(str, accepted))
    note = f" ({NOTES[name]})" if name in NOTES else ""
    typed = "" if type(value) in (int, float, str, type(None)) else f" ({type(value).__name__})"
    reasons = [r for r in (c.reason(value) for c in accepted) if r]
    return InvalidParameterError(f"{name} must be {words}{note}, got {_show(value)}{typed}"
                                 + "".join(f": {r}" for r in reasons))


def _cross_rules(params: dict) -> None:
    """The rules between options, each applied where ``params`` holds all the options it reads."""
    def given(*names: str) -> bool:
        return all(n in params for n in names)

    if given("detector_space", "recognizer") and params["detector_space"] not in ("units", "auto") \
            and params["recognizer"] != "gaussian":
        raise InvalidParameterError(f"detector_space={params['detector_space']!r} applies to recognizer='gaussian' "
                                    f"only; the paper's forests read relevance (recognizer="
                                    f"{params['recognizer']!r})")
    if given("detector", "recognizer") and params["detector"] is not None and params["recognizer"] != "paper":
        raise InvalidParameterError(f"detector applies to recognizer='paper' only (the forests on relevance "
                                    f"vectors); recognizer={params['recognizer']!r} takes no detector")
    if given("grow", "model") and params["grow"] != "auto" and params["grow"] > 0 \
            and isinstance(params["model"], DistributedDataParallel):
        raise InvalidParameterError(f"grow={params['grow']!r}: grow > 0 is not supported with DistributedDataParallel,"
                                    " whose gradient buckets hold the parameters' shapes: set grow=0, or give the "
                                    "model the width the stream needs")


def validate(params: dict[str, Any], *, fitted: dict[str, Any] | None = None) -> None:
    """Check the options ``params`` (name -> value, all of a learner's ``get_params(deep=False)`` or some of them);
    return None, or raise :class:`InvalidParameterError` at the first refusal, naming the option(s), the value and
    what is accepted.

    In order: every name must be an option (a key of :data:`CONSTRAINTS`); every value must satisfy one of its
    option's constraints; with ``fitted`` (the values the first task fixed, a subset of :data:`FIXED`'s options, as
    the learner knows them), no option in both may differ from its fitted value (``is`` or ``==``); then the rules
    between options, each where ``params`` holds every option it reads: ``detector_space`` other than ``"units"``
    or ``"auto"`` needs ``recognizer="gaussian"``; a ``detector`` needs ``recognizer="paper"``; a number
    ``grow > 0`` refuses a ``DistributedDataParallel`` model (``"auto"`` does not grow it).
    """
    for name in params:
        if name not in CONSTRAINTS:
            close = difflib.get_close_matches(name, CONSTRAINTS, n=1)
            raise InvalidParameterError(f"{name!r} is not an option"
                                        + (f" (did you mean {close[0]!r}?)" if close else "")
                                        + f"; the options are {', '.join(CONSTRAINTS)}")
    for name, value in params.items():
        constraints = CONSTRAINTS[name]
        if not any(value is None if c is None else c.accepts(value) for c in constraints):
            raise _refuse(name, value, constraints)
    for name, value in (fitted or {}).items():
        if name in params and params[name] is not value and not _equal(params[name], value):
            why = FIXED.get(name, "the first task fixed it")
            raise InvalidParameterError(f"{name} cannot change once a task is learned ({why}): it is "
                                        f"{_show(value)}, got {_show(params[name])}")
    _cross_rules(params)


#: The saved value of an option that cannot be stored safely (a custom object): the loader must pass it.
UNSAVED = "__not saved: pass it to rerelrp.load__"


def encode(params: dict[str, Any]) -> dict[str, Any]:
    """The options ``params`` (``get_params(deep=False)`` without ``model``) as JSON values: an optimizer factory of
    ``torch.optim`` (a class, or a ``functools.partial`` of one with JSON keyword arguments) as
    ``{"torch.optim": name, "kwargs": {...}}``, a device as its string, a detector as ``"detector.skops"`` (the caller
    stores the object), and a custom optimizer or composite as :data:`UNSAVED`."""
    saved = dict(params)
    saved["optimizer"] = _encode_optimizer(saved["optimizer"])
    saved["composite"] = None if saved["composite"] is None else UNSAVED
    saved["device"] = None if saved["device"] is None else str(saved["device"])
    saved["detector"] = None if saved["detector"] is None else "detector.skops"
    return saved


#: Options that saves from before they existed lack, at the value those learners ran with where today's default
#: would not load them: without input statistics, ``input_weight`` is 0; before ``input_filters``, random filters.
UNSAVED_BEFORE = {"input_weight": 0.0, "input_filters": "random"}


def decode(saved: dict[str, Any], detector: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The options :func:`encode` saved (``detector``: the stored detector object, or None), with ``given`` taking
    precedence, and :data:`UNSAVED_BEFORE` where a save predates them; raises ValueError naming the options that
    were not saved and are not given."""
    options = {**UNSAVED_BEFORE, **{k: v for k, v in saved.items() if "__" not in k}}  # older: 'detector__C' too
    options["optimizer"] = _decode_optimizer(options["optimizer"])
    if options["detector"] is not None:
        options["detector"] = detector
    options.update(given)
    missing = [k for k, v in options.items() if isinstance(v, str) and v == UNSAVED]
    if missing:
        raise ValueError(f"options {missing} were not saved (custom objects); pass them to rerelrp.load")
    return options


def _encode_optimizer(optimizer) -> Any:
    func, kwargs = (optimizer.func, dict(optimizer.keywords)) if isinstance(optimizer, functools.partial) \
        else (optimizer, {})
    if isinstance(func, type) and func.__module__.startswith("torch.optim") and hasattr(torch.optim, func.__name__):
        try:
            json.dumps(kwargs)
            return {"torch.optim": func.__name__, "kwargs": kwargs}
        except TypeError:
            pass
    return UNSAVED


def _decode_optimizer(spec: Any):
    if not isinstance(spec, dict):
        return spec
    cls = getattr(torch.optim, spec["torch.optim"])
    return functools.partial(cls, **spec["kwargs"]) if spec["kwargs"] else cls


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # an == without one truth value (arrays): not equal
        return False
