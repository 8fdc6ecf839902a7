"""Torch pickles (``.pth .pt .bin .ckpt``): ``torch.load`` with ``weights_only=True``.

Zip-format files (everything ``torch.save`` wrote since torch 1.6) are
memory-mapped (``mmap=True``), so opening one reads only its pickled structure,
not its tensor data. The legacy (pre-zip) format cannot be mapped and is read
whole.

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
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from weightsurgery.errors import CorruptCheckpointError, EmptyCheckpointError, UnsafeCheckpointError
from weightsurgery.sources import memory, nested
from weightsurgery.sources.checkpoint import Checkpoint, Origin, SourceKind

__all__ = ["load_pickle", "open_pickle"]

logger = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"
# Phrases torch's weights-only unpickler uses when it refuses code, as opposed to bad bytes.
_NEEDS_CODE = ("unsupported global", "allowlist", "unrecognized function", "unsupported class", "can only build")
_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
# What torch.load raises on truncated or malformed bytes.
_MALFORMED = (RuntimeError, EOFError, KeyError, ValueError, IndexError, zipfile.BadZipFile)


def load_pickle(path: Path, *, weights_only: bool) -> object:
    """``torch.load`` one file onto the CPU, memory-mapped when it is a zip.

    Args:
        path: a file written by ``torch.save``.
        weights_only: refuse pickles that need code (the default everywhere).
            ``False`` runs the pickle's code and warns.

    Returns:
        Whatever the file holds, usually a (nested) dict of tensors.

    Raises:
        UnsafeCheckpointError: the pickle needs code and ``weights_only`` is true.
        CorruptCheckpointError: the file is empty, truncated or not a torch pickle.

    Example:
        >>> import tempfile, pathlib, torch
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.pth"
        >>> torch.save({"w": torch.ones(2)}, p)
        >>> load_pickle(p, weights_only=True)["w"].tolist()
        [1.0, 1.0]
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
        warnings.warn(message, UserWarning, stacklevel=2)
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=head == _ZIP_MAGIC)
    except pickle.UnpicklingError as exc:
        if weights_only and any(phrase in str(exc).lower() for phrase in _NEEDS_CODE):
            raise UnsafeCheckpointError(_unsafe_message(path, exc), source=path) from exc
        raise _corrupt(path, exc) from exc
    except _MALFORMED as exc:
        raise _corrupt(path, exc) from exc


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
        A :class:`Checkpoint` of kind ``PICKLE``; its tensors may be memory-mapped.

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
    obj = load_pickle(path, weights_only=weights_only)
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
    ckpt = memory.from_unwrapped(found, obj, origin)
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
