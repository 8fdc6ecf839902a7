"""Lazy ``.safetensors`` files: keys, shapes and dtypes from the header, data at load time.

:func:`open_header` opens a file with ``safetensors.safe_open``, which validates
the header against the file size, so truncation is caught at open time.

Tensors are read with ``pread`` straight into freshly allocated tensors
(:meth:`SafetensorsHeader.read`), not through a memory map: on the machines
measured here, cloning a mapped tensor costs about 15x a direct read (page
faults), a tensor that will train must not stay mapped, and a file changed
underneath a read raises an error instead of killing the process with SIGBUS.
The loaded tensors are owned, so apply puts them into a model without a second copy.

``Checkpoint.metadata["safetensors"]`` holds the header's ``__metadata__``
(``{}`` when it has none). A tensor written once for several names
(``safetensors.torch.save_model``, ``weightsurgery convert``) is listed there as
``{alias: kept}``: the alias becomes a key of the checkpoint that reads the
kept tensor, and the names are a group of ``metadata["tied"]``, as for tied
tensors of an in-memory source (:mod:`weightsurgery.sources.shared`).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open

from weightsurgery.errors import CorruptCheckpointError, UnknownContainerError
from weightsurgery.sources import nested
from weightsurgery.sources.checkpoint import Checkpoint, Origin, SourceKind, TensorMeta
from weightsurgery.sources.shared import metadata_aliases

__all__ = ["SafetensorsHeader", "open_header", "open_safetensors"]

logger = logging.getLogger(__name__)

# safetensors' own dtype table ("F32" -> torch.float32); private, but present since 0.3.
_DTYPES: dict[str, torch.dtype] = dict(safetensors.torch._TYPES)


@dataclass(frozen=True)
class SafetensorsHeader:
    """An open safetensors file: its handle and what its header says.

    Attributes:
        path: the file.
        handle: the open ``safe_open`` handle; ``handle.get_tensor(key)`` reads one tensor.
        metas: key -> shape and dtype, in header order.
        metadata: the header's ``__metadata__`` (``{}`` when absent).
    """

    path: Path
    handle: Any
    metas: dict[str, TensorMeta]
    metadata: dict[str, str]
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)
    fd: int = -1

    def read(self, key: str) -> torch.Tensor:
        """Read one tensor into new memory that it owns."""
        if self.fd < 0 or key not in self.offsets:  # big-endian host: let safetensors byte-swap
            return self.handle.get_tensor(key)
        meta = self.metas[key]
        start, end = self.offsets[key]
        out = torch.empty(meta.shape, dtype=meta.dtype)
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy()) if end > start else memoryview(b"")
        done = 0
        while done < end - start:
            n = os.preadv(self.fd, [view[done:]], start + done)
            if n <= 0:
                raise CorruptCheckpointError(
                    f"{self.path} ended while reading {key!r} (byte {start + done} of {end}): the file was "
                    "truncated or changed after it was opened; re-download or re-save it",
                    source=self.path,
                )
            done += n
        return out

    def close(self) -> None:
        """Release the file handles."""
        self.handle.__exit__(None, None, None)
        if self.fd >= 0:
            os.close(self.fd)
            object.__setattr__(self, "fd", -1)


def open_header(path: Path) -> SafetensorsHeader:
    """Open ``path`` and read its header; no tensor data is read.

    Args:
        path: a ``.safetensors`` file.

    Returns:
        The open file with its metas and metadata.

    Raises:
        CorruptCheckpointError: the file is truncated, empty or not safetensors.

    Example:
        >>> import tempfile, pathlib, torch
        >>> from safetensors.torch import save_file
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
        >>> save_file({"w": torch.ones(2, 3)}, p)
        >>> header = open_header(p)
        >>> header.metas["w"].shape, header.metas["w"].dtype
        ((2, 3), torch.float32)
        >>> header.close()
    """
    try:
        handle = safe_open(str(path), framework="pt")
    except SafetensorError as exc:
        raise CorruptCheckpointError(
            f"{path} is not a readable safetensors file: it is truncated or malformed ({exc}); "
            "re-download it or re-save it with safetensors.torch.save_file",
            source=path,
        ) from exc
    metas: dict[str, TensorMeta] = {}
    for key in handle.keys():
        view = handle.get_slice(key)
        dtype = _DTYPES.get(view.get_dtype())
        if dtype is None:
            handle.__exit__(None, None, None)
            raise CorruptCheckpointError(
                f"{path} stores {key!r} as dtype {view.get_dtype()}, which this torch build cannot hold; "
                "upgrade torch and safetensors, or re-save the file with a supported dtype",
                source=path,
            )
        metas[key] = TensorMeta(tuple(view.get_shape()), dtype)
    logger.debug("read safetensors header of %s: %d tensors", path, len(metas))
    offsets, fd = _offsets(path) if sys.byteorder == "little" else ({}, -1)
    return SafetensorsHeader(path, handle, metas, dict(handle.metadata() or {}), offsets, fd)


def _offsets(path: Path) -> tuple[dict[str, tuple[int, int]], int]:
    """Absolute byte ranges of every tensor (the header was validated by ``safe_open``)."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    base = 8 + size
    offsets = {
        k: (base + v["data_offsets"][0], base + v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"
    }
    return offsets, os.open(path, os.O_RDONLY)


def open_safetensors(path: Path, *, key: str | None, location: str | None = None) -> Checkpoint:
    """Open one safetensors file lazily.

    Safetensors files are flat. A ``key`` selects the tensors under that key
    prefix and strips it (``key="model_ema"`` turns ``model_ema.fc.weight`` into
    ``fc.weight``), recorded as ``origin.container == ("model_ema",)``.

    Args:
        path: the file.
        key: a key prefix to select and strip, or ``None`` for every tensor.
        location: what the user named, for ``origin.location``; defaults to ``path``.

    Returns:
        A :class:`Checkpoint` of kind ``SAFETENSORS`` that reads each tensor on demand.

    Raises:
        CorruptCheckpointError: the file is truncated or malformed.
        UnknownContainerError: ``key`` is not a key prefix in the file.

    Example:
        >>> import tempfile, pathlib, torch
        >>> from safetensors.torch import save_file
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
        >>> save_file({"model_ema.w": torch.ones(2)}, p, metadata={"format": "pt"})
        >>> with open_safetensors(p, key="model_ema") as ckpt:
        ...     ckpt.keys(), ckpt.metadata["safetensors"], ckpt.load("w").tolist()
        (['w'], {'format': 'pt'}, [1.0, 1.0])
    """
    header = open_header(path)
    stored = {k: k for k in header.metas}  # every name -> the name its bytes are stored under
    stored.update(metadata_aliases(header.metadata, header.metas))
    try:
        renames = {k: k for k in stored} if key is None else nested.select_prefix(stored, key, source=path)
    except UnknownContainerError:
        header.close()
        raise
    metas = {new: header.metas[stored[old]] for new, old in renames.items()}
    groups: dict[str, list[str]] = {}
    for new, old in renames.items():
        groups.setdefault(stored[old], []).append(new)
    tied = [names for names in groups.values() if len(names) > 1]
    origin = Origin(
        SourceKind.SAFETENSORS,
        str(path) if location is None else location,
        files=(str(path),),
        container=() if key is None else (key,),
        details={} if key is None else {"key_prefix": key + "."},
    )

    def load(name: str) -> torch.Tensor:
        return header.read(stored[renames[name]])

    metadata: dict[str, Any] = {"safetensors": header.metadata}
    if tied:
        metadata["tied"] = tied
    return Checkpoint(metas, load, origin, metadata=metadata, closer=header.close, owned=header.fd >= 0,
                      locate=lambda name: (header, stored[renames[name]]))
