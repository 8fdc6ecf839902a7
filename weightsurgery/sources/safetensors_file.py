"""Lazy ``.safetensors`` files: keys, shapes and dtypes from the header, data at load time.

:func:`open_header` reads the header itself, with ``pread``, and never maps the
file, so a file larger than memory opens as cheaply as a small one. The header
is validated as the safetensors format defines it (:func:`parse_header`): its
length is bounded (100 MB) and fits the file, it is one JSON object without
duplicate keys, every dtype is known, every shape times its dtype's size is
exactly its byte range, and the ranges tile the data area from its first byte
to the end of the file, with no overlap, no gap and nothing out of range. A file
that breaks any of these is a :class:`~weightsurgery.errors.CorruptCheckpointError`
naming the file and the tensor.

Tensors are read with ``pread`` straight into freshly allocated tensors
(:meth:`SafetensorsHeader.read`), not through a memory map: on the machines
measured here, cloning a mapped tensor costs about 15x a direct read (page
faults), a tensor that will train must not stay mapped, and a file changed
underneath a read raises an error instead of killing the process with SIGBUS.
:meth:`SafetensorsHeader.read_rows` reads a slice of rows (a rank's shard) and
:meth:`SafetensorsHeader.read_into` any byte range of one tensor; every read
adds to :attr:`SafetensorsHeader.bytes_read`.

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
import sys
from pathlib import Path
from typing import Any

import torch

from weightsurgery.errors import CorruptCheckpointError, UnknownContainerError
from weightsurgery.sources import nested
from weightsurgery.sources._fileread import pread_into
from weightsurgery.sources.checkpoint import Checkpoint, Origin, SourceKind, TensorMeta
from weightsurgery.sources.shared import metadata_aliases

__all__ = ["DTYPES", "MAX_HEADER_BYTES", "SafetensorsHeader", "open_header", "open_safetensors", "parse_header"]

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 100_000_000
"""The largest header accepted, as in the safetensors library itself."""

DTYPES: dict[str, torch.dtype] = {
    name: dtype
    for name, attr in {
        "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
        "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
        "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
        "F8_E4M3": "float8_e4m3fn", "F8_E4M3FNUZ": "float8_e4m3fnuz",
        "F8_E5M2": "float8_e5m2", "F8_E5M2FNUZ": "float8_e5m2fnuz",
        "C64": "complex64", "C128": "complex128",
    }.items()
    if isinstance(dtype := getattr(torch, attr, None), torch.dtype)
}  # fmt: skip
"""The safetensors dtype names this torch build can hold (``"F32"`` -> ``torch.float32``)."""

_FIX = "re-download it or re-save it with safetensors.torch.save_file"


class SafetensorsHeader:
    """An open safetensors file: what its header says, and positioned reads of its tensors.

    Attributes:
        path: the file.
        metas: key -> shape and dtype, in name order (as ``safe_open(...).keys()``).
        metadata: the header's ``__metadata__`` (``{}`` when absent).
        offsets: key -> ``(start, end)``, the tensor's absolute byte range in the file.
        bytes_read: tensor bytes read so far by this handle (every ``read*`` call adds to it).
    """

    def __init__(
        self, path: Path, fd: int, metas: dict[str, TensorMeta], metadata: dict[str, str],
        offsets: dict[str, tuple[int, int]],
    ) -> None:  # fmt: skip
        self.path = path
        self.fd = fd
        self.metas = metas
        self.metadata = metadata
        self.offsets = offsets
        self.bytes_read = 0

    def read(self, key: str) -> torch.Tensor:
        """Read one whole tensor into new memory that it owns."""
        meta = self.metas[key]
        out = torch.empty(meta.shape, dtype=meta.dtype)
        return self.read_into(key, out, 0)

    def read_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Read rows ``[start, stop)`` of a tensor (along dim 0); only their bytes are read.

        Example:
            >>> import tempfile, pathlib, torch
            >>> from safetensors.torch import save_file
            >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
            >>> save_file({"w": torch.arange(12.).reshape(4, 3)}, p)
            >>> header = open_header(p)
            >>> header.read_rows("w", 1, 3).tolist(), header.bytes_read
            ([[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]], 24)
            >>> header.close()
        """
        meta = self.metas[key]
        if not meta.shape or not 0 <= start <= stop <= meta.shape[0]:
            raise IndexError(f"rows [{start}, {stop}) are out of range for {key!r} of shape {meta.shape} in {self.path}")
        row = TensorMeta(meta.shape[1:], meta.dtype).nbytes
        out = torch.empty((stop - start, *meta.shape[1:]), dtype=meta.dtype)
        return self.read_into(key, out, start * row)

    def read_into(self, key: str, out: torch.Tensor, start: int) -> torch.Tensor:
        """Fill the contiguous CPU tensor ``out`` with the bytes of ``key`` from byte ``start`` of that tensor.

        Returns ``out``. The range read is ``[start, start + out.nbytes)`` of the
        tensor's own bytes; it must lie inside the tensor.

        Raises:
            CorruptCheckpointError: the file ended before the range: it was
                truncated or changed after it was opened.
        """
        begin, end = self.offsets[key]
        length = out.numel() * out.element_size()
        if not out.is_contiguous() or out.device.type != "cpu" or start < 0 or begin + start + length > end:
            raise ValueError(f"bytes [{start}, {start + length}) of {key!r} are not a range of it, or out is not "
                             "a contiguous CPU tensor")  # fmt: skip
        if length:
            done = pread_into(self.fd, memoryview(out.reshape(-1).view(torch.uint8).numpy()), begin + start)
            if done < length:
                raise CorruptCheckpointError(
                    f"{self.path} ended while reading {key!r} (byte {begin + start + done} of {end}): the file was "
                    "truncated or changed after it was opened; re-download or re-save it",
                    source=self.path,
                )
            self.bytes_read += length
            if sys.byteorder == "big" and out.element_size() > 1:  # safetensors is little-endian
                flat = out.reshape(-1).view(torch.uint8).view(-1, out.element_size())
                flat.copy_(flat.flip(1))
        return out

    def close(self) -> None:
        """Release the file handle."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_header(path: Path) -> SafetensorsHeader:
    """Open ``path`` and read and validate its header; no tensor data is read.

    Args:
        path: a ``.safetensors`` file.

    Returns:
        The open file with its metas, metadata and byte ranges.

    Raises:
        CorruptCheckpointError: the file is truncated, empty, not safetensors, or
            its header is inconsistent (see :func:`parse_header`).

    Example:
        >>> import tempfile, pathlib, torch
        >>> from safetensors.torch import save_file
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
        >>> save_file({"w": torch.ones(2, 3)}, p)
        >>> header = open_header(p)
        >>> header.metas["w"].shape, header.metas["w"].dtype, header.bytes_read
        ((2, 3), torch.float32, 0)
        >>> header.close()
    """
    path = Path(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 8, 0)
        if len(head) < 8:
            raise _corrupt(path, f"{size} bytes, shorter than the 8-byte header length")
        length = int.from_bytes(head, "little")
        if length > MAX_HEADER_BYTES:
            raise _corrupt(path, f"its header claims {length} bytes, over the {MAX_HEADER_BYTES}-byte limit")
        if 8 + length > size:
            raise _corrupt(path, f"its header claims {length} bytes but the file has {size}")
        raw = _pread_exact(fd, length, 8)
        metas, metadata, ranges = parse_header(raw, data_size=size - 8 - length, source=path)
    except BaseException:
        os.close(fd)
        raise
    base = 8 + length
    offsets = {k: (base + b, base + e) for k, (b, e) in ranges.items()}
    logger.debug("read safetensors header of %s: %d tensors", path, len(metas))
    return SafetensorsHeader(path, fd, metas, metadata, offsets)


def parse_header(
    raw: bytes, *, data_size: int, source: object
) -> tuple[dict[str, TensorMeta], dict[str, str], dict[str, tuple[int, int]]]:
    """Validate a safetensors header and return its metas, metadata and data ranges.

    Args:
        raw: the header bytes (after the 8-byte length).
        data_size: bytes in the file after the header; the tensors must fill them exactly.
        source: the file, for messages.

    Returns:
        ``(metas, metadata, ranges)``; ranges are ``(begin, end)`` relative to the data area.

    Raises:
        CorruptCheckpointError: anything the format forbids, naming the tensor.

    Example:
        >>> raw = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
        >>> parse_header(raw, data_size=8, source="w.safetensors")[2]
        {'w': (0, 8)}
        >>> parse_header(raw, data_size=4, source="w.safetensors")
        Traceback (most recent call last):
        ...
        weightsurgery.errors.CorruptCheckpointError: w.safetensors is not a readable safetensors file: it is truncated or malformed (tensor 'w' ends at byte 8 of a 4-byte data area); re-download it or re-save it with safetensors.torch.save_file
    """
    if not raw.startswith(b"{"):
        raise _corrupt(source, "its header is not a JSON object")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _corrupt(source, f"its header is not valid JSON: {str(exc).splitlines()[0][:200]}") from exc
    if not isinstance(header, dict):
        raise _corrupt(source, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(source, "its __metadata__ is not an object of strings")
    metas: dict[str, TensorMeta] = {}
    ranges: dict[str, tuple[int, int]] = {}
    for key in sorted(header):  # in name order, as safetensors' own ``keys()`` lists them
        metas[key], ranges[key] = _entry(key, header[key], source)
    end = 0
    for key, (begin, stop) in sorted(ranges.items(), key=lambda kv: kv[1]):
        if begin != end:
            what = "overlaps the tensor before it" if begin < end else f"leaves a gap of {begin - end} bytes before it"
            raise _corrupt(source, f"tensor {key!r} at bytes [{begin}, {stop}) {what}")
        if stop > data_size:
            raise _corrupt(source, f"tensor {key!r} ends at byte {stop} of a {data_size}-byte data area")
        end = stop
    if end != data_size:
        raise _corrupt(source, f"its tensors fill {end} bytes of a {data_size}-byte data area")
    return metas, metadata, ranges


def _entry(key: str, entry: object, source: object) -> tuple[TensorMeta, tuple[int, int]]:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise _corrupt(source, f"tensor {key!r} lacks dtype, shape or data_offsets")
    name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _corrupt(source, f"tensor {key!r} has shape {shape!r}, not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):  # fmt: skip
        raise _corrupt(source, f"tensor {key!r} has data_offsets {offsets!r}, not [begin, end]")
    dtype = DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise CorruptCheckpointError(
            f"{source} stores {key!r} as dtype {name}, which this torch build cannot hold; "
            "upgrade torch and safetensors, or re-save the file with a supported dtype",
            source=source,
        )
    meta = TensorMeta(tuple(shape), dtype)
    if offsets[1] - offsets[0] != meta.nbytes:
        raise _corrupt(source, f"tensor {key!r} of shape {tuple(shape)} and dtype {name} needs {meta.nbytes} "
                               f"bytes but data_offsets {offsets} hold {offsets[1] - offsets[0]}")  # fmt: skip
    return meta, (offsets[0], offsets[1])


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # one C-level pass; called for every object of the header (one per tensor)
    if len(out) != len(pairs):
        seen: set[str] = set()
        k = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {k!r}")
    return out


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    while length:
        chunk = os.pread(fd, min(length, 1 << 26), offset)
        if not chunk:
            break
        chunks.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _corrupt(source: object, reason: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{source} is not a readable safetensors file: it is truncated or malformed ({reason}); {_FIX}",
        source=source,
    )


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

    def locate(name: str) -> tuple[SafetensorsHeader, str] | None:
        return (header, stored[renames[name]]) if name in renames else None

    metadata: dict[str, Any] = {"safetensors": header.metadata}
    if tied:
        metadata["tied"] = tied
    return Checkpoint(metas, load, origin, metadata=metadata, closer=header.close, owned=True, locate=locate)
