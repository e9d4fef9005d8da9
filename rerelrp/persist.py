"""Save and load a learner: safe, atomic, complete.

A save is one zip file:

- ``meta.json``: package and format version, the model's architecture
  (parameter and buffer names, shapes, dtypes), options, tasks, timings;
- ``tensors.safetensors``: the model's weights and buffers, the unit masks of
  every task, the freeze masks, and the memory: each detector's unit indices
  with its classes' mixture weights, means and covariance triangles (default recognizer), or the
  stored relevance vectors (``recognizer="paper"``), and each task's calibration of the unknown
  answer with its first layer's statistics (:mod:`rerelrp.novelty`); safetensors holds raw
  tensors only: nothing in it can run code;
- with ``recognizer="paper"``, ``detector-<m>.skops`` and ``detector.skops``: the
  fitted detectors and the detector template, in skops' format, loaded only if
  every type in them is one scikit-learn trusts or one listed in ``trusted``.

Nothing is ever unpickled. The file is written beside its final path and
moved over it with ``os.replace``, so a save killed halfway leaves the
previous save at that path intact; the next save of that path removes the
temporary files of writers that no longer run. A new file gets the mode
``open`` would give it (0666 less the umask); an existing one keeps its mode.

A load bounds every member's size before reading it, checks that the
contents fit together (tasks, masks, freeze masks, memory and the model) and
raises :class:`UntrustedFileError` naming the file and the member otherwise.
Saves of any rerelrp version with the same :data:`FORMAT` load (one saved before the first layer's
statistics were kept loads without the unknown answer, and says so when it is asked for).
"""
from __future__ import annotations

import errno
import functools
import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from ._version import __version__
from . import capacity
from .grow import widen_to
from .learner import ReReLRP
from .network import find_units
from .prune import PruneResult
from .remember import ActivationStatistics, ClassStatistics

__all__ = ["save", "load", "bytes_beyond_weights", "UntrustedFileError", "TRUSTED_TYPES"]

FORMAT = 3
#: Prefix of the tensors of the first layer's statistics (:class:`rerelrp.novelty.LowLevelStatistics`).
_NOVELTY = "novelty-memory."
#: A member may decompress to at most this many times its compressed size, plus :data:`_SLACK` bytes: deflate
#: compresses rerelrp's members (float weights, masks, JSON) far less, and a zip bomb far more.
MAX_RATIO = 256
_SLACK = 16 << 20
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
    for t, quantiles in enumerate(learner.novelty_quantiles_):
        tensors[f"novelty.{t}"] = torch.from_numpy(np.ascontiguousarray(quantiles, np.float64))
    if learner.novelty_memory_ is not None:
        tensors.update(_memory_tensors(learner.novelty_memory_.memory, _NOVELTY))
    options = learner.get_params(deep=False)  # deep: a detector's own parameters, as 'detector__C', are not options
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
        "widths": {layer.name: layer.n_units for layer in learner.units_.layers}, "growth": learner.growth_,
        "initial_sizes": learner.initial_sizes_, "initial_parameters": learner.initial_parameters_,
        "prune_results": [{"n_pruned": r.n_pruned, "base_accuracy": r.base_accuracy, "accuracy": r.accuracy,
                           "trials": r.trials, "budget": r.budget, "over_threshold": r.over_threshold,
                           "measure": r.measure}
                          for r in learner.prune_results_],
        "memory": _memory_index(memory),
        "novelty_memory": None if learner.novelty_memory_ is None else {
            **_memory_index(learner.novelty_memory_.memory), "floors": learner.novelty_memory_.floors},
    }
    members = {"meta.json": json.dumps(meta, indent=1).encode(), "tensors.safetensors": save_tensors(tensors)}
    for m, detector in enumerate(getattr(learner.recognizer_, "detectors_", [])):
        members[f"detector-{m}.skops"] = sio.dumps(detector)
    if learner.detector is not None:
        members["detector.skops"] = sio.dumps(learner.detector)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(path)
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".partial", dir=path.parent)
    try:
        os.fchmod(fd, mode)
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale_partials(path: Path) -> None:
    """Delete the temporary files a killed save of ``path`` left: those whose writer's process is gone."""
    for partial in path.parent.glob(f".{path.name}.*.partial"):
        pid = partial.name[len(path.name) + 2:].split(".", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            partial.unlink(missing_ok=True)
        except PermissionError:  # another user's live process
            pass


def _read(archive: zipfile.ZipFile, name: str, path: Path) -> bytes:
    """Member ``name`` of ``archive``, refused before reading when it would decompress beyond :data:`MAX_RATIO`."""
    info = archive.getinfo(name)
    if info.file_size > MAX_RATIO * info.compress_size + _SLACK:
        raise UntrustedFileError(f"{name} in {path} would decompress to {info.file_size} bytes from "
                                 f"{info.compress_size}: refusing it as untrusted (a zip bomb?)")
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as error:
        raise UntrustedFileError(f"{name} in {path} cannot be read: {error}") from error


def load(path: str | os.PathLike, model: nn.Module, trusted: Sequence[str] = (), **options: Any) -> ReReLRP:
    """Rebuild the learner saved at ``path`` around ``model`` (same architecture; its weights are overwritten).

    ``trusted``: extra fully qualified type names a saved custom detector may hold.
    ``options``: learner options to use instead of the saved ones (required for
    options that were not saved, such as a custom optimizer factory).

    Raises
    ------
    FileNotFoundError: nothing at ``path``.
    UntrustedFileError: the file is not a rerelrp save, a member is not what rerelrp writes, is too large,
        its contents do not fit together, or a detector holds untrusted types; the message names the member.
    ValueError: the save has another format or comes from another architecture. A model of the widths the
        learner had before it grew (``grow``) is grown to the saved widths first.
    """
    import skops.io as sio

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no rerelrp save at this path", str(path))
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise UntrustedFileError(f"{path} is not a rerelrp save (not a zip archive): {error}") from error
    with archive:
        names = set(archive.namelist())
        meta = _read_meta(archive, path, names)
        if meta["format"] != FORMAT:
            raise ValueError(f"{path} was saved by rerelrp {meta['rerelrp']} in save format {meta['format']}; "
                             f"this is rerelrp {__version__}, which reads format {FORMAT}")
        _widen_to_saved(model, meta)
        _check_architecture(meta["architecture"], architecture(model), path)
        try:
            tensors = load_tensors(_read(archive, "tensors.safetensors", path))
        except UntrustedFileError:
            raise
        except Exception as error:
            raise UntrustedFileError(f"tensors.safetensors in {path} is not a valid safetensors file; "
                                     f"refusing it as untrusted: {error}") from error

        def detector(name: str):
            data = _read(archive, name, path)
            try:
                untrusted = set(sio.get_untrusted_types(data=data)) - set(TRUSTED_TYPES) - set(trusted)
            except Exception as error:
                raise UntrustedFileError(f"{name} in {path} is not a valid skops file; refusing it as untrusted: "
                                         f"{error}") from error
            if untrusted:
                raise UntrustedFileError(f"{name} in {path} holds untrusted types {sorted(untrusted)}; pass "
                                         f"trusted=[...] to rerelrp.load if you trust them")
            return sio.loads(data, trusted=[*TRUSTED_TYPES, *trusted])

        # saves written before get_params(deep=False) hold a detector's own parameters ('detector__C'): not options
        saved = {k: v for k, v in meta["options"].items() if "__" not in k}
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

    try:
        learner = _rebuild(model, saved, meta, tensors, detectors)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
        raise UntrustedFileError(f"{path}: meta.json and tensors.safetensors do not fit together, refusing the file "
                                 f"as untrusted: {type(error).__name__}: {error}") from error
    _check_consistency(learner, path)
    return learner


def _widen_to_saved(model: nn.Module, meta: dict) -> None:
    """Grow ``model`` to the saved widths when the save is of a learner that grew from a model like it (same unit
    layers, of the saved initial widths); any other model is left as it is for the architecture check."""
    if not any(any(g) for g in meta.get("growth") or []):
        return
    try:
        units = find_units(model)
    except TypeError:
        return  # the architecture check names what differs
    if [layer.name for layer in units.layers] == list(meta["widths"]) and units.sizes == meta.get("initial_sizes"):
        widen_to(model, units, meta["widths"])


def _rebuild(model: nn.Module, saved: dict, meta: dict, tensors: dict[str, torch.Tensor], detectors: list) -> ReReLRP:
    """The learner described by ``meta`` and ``tensors`` around ``model`` (raises whatever a missing or malformed
    entry raises: :func:`load` names the file)."""
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
                    [tuple(x) for x in r["trials"]], r.get("budget"), bool(r.get("over_threshold", False)),
                    r.get("measure", "accuracy"))
        for r, keep in zip(meta["prune_results"], learner.masks_)]
    learner.fit_times_ = meta["fit_times"]
    saved = meta.get("novelty_memory")
    if saved:
        _restore_memory(learner.novelty_memory_.memory, saved, tensors, _NOVELTY)
        learner.novelty_memory_.floors = saved["floors"]
        learner.novelty_memory_.fit(learner.tasks_)
        learner.novelty_quantiles_ = [tensors[f"novelty.{t}"].numpy() for t in range(len(learner.tasks_))]
    if not saved or any(len(q) == 3 for q in learner.novelty_quantiles_):
        # saved before the first layer's statistics or the head's confidence were kept: no unknown answer (the
        # learner says so)
        learner.novelty_quantiles_ = []
    learner.growth_ = meta.get("growth") or [[0] * len(learner.units_.layers) for _ in learner.tasks_]
    learner.initial_sizes_ = meta.get("initial_sizes") or learner.units_.sizes
    learner.initial_parameters_ = meta.get("initial_parameters") or learner.initial_parameters_
    return learner


def _check_consistency(learner: ReReLRP, path: Path) -> None:
    """Raise :class:`UntrustedFileError` naming the member when the loaded contents do not fit together: tasks that
    are not disjoint sets of output rows, masks of the wrong type or length, units or head rows of learned tasks
    left unfrozen (the next task would overwrite them), non-finite weights, memory or calibration."""

    def refuse(member: str, what: str):
        raise UntrustedFileError(f"{member} in {path} {what}; refusing the file as untrusted")

    net, units = learner._net, learner.units_
    n_out, seen = units.output.out_features, set()
    for t, classes in enumerate(learner.tasks_):
        if len(classes) < 2 or len(set(classes)) != len(classes) or not all(0 <= c < n_out for c in classes):
            refuse("meta.json", f"gives task {t} the classes {classes}: not two or more distinct ids in [0, {n_out})")
        if seen & set(classes):
            refuse("meta.json", f"gives task {t} classes {sorted(seen & set(classes))} of an earlier task")
        seen |= set(classes)
    for t, keep in enumerate(learner.masks_):
        for i, (mask, n) in enumerate(zip(keep, units.sizes)):
            if mask.dtype != torch.bool or tuple(mask.shape) != (n,):
                refuse("tensors.safetensors", f"holds mask.{t}.{i} as {mask.dtype} {tuple(mask.shape)}, not bool ({n},)")
    names = {id(p): name for name, p in net.named_parameters()}
    for param, mask in learner.frozen_.masks.items():
        if mask.dtype != torch.bool or mask.shape != param.shape:
            refuse("tensors.safetensors", f"holds frozen.{names[id(param)]} as {mask.dtype} {tuple(mask.shape)}, "
                                          f"not bool {tuple(param.shape)}")
    kept = capacity.kept_by(learner.masks_, units.sizes)
    rows = [(layer.module, k) for layer, k in zip(units.layers, kept)] + [
        (units.output, torch.isin(torch.arange(n_out), torch.tensor(sorted(seen))))]
    for module, needed in rows:
        mask = learner.frozen_.masks.get(module.weight)
        if needed.any() and (mask is None or not mask[needed.to(mask.device)].all()):
            refuse("tensors.safetensors", f"does not freeze every row of {names[id(module.weight)]} that a learned task "
                                          "keeps (frozen.* entries missing or cleared): the next task would change "
                                          "old tasks")
    for name, value in net.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            refuse("tensors.safetensors", f"holds NaN or Inf in model.{name}")
    memory = learner.memory_
    if memory.n_tasks != len(learner.tasks_):
        refuse("tensors.safetensors", f"holds memory of {memory.n_tasks} tasks for {len(learner.tasks_)} learned tasks")
    if isinstance(memory, ActivationStatistics):
        for m, per in enumerate(memory.classes):
            idx, basis = memory.units[m], memory.bases[m]
            width, space = (learner._detector_width(), "unit indices of the last hidden layer" if basis is None
                            else f"indices of what detector_space={learner.detector_space!r} reads")
            if idx.dtype != torch.long or len(idx.unique()) != len(idx) or not ((0 <= idx) & (idx < width)).all():
                refuse("tensors.safetensors", f"holds units.{m} that are not distinct {space} (0..{width - 1})")
            if basis is not None and (basis[0].shape != idx.shape or basis[1].dim() != 2
                                      or basis[1].shape[1] != len(idx) or not all(b.isfinite().all() for b in basis)):
                refuse("tensors.safetensors", f"holds center.{m} or axes.{m} that are not a finite center and axes "
                                              f"over detector {m}'s {len(idx)} inputs")
            expected = {c for classes in learner.tasks_[m:] for c in classes}
            if set(per) != expected:
                refuse("meta.json", f"gives detector {m} the classes {sorted(per)}, not those of tasks {m} on")
            for c, stats in per.items():
                values = (stats.weights, stats.means, stats.covariances)
                if not all(np.isfinite(v).all() for v in values) or abs(float(stats.weights.sum()) - 1) > 1e-3:
                    refuse("tensors.safetensors", f"holds a mixture of class {c} (detector {m}) that is not finite "
                                                  "or whose weights do not sum to 1")
    for t, quantiles in enumerate(learner.novelty_quantiles_):
        if quantiles.shape != (4, 101) or not np.isfinite(quantiles).all() or np.any(np.diff(quantiles) < 0):
            refuse("tensors.safetensors", f"holds novelty.{t} that is not 4 x 101 finite, increasing quantiles")
    if learner.novelty_quantiles_:
        low = learner.novelty_memory_
        if len(low.floors) != len(learner.tasks_) or any(f is not None and not (np.isfinite(f) and f > 0)
                                                         for f in low.floors):
            refuse("meta.json", "gives the first layer's statistics floors that are not one positive number per task")
        if len(low.memory.classes) != sum(f is not None for f in low.floors):
            refuse("meta.json", "gives first-layer statistics to other tasks than those with a floor")
        for m, per in enumerate(low.memory.classes):
            if set(per) != set(learner.tasks_[m]):
                refuse("meta.json", f"gives the first layer's statistics of task {m} the classes {sorted(per)}, "
                                    f"not task {m}'s")


def _memory_tensors(memory, prefix: str = "") -> dict[str, torch.Tensor]:
    """The memory as named tensors (names after ``prefix``): unit indices, and class mixtures (covariance
    triangles) or vectors."""
    tensors = {}
    if isinstance(memory, ActivationStatistics):
        for m, units in enumerate(memory.units):
            tensors[f"{prefix}units.{m}"] = units.contiguous()
            if memory.bases[m] is not None:
                tensors[f"{prefix}center.{m}"], tensors[f"{prefix}axes.{m}"] = memory.bases[m]
            rows, cols = np.triu_indices(memory.dims(m))
            for c, stats in memory.classes[m].items():
                tensors[f"{prefix}weights.{m}.{c}"] = torch.from_numpy(stats.weights.copy())
                tensors[f"{prefix}means.{m}.{c}"] = torch.from_numpy(stats.means.copy())
                tensors[f"{prefix}covariances.{m}.{c}"] = torch.from_numpy(stats.covariances[:, rows, cols].copy())
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


def _restore_memory(memory, index: dict, tensors: dict[str, torch.Tensor], prefix: str = "") -> None:
    if isinstance(memory, ActivationStatistics):
        memory.units = [tensors[f"{prefix}units.{m}"] for m in range(len(index["counts"]))]
        memory.bases = [(tensors[f"{prefix}center.{m}"], tensors[f"{prefix}axes.{m}"])
                        if f"{prefix}axes.{m}" in tensors else None for m in range(len(index["counts"]))]
        memory.classes = []
        for m, counts in enumerate(index["counts"]):
            d = memory.dims(m)
            rows, cols = np.triu_indices(d)
            per = {}
            for c, count in counts.items():
                triangles = tensors[f"{prefix}covariances.{m}.{c}"].numpy()
                covariances = np.zeros((len(triangles), d, d), np.float32)
                covariances[:, rows, cols] = triangles
                covariances[:, cols, rows] = triangles
                per[int(c)] = ClassStatistics(tensors[f"{prefix}weights.{m}.{c}"].numpy(),
                                              tensors[f"{prefix}means.{m}.{c}"].numpy(), covariances, count)
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
        meta = json.loads(_read(archive, "meta.json", path).decode("utf-8"))
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
