"""Torch pickles (``.pth .pt .bin .ckpt``): ``weights_only=True``, checked, and never memory-mapped.

Zip-format files (everything ``torch.save`` wrote since torch 1.6) are opened
lazily by :class:`~weightsurgery.sources.torch_zip.TorchZip`: the pickle is
unpickled with its storages on the meta device, each storage is checked against
its zip record, and a tensor's bytes are read with ``pread`` (CRC-32 checked)
only when it is loaded. Nothing is mapped, so a file truncated between resolve
and apply raises :class:`~weightsurgery.errors.CorruptCheckpointError` instead
of killing the process with SIGBUS. The legacy (pre-zip) format is read whole by
``torch.load``, after its pickles pass
:func:`~weightsurgery.sources.pickle_scan.scan_pickle` and the storages they
declare fit in the file.

``weights_only=True`` refuses a pickle that needs code to load (a custom class,
a whole pickled model); that is an :class:`~weightsurgery.errors.UnsafeCheckpointError`.
``weights_only=False`` lets it run, after a loud warning. A whole pickled
``nn.Module`` loaded that way is indexed through its ``state_dict()``.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from weightsurgery.errors import (
    CorruptCheckpointError,
    EmptyCheckpointError,
    UnsafeCheckpointError,
    WeightSurgeryError,
)
from weightsurgery.sources import memory, nested
from weightsurgery.sources.checkpoint import Checkpoint, Origin, SourceKind
from weightsurgery.sources.pickle_scan import scan_pickle
from weightsurgery.sources.torch_zip import TorchZip

__all__ = ["PickleFile", "load_pickle", "open_pickle", "read_pickle"]

logger = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"
# Phrases torch's weights-only unpickler uses when it refuses code, as opposed to bad bytes.
_NEEDS_CODE = ("unsupported global", "allowlist", "unrecognized function", "unsupported class", "can only build")
_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
_LEGACY_PICKLES = 5  # magic number, protocol, system info, the object, the storage keys


@dataclass(frozen=True)
class PickleFile:
    """A torch pickle as opened: what it holds, and how to read a tensor's data.

    Attributes:
        obj: the unpickled object; a lazy file's tensors are on the meta device.
        materialize: a tensor of ``obj`` -> the same tensor with its data, in memory it owns when ``lazy``.
        close: releases the file.
        lazy: the tensors are read on demand by ``materialize`` (a zip file).
    """

    obj: object
    materialize: Callable[[torch.Tensor], torch.Tensor]
    close: Callable[[], None]
    lazy: bool


def read_pickle(path: Path, *, weights_only: bool, lazy: bool = True) -> PickleFile:
    """Open a file written by ``torch.save``: checked, unpickled, and lazy when it is a zip.

    Args:
        path: the file.
        weights_only: refuse pickles that need code (the default everywhere).
            ``False`` runs the pickle's code and warns.
        lazy: leave a zip file's tensors unread until ``materialize``; ``False`` reads them all now.

    Returns:
        The object and its reader.

    Raises:
        UnsafeCheckpointError: the pickle needs code and ``weights_only`` is true.
        CorruptCheckpointError: the file is empty, truncated, not a torch pickle,
            inconsistent (a storage larger than its record, a bad CRC-32) or hostile
            (a huge allocation).

    Example:
        >>> import tempfile, pathlib, torch
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.pth"
        >>> torch.save({"w": torch.ones(2)}, p)
        >>> opened = read_pickle(p, weights_only=True)
        >>> opened.lazy, opened.obj["w"].is_meta, opened.materialize(opened.obj["w"]).tolist()
        (True, True, [1.0, 1.0])
        >>> opened.close()
    """
    with open(path, "rb") as fh:
        head = fh.read(len(_ZIP_MAGIC))
    if not head:
        raise CorruptCheckpointError(
            f"{path} is empty (0 bytes): the download or save was interrupted; re-download it or re-save it",
            source=path,
        )
    if not weights_only:
        message = (
            f"loading {path} with weights_only=False runs any code its pickle holds; "
            "do this only for files you trust"
        )
        warnings.warn(message, UserWarning, stacklevel=3)
    try:
        if head == _ZIP_MAGIC:
            archive = TorchZip(path, weights_only=weights_only, lazy=lazy)
            return PickleFile(archive.obj, archive.materialize, archive.close, lazy=not archive.eager)
        if weights_only:
            _scan_legacy(path)
        obj = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=False)
        return PickleFile(obj, _as_is, _nothing, lazy=False)
    except WeightSurgeryError:
        raise
    except pickle.UnpicklingError as exc:
        if weights_only and any(phrase in str(exc).lower() for phrase in _NEEDS_CODE):
            raise UnsafeCheckpointError(_unsafe_message(path, exc), source=path) from exc
        raise _corrupt(path, exc) from exc
    except Exception as exc:  # anything else the bytes provoke in torch.load or the unpickler
        raise _corrupt(path, exc) from exc


def load_pickle(path: Path, *, weights_only: bool) -> object:
    """``torch.load`` one file onto the CPU, whole, after :func:`read_pickle`'s checks.

    Example:
        >>> import tempfile, pathlib, torch
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.pth"
        >>> torch.save({"w": torch.ones(2)}, p)
        >>> load_pickle(p, weights_only=True)["w"].tolist()
        [1.0, 1.0]
    """
    opened = read_pickle(path, weights_only=weights_only, lazy=False)
    opened.close()
    return opened.obj


def _scan_legacy(path: Path) -> None:
    """The legacy format's leading pickles pass :func:`scan_pickle`, and their storages fit in the file."""
    declared: dict[str, int] = {}
    with open(path, "rb") as fh:
        for _ in range(_LEGACY_PICKLES):
            declared.update(scan_pickle(fh, source=path))
        size = fh.seek(0, 2)
    total = sum(declared.values())
    if total > size:
        raise CorruptCheckpointError(
            f"{path} is not a readable torch checkpoint: it is truncated or malformed (its pickle declares storages "
            f"of {total} elements, more than its {size} bytes can hold); re-download it or re-save it with torch.save",
            source=path,
        )


def _as_is(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _nothing() -> None:
    return None


def open_pickle(path: Path, *, key: str | None, weights_only: bool, location: str | None = None) -> Checkpoint:
    """Open a torch pickle and index the state dict inside it.

    Nested training checkpoints are unwrapped by :func:`nested.unwrap`; the path
    taken is ``origin.container``.

    Args:
        path: the file.
        key: the container to take or a key prefix to strip; ``None`` chooses automatically.
        weights_only: see :func:`load_pickle`.
        location: what the user named, for ``origin.location``; defaults to ``path``.

    Returns:
        A :class:`Checkpoint` of kind ``PICKLE``; a zip file's tensors are read as they are loaded.

    Raises:
        UnsafeCheckpointError: the pickle needs code and ``weights_only`` is true.
        CorruptCheckpointError: the file is empty, truncated or not a torch pickle.
        EmptyCheckpointError: the file holds no tensors.
        AmbiguousContainerError: several state dicts share the best rank; pass ``key``.
        UnknownContainerError: ``key`` names nothing in the file.

    Example:
        >>> import tempfile, pathlib, torch
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "last.ckpt"
        >>> torch.save({"state_dict": {"model.w": torch.ones(2)}, "epoch": 4}, p)
        >>> ckpt = open_pickle(p, key=None, weights_only=True)
        >>> ckpt.origin.container, ckpt.keys()
        (('state_dict',), ['model.w'])
    """
    opened = read_pickle(path, weights_only=weights_only)
    try:
        obj = opened.obj
        if isinstance(obj, nn.Module):
            logger.info("%s holds a whole pickled %s; using its state_dict()", path, type(obj).__name__)
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            raise EmptyCheckpointError(
                f"{path} holds a {type(obj).__name__}, not a state dict; "
                "pass a file saved with torch.save(model.state_dict(), path)",
                source=path,
            )
        found = nested.unwrap(obj, key=key, source=path)
        origin = Origin(SourceKind.PICKLE, str(path) if location is None else location, files=(str(path),))
        ckpt = memory.from_unwrapped(
            found, obj, origin, closer=opened.close, materialize=opened.materialize, owned=opened.lazy
        )
    except BaseException:
        opened.close()
        raise
    header = obj.get("__metadata__")
    if isinstance(header, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in header.items()):
        ckpt.metadata["file_metadata"] = dict(header)  # what weightsurgery convert writes, like safetensors' header
    return ckpt


def _unsafe_message(path: Path, exc: pickle.UnpicklingError) -> str:
    needed = _GLOBAL.search(str(exc))
    what = f" (it needs {needed.group(1)})" if needed else ""
    return (
        f"{path} is a pickle that needs code to load{what}, which weights_only=True refuses. "
        "Only if you trust this file, opt in with transfer(..., weights_only=False) or the CLI flag "
        "--unsafe-pickle; unpickling it can run arbitrary code. Better: re-save its state dict as safetensors"
    )


def _corrupt(path: Path, exc: BaseException) -> CorruptCheckpointError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return CorruptCheckpointError(
        f"{path} is not a readable torch checkpoint: it is truncated or malformed ({reason}); "
        "re-download it or re-save it with torch.save",
        source=path,
    )
