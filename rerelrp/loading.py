"""Loading: a learner rebuilt from a save around a model, with everything checked before the model is touched.

:func:`load` reads the file (:func:`rerelrp.persist.read`), validates the options given and saved
(:mod:`rerelrp.options`), checks the description against the file's own tensors and the model
(:mod:`rerelrp.architecture`, the growth tried on a meta-device copy), and only then grows the model to the saved
widths and hands the state to :meth:`rerelrp.ReReLRP.load_state_dict`.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from torch import nn

from . import architecture, options, ownership, persist
from .learner import ReReLRP

__all__ = ["load"]


def load(path: str | os.PathLike, model: nn.Module, trusted: Sequence[str] = (), **given: Any) -> ReReLRP:
    """Rebuild the learner saved at ``path`` around ``model`` (same architecture, or the widths it had before it
    grew: it is grown to the saved widths; its weights are overwritten).

    Everything is checked before ``model`` is grown or its weights overwritten, the growth on a copy of it on the
    meta device: a refused load leaves ``model`` as it was and allocates little beyond the file's tensors.

    Parameters
    ----------
    path : str or os.PathLike
        A file :meth:`rerelrp.ReReLRP.save` wrote.
    model : torch.nn.Module
        The architecture the learner was saved with; its weights are overwritten.
    trusted : sequence of str
        Extra fully qualified type names a saved custom detector may hold.
    **given
        Learner options to use instead of the saved ones (required for options that were not saved, such as a
        custom optimizer factory).

    Returns
    -------
    ReReLRP
        The learner as it was saved, holding ``model``.

    Raises
    ------
    FileNotFoundError
        nothing at ``path``.
    UntrustedFileError
        the file is not a rerelrp save, a member is not what rerelrp writes, is too large, its
        contents do not fit together, or a detector holds untrusted types; the message names the member.
    InvalidParameterError
        a given option is not one, or has a value it does not accept (as at construction), or
        differs from the saved one where the first task fixed it (``recognizer``, ``detector_space``).
    ValueError
        the save has another format, comes from another architecture, or lacks options given only here.
    """
    options.validate({**given, "model": model})  # the caller's options, before the file is read
    ownership.check(model, doing="load a saved learner into it (its weights would be overwritten)")
    meta, tensors, estimators = persist.read(path, trusted)
    if meta["options"].get("detector") is not None and "detector" not in estimators and "detector" not in given:
        raise persist.UntrustedFileError(f"{path} names a saved detector but holds no detector.skops")
    saved = _load_options(path, meta, estimators, given, model)
    try:
        architecture.check_saved(meta, tensors)
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise persist.UntrustedFileError(f"{path}: meta.json does not describe tensors.safetensors, refusing the file "
                                         f"as untrusted: {type(error).__name__}: {error}") from error
    shadow = architecture.on_meta(model)  # grown and run where nothing is allocated, before the model itself
    if shadow is not None:
        architecture.widen_to_saved(shadow, meta["widths"], meta.get("growth"), meta.get("initial_sizes"))
        architecture.check(meta["architecture"], shadow, str(path), meta.get("modules"))
        try:
            architecture.check_input_shape(shadow, meta["input_shape"])
        except ValueError as error:
            raise persist.UntrustedFileError(f"{path}: {error}; refusing the file as untrusted") from error
    learner = ReReLRP(model, **saved)
    try:
        return learner.load_state_dict({"meta": meta, "tensors": tensors, "estimators": estimators})
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
        ownership.release(model, learner)  # a learner that could not be loaded holds nothing
        raise persist.UntrustedFileError(f"{path}: meta.json and tensors.safetensors do not fit together, refusing "
                                         f"the file as untrusted: {type(error).__name__}: {error}") from error


def _load_options(path, meta: dict, estimators: dict, given: dict, model: nn.Module) -> dict:
    """The options of the save at ``path``, ``given`` ones instead of the saved ones, each validated as at
    construction: a saved option refused is the file's (UntrustedFileError), a given one the caller's
    (InvalidParameterError, as one that differs from the saved ``recognizer`` or ``detector_space``)."""
    try:
        merged = options.decode(meta["options"], estimators.get("detector"), given)
    except (KeyError, AttributeError, TypeError) as error:
        raise persist.UntrustedFileError(f"{path}: the options in meta.json are malformed, refusing the file as "
                                         f"untrusted: {type(error).__name__}: {error}") from error
    try:
        options.validate({k: v for k, v in merged.items() if k not in given})
    except options.InvalidParameterError as error:
        raise persist.UntrustedFileError(f"{path}: meta.json holds an option rerelrp does not accept: {error}; "
                                         "pass a valid value to rerelrp.load to use instead") from error
    fixed = {k: meta["options"][k] for k in ("recognizer", "detector_space") if k in meta["options"]}
    if meta.get("detector_space") and given.get("detector_space", "auto") != "auto":
        fixed["detector_space"] = meta["detector_space"]  # a space named: against the one the memory is in
    options.validate({**merged, "model": model}, fitted=fixed)
    return merged
