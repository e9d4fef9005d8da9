"""Persist: a learner's state as one safe, atomic, bounded file, and back.

This module is a file codec: it knows nothing of the learner. A state is three parts
(:meth:`rerelrp.ReReLRP.state_dict`): JSON values, named tensors and fitted scikit-learn estimators. A file is one
zip archive:

- ``meta.json``: the JSON values, with the package version and :data:`FORMAT`;
- ``tensors.safetensors``: the tensors; safetensors holds raw tensors only: nothing in it can run code;
- ``<name>.skops``: each estimator in skops' format, loaded only if every type in it is one scikit-learn trusts,
  one of :data:`TRUSTED_TYPES`, or one the caller lists in ``trusted``.

Nothing is ever unpickled. :func:`write` writes the file beside its final path and moves it over it with
``os.replace``, so a write killed halfway leaves the previous file at that path intact; the next write of that path
removes the temporary files of writers that no longer run. A new file gets the mode ``open`` would give it (0666
less the umask); an existing one keeps its mode. :func:`read` bounds every member's size before reading it and
raises :class:`UntrustedFileError` naming the file and the member for anything that is not what :func:`write`
writes. Files of format :data:`FORMAT` read as they are (an older or newer format is refused, naming both).
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ._version import __version__

__all__ = ["write", "read", "UntrustedFileError", "TRUSTED_TYPES", "FORMAT"]

FORMAT = 3
#: A member may decompress to at most this many times its compressed size, plus :data:`_SLACK` bytes: deflate
#: compresses rerelrp's members (float weights, masks, JSON) far less, and a zip bomb far more.
MAX_RATIO = 256
_SLACK = 16 << 20
#: Types beyond skops' defaults that a saved estimator may hold (the default RandomForest's trees).
TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]
#: Keys every ``meta.json`` of a learner holds.
_META_KEYS = {"format", "rerelrp", "architecture", "options", "tasks", "input_shape"}


class UntrustedFileError(ValueError):
    """A save holds something that is not what rerelrp writes, or types that are not trusted."""


def write(path: str | os.PathLike, meta: dict, tensors: dict[str, torch.Tensor],
          estimators: dict[str, Any] | None = None) -> Path:
    """Write ``meta`` (JSON values; :data:`FORMAT` and the package version are added), ``tensors`` (contiguous CPU
    tensors by name) and ``estimators`` (scikit-learn objects by name) to the zip file ``path``, atomically."""
    import skops.io as sio

    path = Path(path)
    members = {"meta.json": json.dumps({"format": FORMAT, "rerelrp": __version__, **meta}, indent=1).encode(),
               "tensors.safetensors": save_tensors(tensors)}
    for name, estimator in (estimators or {}).items():
        members[f"{name}.skops"] = sio.dumps(estimator)
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


def read(path: str | os.PathLike, trusted: Sequence[str] = ()) -> tuple[dict, dict[str, torch.Tensor], dict[str, Any]]:
    """The ``(meta, tensors, estimators)`` that :func:`write` wrote to ``path``.

    ``trusted``: extra fully qualified type names an estimator may hold.

    Raises
    ------
    FileNotFoundError
        nothing at ``path``.
    UntrustedFileError
        the file is not a rerelrp save, a member is not what :func:`write` writes or is too large,
        or an estimator holds untrusted types; the message names the member.
    ValueError
        the file has another format than :data:`FORMAT`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no rerelrp save at this path", str(path))
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise UntrustedFileError(f"{path} is not a rerelrp save (not a zip archive): {error}") from error
    with archive:
        meta = _read_meta(archive, path)
        if meta["format"] != FORMAT:
            raise ValueError(f"{path} was saved by rerelrp {meta['rerelrp']} in save format {meta['format']}; "
                             f"this is rerelrp {__version__}, which reads format {FORMAT}")
        try:
            tensors = load_tensors(_read(archive, "tensors.safetensors", path))
        except UntrustedFileError:
            raise
        except Exception as error:
            raise UntrustedFileError(f"tensors.safetensors in {path} is not a valid safetensors file; "
                                     f"refusing it as untrusted: {error}") from error
        estimators = {name[:-len(".skops")]: _estimator(archive, name, path, trusted)
                      for name in archive.namelist() if name.endswith(".skops")}
    return meta, tensors, estimators


def _estimator(archive: zipfile.ZipFile, name: str, path: Path, trusted: Sequence[str]) -> Any:
    """The skops member ``name``, loaded only when every type in it is trusted."""
    import skops.io as sio

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


def _read_meta(archive: zipfile.ZipFile, path: Path) -> dict:
    required = {"meta.json", "tensors.safetensors"}
    names = set(archive.namelist())
    if not required <= names:
        raise UntrustedFileError(f"{path} is not a rerelrp save: it lacks {sorted(required - names)}")
    try:
        meta = json.loads(_read(archive, "meta.json", path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UntrustedFileError(f"meta.json in {path} is not JSON; refusing it as untrusted: {error}") from error
    if not isinstance(meta, dict) or not _META_KEYS <= set(meta):
        raise UntrustedFileError(f"meta.json in {path} is not a rerelrp save description")
    return meta
