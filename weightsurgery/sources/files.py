"""Local files and folders: pick the weights file, then open it by format.

A file is opened by what it is:

* ``*.index.json`` (or any ``.json``): a shard index, see :mod:`~weightsurgery.sources.sharded`.
* ``.safetensors``, or any file whose bytes start like one: see
  :mod:`~weightsurgery.sources.safetensors_file`.
* ``.keras .h5 .onnx .msgpack .npz .gguf``: another framework's file, see
  :mod:`~weightsurgery.sources.frameworks` (TensorFlow files are refused with how to convert them).
* anything else (``.pth .pt .bin .ckpt``...): a torch pickle, see
  :mod:`~weightsurgery.sources.pickles`.

A folder is searched, not recursively, in this order (:data:`FOLDER_PRIORITY`):
``model.safetensors``, ``model.safetensors.index.json``, ``pytorch_model.bin``,
``pytorch_model.bin.index.json``. Failing those, the checkpoint files in it
(:data:`CHECKPOINT_SUFFIXES` and ``*.index.json``, less the shards an index
names) are taken if exactly one is safetensors (a file or an index), or, with no
safetensors at all, if exactly one remains. Anything else is ambiguous and the
user passes the file itself. The origin of a folder has kind ``FOLDER``, its
``location`` the folder, ``details["file"]`` the chosen file's name and
``details["format"]`` that file's own kind.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from weightsurgery.errors import AmbiguousContainerError, CorruptCheckpointError, SourceNotFoundError
from weightsurgery.sources.checkpoint import Checkpoint, SourceKind
from weightsurgery.sources.dcp import is_dcp_folder, open_dcp
from weightsurgery.sources.frameworks import check_folder, open_framework
from weightsurgery.sources.pickles import open_pickle
from weightsurgery.sources.safetensors_file import open_safetensors
from weightsurgery.sources.sharded import open_index, read_index

__all__ = ["CHECKPOINT_SUFFIXES", "FOLDER_PRIORITY", "choose_file", "open_path"]

logger = logging.getLogger(__name__)

FOLDER_PRIORITY: tuple[str, ...] = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""File names a folder is searched for first, best first."""

CHECKPOINT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
"""Suffixes of the files a folder's fallback search considers."""

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"


def open_path(path: Path, *, key: str | None, weights_only: bool) -> Checkpoint:
    """Open a checkpoint file or folder lazily.

    Args:
        path: a weights file, a shard index, or a folder holding one.
        key: for pickles, the nested container to take (``"model_ema"``,
            ``"model.module"``); for every format, a key prefix to select and strip.
        weights_only: refuse pickles that need code; ``False`` opts in, loudly.

    Returns:
        A :class:`Checkpoint`; ``origin.location`` is ``path`` and ``origin.files``
        the file(s) read.

    Raises:
        SourceNotFoundError: ``path``, or a shard its index names, does not exist,
            or a folder holds no checkpoint file.
        AmbiguousContainerError: a folder holds several unrelated checkpoint files,
            or a pickle several equally ranked state dicts.
        CorruptCheckpointError: the file is empty, truncated or malformed.
        UnsafeCheckpointError: a pickle needs code and ``weights_only`` is true.
        EmptyCheckpointError: the file holds no tensors.
        UnknownContainerError: ``key`` names nothing in the file.

    Example:
        >>> import tempfile, pathlib, torch
        >>> from safetensors.torch import save_file
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> save_file({"fc.weight": torch.ones(2, 2)}, d / "model.safetensors")
        >>> with open_path(d, key=None, weights_only=True) as ckpt:
        ...     ckpt.origin.kind.value, ckpt.origin.details["file"], ckpt.keys()
        ('folder', 'model.safetensors', ['fc.weight'])
    """
    path = Path(path)
    if not path.exists():
        raise SourceNotFoundError(f"checkpoint {path} does not exist; check the path", source=path)
    if not path.is_dir():
        return _open_file(path, key=key, weights_only=weights_only, location=str(path))
    if is_dcp_folder(path):  # torch.distributed.checkpoint.save wrote it
        return open_dcp(path, key=key)
    check_folder(path)
    chosen = choose_file(path)
    logger.info("using %s from folder %s", chosen.name, path)
    ckpt = _open_file(chosen, key=key, weights_only=weights_only, location=str(path))
    ckpt.origin = dataclasses.replace(
        ckpt.origin,
        kind=SourceKind.FOLDER,
        details={**ckpt.origin.details, "file": chosen.name, "format": ckpt.origin.kind.value},
    )
    return ckpt


def choose_file(folder: Path) -> Path:
    """Pick the weights file in ``folder`` by the module's documented priority.

    Args:
        folder: a directory.

    Returns:
        The file to open.

    Raises:
        SourceNotFoundError: the folder holds no checkpoint file.
        AmbiguousContainerError: several unrelated checkpoint files remain.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("pytorch_model.bin", "model.safetensors", "config.json"):
        ...     _ = (d / name).write_bytes(b"")
        >>> choose_file(d).name
        'model.safetensors'
    """
    for name in FOLDER_PRIORITY:
        if (folder / name).is_file():
            return folder / name
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    indexes = [p for p in files if p.name.endswith(".index.json")]
    shards: set[str] = set()
    for index in indexes:
        try:
            shards.update(read_index(index)[0].values())
        except CorruptCheckpointError:
            logger.debug("%s is not a shard index; ignoring it when choosing a file", index)
    candidates = [
        p
        for p in files
        if p.name not in shards and (p in indexes or p.suffix.lower() in CHECKPOINT_SUFFIXES)
    ]
    safetensors = [p for p in candidates if p.name.endswith((".safetensors", ".safetensors.index.json"))]
    if len(safetensors) == 1:
        return safetensors[0]
    if not safetensors and len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise SourceNotFoundError(
            f"folder {folder} holds no checkpoint file: looked for {', '.join(FOLDER_PRIORITY)}, then any "
            f"{', '.join('*' + s for s in CHECKPOINT_SUFFIXES)} or *.index.json; pass the weights file itself",
            source=folder,
        )
    names = [p.name for p in (safetensors or candidates)]
    raise AmbiguousContainerError(
        f"folder {folder} holds several checkpoint files and none is named {FOLDER_PRIORITY[0]}: "
        f"{', '.join(names)}; pass the one you want, e.g. {folder / names[0]}",
        source=folder,
        candidates=names,
    )


def _open_file(path: Path, *, key: str | None, weights_only: bool, location: str) -> Checkpoint:
    if path.suffix.lower() == ".json":
        return open_index(path, key=key, weights_only=weights_only, location=location)
    if _is_safetensors(path):
        return open_safetensors(path, key=key, location=location)
    other = open_framework(path, location=location)  # Keras, ONNX, Flax, GGUF; imports nothing for a pickle
    if other is not None:
        return other
    return open_pickle(path, key=key, weights_only=weights_only, location=location)


def _is_safetensors(path: Path) -> bool:
    """By suffix, else by its first bytes: an 8-byte header length, then ``{``."""
    if path.suffix.lower() == ".safetensors":
        return True
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head.startswith((_ZIP_MAGIC, _PICKLE_PROTO)):
        return False
    return len(head) == 9 and head[8:9] == b"{"
