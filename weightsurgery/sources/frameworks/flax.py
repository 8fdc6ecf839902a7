"""JAX/Flax weights: ``flax.serialization`` msgpack files and big_vision-style ``.npz`` files.

* ``.msgpack`` (``flax.serialization.to_bytes(variables)``) is read with
  ``msgpack`` alone (``pip install 'weightsurgery[flax]'``), no JAX: arrays are
  Flax's msgpack extension ``(shape, dtype, bytes)``; chunked big arrays are
  joined. The whole file is read once; tensors are converted when loaded.
* ``.npz`` with ``/``-separated names (``Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel``,
  optionally under ``params/``) is read with NumPy: shapes and dtypes come from
  each member's ``.npy`` header, data on demand.

Keys join the module path with dots (``params/Dense_0/kernel`` -> ``Dense_0.weight``;
``batch_stats`` goes beside ``params``), in the file's order, which for both is
the order the model created its variables. Layouts follow Flax's naming
conventions (:mod:`.flax_layers`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from weightsurgery.errors import CorruptCheckpointError
from weightsurgery.sources.checkpoint import Checkpoint, Origin, SourceKind
from weightsurgery.sources.frameworks._build import SourceTensor, build_checkpoint, numpy_dtype
from weightsurgery.sources.frameworks._lazy import require
from weightsurgery.sources.frameworks.flax_layers import flax_tensor

__all__ = ["open_flax"]

_COLLECTIONS = ("params", "batch_stats")
_NDARRAY, _NPSCALAR = 1, 3  # flax.serialization's msgpack extension codes


def open_flax(path: Path, *, location: str) -> Checkpoint:
    """Open a Flax ``.msgpack`` or a big_vision ``.npz`` file.

    Raises:
        MissingExtraError: ``msgpack`` is not installed (for ``.msgpack``).
        CorruptCheckpointError: the file does not parse.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "params.npz"
        >>> np.savez(path, **{"params/Dense_0/kernel": np.ones((4, 8), np.float32),
        ...                   "params/Dense_0/bias": np.zeros(8, np.float32)})
        >>> ckpt = open_flax(path, location=str(path))
        >>> ckpt.keys(), ckpt.metas["Dense_0.weight"].shape
        (['Dense_0.weight', 'Dense_0.bias'], (8, 4))
    """
    if path.suffix.lower() == ".npz":
        leaves, closer, fmt = _npz(path)
    else:
        leaves, closer, fmt = _msgpack(path), None, "flax-msgpack"
    tensors: list[SourceTensor] = []
    skipped: list[str] = []
    for names, (shape, dtype, read) in leaves.items():
        if names[0] not in _COLLECTIONS:
            names = ("params", *names)  # big_vision saves the params tree itself
        if names[0] not in _COLLECTIONS:
            skipped.append("/".join(names))
            continue
        key, layout, reason = flax_tensor(names, shape)
        tensors.append(SourceTensor(key, "/".join(names), shape, numpy_dtype(dtype), read, layout, reason))
    origin = Origin(SourceKind.FLAX, location, files=(str(path),), details={"format": fmt})
    from weightsurgery.match.order import looks_sorted

    order = ("sorted by name (a tree that went through jax.tree_util keeps no creation order): module order is "
             "rebuilt from the names" if looks_sorted([t.name for t in tensors]) else
             "the file's order (the order the model created its variables)")
    return build_checkpoint(tensors, origin, framework="flax", order=order,
                            metadata={"skipped": skipped} if skipped else None, closer=closer)


Leaves = dict[tuple[str, ...], tuple[tuple[int, ...], Any, Callable[[], Any]]]


def _npz(path: Path) -> tuple[Leaves, Callable[[], None], str]:
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise CorruptCheckpointError(f"{path} is not a readable .npz file ({exc})", source=path) from exc
    leaves: Leaves = {}
    try:
        for member in zf.namelist():
            if not member.endswith(".npy"):
                continue
            with zf.open(member) as fh:
                version = np.lib.format.read_magic(fh)
                header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = header(fh)  # the header only: no data is read
            names = tuple(p for p in member[: -len(".npy")].split("/") if p)
            leaves[names] = (tuple(shape), dtype, (lambda m=member: _npz_member(zf, m)))
    except (OSError, ValueError) as exc:
        zf.close()
        raise CorruptCheckpointError(f"{path}: a member is not a NumPy array ({exc})", source=path) from exc
    return leaves, zf.close, "big_vision-npz"


def _npz_member(zf: zipfile.ZipFile, member: str) -> np.ndarray:
    with zf.open(member) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def _msgpack(path: Path) -> Leaves:
    msgpack = require("msgpack", "flax", path)

    def ext(code: int, data: bytes) -> Any:
        if code in (_NDARRAY, _NPSCALAR):
            shape, dtype, buffer = msgpack.unpackb(data, raw=False) if code == _NDARRAY else ((), *msgpack.unpackb(data))
            return _Array(tuple(shape), np.dtype(_dtype(dtype)), buffer)
        return msgpack.ExtType(code, data)

    try:
        tree = msgpack.unpackb(path.read_bytes(), ext_hook=ext, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.UnpackException, TypeError) as exc:
        raise CorruptCheckpointError(f"{path} is not a Flax msgpack file ({exc})", source=path) from exc
    if not isinstance(tree, Mapping):
        raise CorruptCheckpointError(f"{path} holds a {type(tree).__name__}, not Flax's tree of variables", source=path)
    return dict(_flatten(tree, ()))


def _dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes  # a bfloat16 array needs ml_dtypes, which comes with every JAX install

        return ml_dtypes.bfloat16
    return name


class _Array:
    """A Flax msgpack array: its header known, its bytes kept until loaded."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, buffer: bytes) -> None:
        self.shape, self.dtype, self.buffer = shape, dtype, buffer

    def read(self) -> np.ndarray:
        return np.frombuffer(self.buffer, dtype=self.dtype).reshape(self.shape)


def _flatten(tree: Mapping[Any, Any], prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    for k, v in tree.items():
        path = (*prefix, str(k))
        if isinstance(v, Mapping) and v.get("__msgpack_chunked_array__"):
            chunks = v["chunks"]
            arr = _Array(tuple(v["shape"]), chunks["0"].dtype, b"".join(chunks[str(i)].buffer for i in range(len(chunks))))
            yield path, (arr.shape, arr.dtype, arr.read)
        elif isinstance(v, Mapping):
            yield from _flatten(v, path)
        elif isinstance(v, _Array):
            yield path, (v.shape, v.dtype, v.read)
