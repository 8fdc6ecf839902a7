"""Sharded checkpoints: an ``*.index.json`` whose ``weight_map`` names each key's shard.

Both Hugging Face layouts are read: ``model.safetensors.index.json`` over
safetensors shards (kind ``SHARDED``, each shard opened lazily through its
header) and ``pytorch_model.bin.index.json`` over torch pickles (kind
``PICKLE``, each shard opened lazily by :func:`~weightsurgery.sources.pickles.read_pickle`). The index is the
authority: a key reads from the shard it names, a key the index names but its
shard lacks is an error, and tensors a shard holds that the index does not name
are ignored.

Keys come in shard order, and in each shard's own order. ``Checkpoint.metadata``
holds ``"index"`` (the index's ``metadata`` object, e.g. ``{"total_size": ...}``)
and, for safetensors shards, ``"safetensors"`` (the first shard's header
metadata).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from weightsurgery.errors import CorruptCheckpointError, SourceNotFoundError
from weightsurgery.sources import nested
from weightsurgery.sources.checkpoint import Checkpoint, Origin, SourceKind, TensorMeta
from weightsurgery.sources.pickles import PickleFile, read_pickle
from weightsurgery.sources.safetensors_file import SafetensorsHeader, open_header

__all__ = ["MAX_INDEX_BYTES", "open_index", "read_index"]

logger = logging.getLogger(__name__)

MAX_INDEX_BYTES = 256 << 20
"""The largest shard index read (the largest real ones are a few megabytes)."""


def read_index(index: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Read a shard index.

    Args:
        index: an ``*.index.json`` file.

    Returns:
        ``(weight_map, metadata)``: key -> shard file name, and the index's
        ``metadata`` object (``{}`` when absent).

    Raises:
        CorruptCheckpointError: the file is not JSON, not a shard index, over
            :data:`MAX_INDEX_BYTES`, or names a shard outside its folder.

    Example:
        >>> import tempfile, pathlib, json
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "model.safetensors.index.json"
        >>> _ = p.write_text(json.dumps({"weight_map": {"w": "model-00001-of-00001.safetensors"}}))
        >>> read_index(p)
        ({'w': 'model-00001-of-00001.safetensors'}, {})
    """
    size = index.stat().st_size
    if size > MAX_INDEX_BYTES:
        raise CorruptCheckpointError(
            f"{index} is {size} bytes, over the {MAX_INDEX_BYTES}-byte limit for a shard index; "
            "re-download it, or pass a weights file instead",
            source=index,
        )
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptCheckpointError(
            f"{index} is not valid JSON ({exc}); re-download it, or pass a weights file instead", source=index
        ) from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CorruptCheckpointError(
            f'{index} is not a shard index: it has no "weight_map" object of key -> shard file; '
            "pass the weights file (.safetensors, .pth, .bin) or its folder instead",
            source=index,
        )
    bad = sorted(  # judged once per shard file, not once per key: an MoE index names 100k keys in a few files
        v for v in set(weight_map.values()) if not v.strip(". /") or "\0" in v or Path(v).is_absolute() or ".." in Path(v).parts
    )
    if bad:
        raise CorruptCheckpointError(
            f"{index} names shards outside its folder ({', '.join(bad)}); shards must sit beside the index",
            source=index,
        )
    metadata = data.get("metadata")
    return dict(weight_map), dict(metadata) if isinstance(metadata, dict) else {}


def open_index(index: Path, *, key: str | None, weights_only: bool, location: str | None = None) -> Checkpoint:
    """Open a sharded checkpoint through its index.

    Args:
        index: the ``*.index.json`` file; shards sit beside it.
        key: a key prefix to select and strip (as for a flat safetensors file),
            or ``None`` for every tensor.
        weights_only: for pickle shards, see :func:`~weightsurgery.sources.pickles.read_pickle`.
        location: what the user named, for ``origin.location``; defaults to ``index``.

    Returns:
        A :class:`Checkpoint` whose ``origin.files`` lists every shard.

    Raises:
        SourceNotFoundError: a shard the index names is missing.
        CorruptCheckpointError: the index or a shard is malformed, a shard lacks a key,
            or a shard resolves (through a symlink) outside the index's folder.
        UnsafeCheckpointError: a pickle shard needs code and ``weights_only`` is true.
        UnknownContainerError: ``key`` is not a key prefix of the checkpoint.

    Example:
        >>> import tempfile, pathlib, json, torch
        >>> from safetensors.torch import save_file
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> save_file({"a": torch.ones(1)}, d / "m-1.safetensors")
        >>> save_file({"b": torch.zeros(2)}, d / "m-2.safetensors")
        >>> _ = (d / "m.safetensors.index.json").write_text(
        ...     json.dumps({"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}))
        >>> with open_index(d / "m.safetensors.index.json", key=None, weights_only=True) as ckpt:
        ...     ckpt.origin.kind.value, ckpt.keys(), ckpt.load("b").tolist()
        ('sharded-safetensors', ['a', 'b'], [0.0, 0.0])
    """
    weight_map, index_meta = read_index(index)
    shards = list(dict.fromkeys(weight_map.values()))
    absent = [name for name in shards if not (index.parent / name).is_file()]
    if absent:
        raise SourceNotFoundError(
            f"{index} names shards that are not in {index.parent}: {', '.join(absent)}; "
            "download every shard beside the index",
            source=index,
        )
    _check_contained(index, shards)
    headers: list[SafetensorsHeader] = []
    pickled: list[PickleFile] = []
    metas: dict[str, TensorMeta] = {}
    readers: dict[str, Callable[[str], torch.Tensor]] = {}
    located: dict[str, SafetensorsHeader] = {}  # key -> the safetensors shard it is read from
    lacking: list[str] = []
    named: dict[str, list[str]] = {name: [] for name in shards}  # shard -> the keys the index maps to it
    for k, shard in weight_map.items():
        named[shard].append(k)
    try:
        for name in shards:
            path = index.parent / name
            if name.endswith(".safetensors"):
                header = open_header(path)
                headers.append(header)
                shard_metas, read = header.metas, header.read
            else:
                opened = read_pickle(path, weights_only=weights_only)
                pickled.append(opened)
                tensors = _pickle_shard(path, opened.obj)
                shard_metas, read = {k: TensorMeta.of(t) for k, t in tensors.items()}, _reader(tensors, opened)
            for k, meta in shard_metas.items():
                if weight_map.get(k) == name:
                    metas[k] = meta
                    readers[k] = read
                    if name.endswith(".safetensors"):
                        located[k] = headers[-1]
                else:
                    logger.debug("ignoring %r in shard %s: the index maps it elsewhere or not at all", k, name)
            lacking += [f"{k} (in {name})" for k in named[name] if k not in metas]
        if lacking:
            raise CorruptCheckpointError(
                f"{index} maps keys to shards that do not hold them: {', '.join(lacking[:20])}; "
                "the shards and the index do not belong together: re-download them all",
                source=index,
            )
        renames = {k: k for k in metas} if key is None else nested.select_prefix(metas, key, source=index)
    except BaseException:
        _close(headers, pickled)
        raise

    safetensors = len(headers) == len(shards)
    origin = Origin(
        SourceKind.SHARDED if safetensors else SourceKind.PICKLE,
        str(index) if location is None else location,
        files=tuple(str(index.parent / name) for name in shards),
        container=() if key is None else (key,),
        details={"shards": len(shards), **({} if key is None else {"key_prefix": key + "."})},
    )
    metadata: dict[str, Any] = {"index": index_meta}
    if headers:
        metadata["safetensors"] = headers[0].metadata

    def load(name: str) -> torch.Tensor:
        original = renames[name]
        return readers[original](original)

    def locate(name: str) -> tuple[SafetensorsHeader, str] | None:
        original = renames.get(name)
        return (located[original], original) if original in located else None

    logger.debug("opened %d shards of %s: %d tensors", len(shards), index, len(renames))
    return Checkpoint(
        {new: metas[old] for new, old in renames.items()},
        load,
        origin,
        metadata=metadata,
        closer=lambda: _close(headers, pickled),
        owned=all(opened.lazy for opened in pickled),
        locate=locate,
    )


def _check_contained(index: Path, shards: list[str]) -> None:
    """Every shard's real path (symlinks resolved) lies in the index's folder, or beside the index's own real file.

    The second place is a Hugging Face cache: a snapshot's files are symlinks into one ``blobs/`` folder.
    """
    folders = {index.parent.resolve(), index.resolve().parent}
    real = {name: (index.parent / name).resolve() for name in shards}
    outside = [f"{name} -> {path}" for name, path in real.items() if not any(map(path.is_relative_to, folders))]
    if outside:
        raise CorruptCheckpointError(
            f"{index} names shards that resolve outside its folder {index.parent}: {', '.join(outside[:5])}; "
            "a shard must be a file beside the index, not a link to elsewhere",
            source=index,
        )


def _pickle_shard(path: Path, obj: object) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CorruptCheckpointError(
            f"shard {path} holds a {type(obj).__name__}, not a flat state dict; re-download it", source=path
        )
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _reader(tensors: dict[str, torch.Tensor], opened: PickleFile) -> Callable[[str], torch.Tensor]:
    def read(key: str) -> torch.Tensor:
        return opened.materialize(tensors[key]).detach()

    return read


def _close(headers: list[SafetensorsHeader], pickled: list[PickleFile]) -> None:
    for header in headers:
        header.close()
    for opened in pickled:
        opened.close()
