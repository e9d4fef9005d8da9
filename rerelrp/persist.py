"""Save and load a learner: safe, atomic, complete.

A save is one zip file:

- ``meta.json``: package and format version, the model's architecture
  (parameter and buffer names, shapes, dtypes), options, tasks, timings;
- ``tensors.safetensors``: the model's weights and buffers, the unit masks of
  every task, the freeze masks, and the memory: each detector's unit indices
  with its classes' mixture weights, means and covariance triangles (default recognizer), or the
  stored relevance vectors (``recognizer="paper"``); safetensors holds raw
  tensors only: nothing in it can run code;
- with ``recognizer="paper"``, ``detector-<m>.skops`` and ``detector.skops``: the
  fitted detectors and the detector template, in skops' format, loaded only if
  every type in them is one scikit-learn trusts or one listed in ``trusted``.

Nothing is ever unpickled. The file is written beside its final path and
moved over it with ``os.replace``, so a save killed halfway leaves the
previous save at that path intact.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from ._version import __version__
from .learner import ReReLRP
from .prune import PruneResult
from .remember import ActivationStatistics, ClassStatistics

__all__ = ["save", "load", "bytes_beyond_weights", "UntrustedFileError", "TRUSTED_TYPES"]

FORMAT = 3
#: Types beyond skops' defaults that a saved detector may hold (the default RandomForest's trees).
TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]
_UNSAVED = "__not saved: pass it to rerelrp.load__"


class UntrustedFileError(ValueError):
    """A save holds something that is not what rerelrp writes, or types that are not trusted."""


def architecture(model: nn.Module) -> list[list]:
    """``[name, shape, dtype]`` of every parameter and buffer, in state-dict order."""
    return [[name, list(t.shape), str(t.dtype)] for name, t in model.state_dict().items()]


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as CPU tensors named ``model.<name>``."""
    return {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _optimizer_spec(optimizer) -> Any:
    func, kwargs = (optimizer.func, dict(optimizer.keywords)) if isinstance(optimizer, functools.partial) \
        else (optimizer, {})
    if isinstance(func, type) and func.__module__.startswith("torch.optim") and hasattr(torch.optim, func.__name__):
        try:
            json.dumps(kwargs)
            return {"torch.optim": func.__name__, "kwargs": kwargs}
        except TypeError:
            pass
    return _UNSAVED


def _optimizer_from(spec: dict):
    cls = getattr(torch.optim, spec["torch.optim"])
    return functools.partial(cls, **spec["kwargs"]) if spec["kwargs"] else cls


def save(learner: ReReLRP, path: str | os.PathLike) -> Path:
    """Write everything ``learner`` needs to predict and to go on learning to ``path`` (a zip file), atomically.

    Options that cannot be stored safely (a custom optimizer factory or zennit
    composite) are marked as not saved; :func:`load` then asks for them.
    """
    import skops.io as sio

    learner._check_fitted()
    path = Path(path)
    params = {p: name for name, p in learner._net.named_parameters()}
    tensors = _weights(learner._net)
    for t, keep in enumerate(learner.masks_):
        for i, mask in enumerate(keep):
            tensors[f"mask.{t}.{i}"] = mask.cpu().contiguous()
    for param, mask in learner.frozen_.masks.items():
        tensors[f"frozen.{params[param]}"] = mask.cpu().contiguous()
    memory = learner.memory_
    tensors.update(_memory_tensors(memory))
    options = learner.get_params()
    options.pop("model")
    options["optimizer"] = _optimizer_spec(options["optimizer"])
    options["composite"] = None if options["composite"] is None else _UNSAVED
    options["detector"] = None if options["detector"] is None else "detector.skops"
    options["device"] = None if options["device"] is None else str(options["device"])
    meta = {
        "format": FORMAT, "rerelrp": __version__, "architecture": architecture(learner._net),
        "options": options, "tasks": learner.tasks_, "input_shape": list(learner.input_shape_),
        "input_range": None if learner.input_range_ is None else list(learner.input_range_),
        "fit_times": learner.fit_times_, "n_features": memory.n_features,
        "prune_results": [{"n_pruned": r.n_pruned, "base_accuracy": r.base_accuracy, "accuracy": r.accuracy,
                           "trials": r.trials, "budget": r.budget, "over_threshold": r.over_threshold}
                          for r in learner.prune_results_],
        "memory": _memory_index(memory),
    }
    members = {"meta.json": json.dumps(meta, indent=1).encode(), "tensors.safetensors": save_tensors(tensors)}
    for m, detector in enumerate(getattr(learner.recognizer_, "detectors_", [])):
        members[f"detector-{m}.skops"] = sio.dumps(detector)
    if learner.detector is not None:
        members["detector.skops"] = sio.dumps(learner.detector)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for name, data in members.items():
                    archive.writestr(name, data)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike, model: nn.Module, trusted: Sequence[str] = (), **options: Any) -> ReReLRP:
    """Rebuild the learner saved at ``path`` around ``model`` (same architecture; its weights are overwritten).

    ``trusted``: extra fully qualified type names a saved custom detector may hold.
    ``options``: learner options to use instead of the saved ones (required for
    options that were not saved, such as a custom optimizer factory).

    Raises
    ------
    UntrustedFileError: the file is not a rerelrp save, a member is not what rerelrp writes, or a
        detector holds untrusted types.
    ValueError: the save comes from another rerelrp version or another architecture.
    """
    import skops.io as sio

    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise UntrustedFileError(f"{path} is not a rerelrp save (not a zip archive): {error}") from error
    with archive:
        names = set(archive.namelist())
        meta = _read_meta(archive, path, names)
        if meta["rerelrp"] != __version__ or meta["format"] != FORMAT:
            raise ValueError(f"{path} was saved by rerelrp {meta['rerelrp']} (format {meta['format']}); "
                             f"this is rerelrp {__version__} (format {FORMAT})")
        _check_architecture(meta["architecture"], architecture(model), path)
        try:
            tensors = load_tensors(archive.read("tensors.safetensors"))
        except Exception as error:
            raise UntrustedFileError(f"tensors.safetensors in {path} is not a valid safetensors file; "
                                     f"refusing it as untrusted: {error}") from error

        def detector(name: str):
            data = archive.read(name)
            try:
                untrusted = set(sio.get_untrusted_types(data=data)) - set(TRUSTED_TYPES) - set(trusted)
            except Exception as error:
                raise UntrustedFileError(f"{name} in {path} is not a valid skops file; refusing it as untrusted: "
                                         f"{error}") from error
            if untrusted:
                raise UntrustedFileError(f"{name} in {path} holds untrusted types {sorted(untrusted)}; pass "
                                         f"trusted=[...] to rerelrp.load if you trust them")
            return sio.loads(data, trusted=[*TRUSTED_TYPES, *trusted])

        saved = dict(meta["options"])
        saved["optimizer"] = _optimizer_from(saved["optimizer"]) if isinstance(saved["optimizer"], dict) \
            else saved["optimizer"]
        if saved["detector"] is not None:
            saved["detector"] = detector("detector.skops")
        saved.update(options)
        missing = [k for k, v in saved.items() if isinstance(v, str) and v == _UNSAVED]
        if missing:
            raise ValueError(f"options {missing} were not saved (custom objects); pass them to rerelrp.load")
        detectors = [detector(f"detector-{m}.skops") for m in range(len(meta["tasks"]) - 1)
                     if f"detector-{m}.skops" in names]

    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(state)
    learner = ReReLRP(model, **saved)
    learner._start()
    learner.tasks_ = [list(map(int, classes)) for classes in meta["tasks"]]
    learner.masks_ = [[tensors[f"mask.{t}.{i}"].to(learner.device_) for i in range(len(learner.units_.layers))]
                      for t in range(len(learner.tasks_))]
    named = dict(model.named_parameters())
    learner.frozen_.masks = {named[k[len("frozen."):]]: v.to(named[k[len("frozen."):]].device)
                             for k, v in tensors.items() if k.startswith("frozen.")}
    learner.memory_.n_features = meta["n_features"]
    _restore_memory(learner.memory_, meta["memory"], tensors)
    if isinstance(learner.memory_, ActivationStatistics):
        learner.recognizer_.fit(learner.memory_, learner.tasks_)
    else:
        learner.recognizer_.detectors_ = detectors
    learner.input_shape_ = tuple(meta["input_shape"])
    learner.input_range_ = tuple(meta["input_range"]) if meta.get("input_range") else None  # saved before it was kept
    learner.prune_results_ = [
        PruneResult([k.cpu() for k in keep], r["n_pruned"], r["base_accuracy"], r["accuracy"],
                    [tuple(x) for x in r["trials"]], r.get("budget"), bool(r.get("over_threshold", False)))
        for r, keep in zip(meta["prune_results"], learner.masks_)]
    learner.fit_times_ = meta["fit_times"]
    return learner


def _memory_tensors(memory) -> dict[str, torch.Tensor]:
    """The memory as named tensors: unit indices, and class mixtures (covariance triangles) or vectors."""
    tensors = {}
    if isinstance(memory, ActivationStatistics):
        for m, units in enumerate(memory.units):
            tensors[f"units.{m}"] = units.contiguous()
            rows, cols = np.triu_indices(len(units))
            for c, stats in memory.classes[m].items():
                tensors[f"weights.{m}.{c}"] = torch.from_numpy(stats.weights.copy())
                tensors[f"means.{m}.{c}"] = torch.from_numpy(stats.means.copy())
                tensors[f"covariances.{m}.{c}"] = torch.from_numpy(stats.covariances[:, rows, cols].copy())
        return tensors
    for m, features in enumerate(memory.features):
        tensors[f"features.{m}"] = features.contiguous()
        for s, vectors in memory.vectors[m].items():
            tensors[f"vectors.{m}.{s}"] = torch.from_numpy(np.ascontiguousarray(vectors))
    return tensors


def _memory_index(memory) -> dict:
    """What :func:`_restore_memory` needs besides the tensors: class sample counts, or vector sources."""
    if isinstance(memory, ActivationStatistics):
        return {"counts": [{str(c): s.count for c, s in per.items()} for per in memory.classes]}
    return {"vectors": [sorted(v) for v in memory.vectors]}


def _restore_memory(memory, index: dict, tensors: dict[str, torch.Tensor]) -> None:
    if isinstance(memory, ActivationStatistics):
        memory.units = [tensors[f"units.{m}"] for m in range(len(index["counts"]))]
        memory.classes = []
        for m, counts in enumerate(index["counts"]):
            d = len(memory.units[m])
            rows, cols = np.triu_indices(d)
            per = {}
            for c, count in counts.items():
                triangles = tensors[f"covariances.{m}.{c}"].numpy()
                covariances = np.zeros((len(triangles), d, d), np.float32)
                covariances[:, rows, cols] = triangles
                covariances[:, cols, rows] = triangles
                per[int(c)] = ClassStatistics(tensors[f"weights.{m}.{c}"].numpy(), tensors[f"means.{m}.{c}"].numpy(),
                                              covariances, count)
            memory.classes.append(per)
        return
    memory.features = [tensors[f"features.{m}"] for m in range(len(index["vectors"]))]
    memory.vectors = [{int(s): tensors[f"vectors.{m}.{s}"].numpy() for s in sources}
                      for m, sources in enumerate(index["vectors"])]


def bytes_beyond_weights(learner: ReReLRP) -> int:
    """Bytes that :func:`save` writes for ``learner`` beyond the model's own weights and buffers.

    The size of the save minus the size of a zip, written the same way, that holds only the model's
    state dict: masks, freeze masks, memory, detectors, options and the description.
    """
    with tempfile.TemporaryDirectory() as folder:
        path = save(learner, Path(folder) / "learner.zip")
        weights = Path(folder) / "weights.zip"
        with zipfile.ZipFile(weights, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("tensors.safetensors", save_tensors(_weights(learner._net)))
        return path.stat().st_size - weights.stat().st_size


def _read_meta(archive: zipfile.ZipFile, path: Path, names: set[str]) -> dict:
    required = {"meta.json", "tensors.safetensors"}
    if not required <= names:
        raise UntrustedFileError(f"{path} is not a rerelrp save: it lacks {sorted(required - names)}")
    try:
        meta = json.loads(archive.read("meta.json").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UntrustedFileError(f"meta.json in {path} is not JSON; refusing it as untrusted: {error}") from error
    keys = {"format", "rerelrp", "architecture", "options", "tasks", "input_shape"}
    if not isinstance(meta, dict) or not keys <= set(meta):
        raise UntrustedFileError(f"meta.json in {path} is not a rerelrp save description")
    return meta


def _check_architecture(saved: list, current: list, path: Path) -> None:
    if saved == current:
        return
    saved_d, current_d = {s[0]: s[1:] for s in saved}, {c[0]: c[1:] for c in current}
    differences = [f"{k}: saved {saved_d.get(k)} vs model {current_d.get(k)}"
                   for k in dict.fromkeys([*saved_d, *current_d]) if saved_d.get(k) != current_d.get(k)]
    raise ValueError(f"{path} was saved from another architecture; differences: {'; '.join(differences[:5])}"
                     + (f" (and {len(differences) - 5} more)" if len(differences) > 5 else ""))
