"""``torch.distributed.checkpoint`` (DCP) folders: a ``.metadata`` file beside ``*.distcp`` files.

``dcp.save`` writes each rank's shards to its own ``.distcp`` file and one
``.metadata`` file naming every tensor's global shape, dtype and the chunks it
was saved in. That metadata is a pickle: it is read with an unpickler that
knows only DCP's own metadata classes, torch dtypes and sizes, and refuses
anything else (:class:`~weightsurgery.errors.UnsafeCheckpointError`), so
``weights_only`` holds for DCP too. The chunks themselves are read by DCP's
``FileSystemReader`` (torch's own reader, with ``weights_only=True``).

Keys are DCP's flattened names (``model.layer.weight`` for an app state
``{"model": ..., "optim": ...}``); optimizer state (``optim.``, ``optimizer.``...)
is never a source of weights and is dropped (``origin.details["optimizer_state"]``
counts it); the matcher's prefix strategy strips ``model.``. A tensor is read
whole with :meth:`Checkpoint.load`, or one box of it (a sharded target's
region) with :meth:`DcpReader.read_box`, which reads only the saved chunks that overlap it.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from weightsurgery.errors import CorruptCheckpointError, UnsafeCheckpointError
from weightsurgery.sources import nested
from weightsurgery.sources.checkpoint import Checkpoint, Origin, SourceKind, TensorMeta

__all__ = ["OPTIMIZER_PREFIXES", "DcpReader", "is_dcp_folder", "open_dcp"]

OPTIMIZER_PREFIXES = ("optim.", "optimizer.", "optimizers.", "optimizer_states.", "optim_state.")
"""Top-level app-state names whose tensors are optimizer state, not weights."""

_ALLOWED = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "StorageMeta", "ChunkStorageMetadata", "BytesStorageMetadata",
                                              "TensorProperties", "TensorStorageMetadata", "MetadataIndex",
                                              "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


def is_dcp_folder(path: Path) -> bool:
    """Whether ``path`` is a DCP checkpoint folder (it holds a ``.metadata`` file)."""
    return path.is_dir() and (path / ".metadata").is_file()


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()) or (module == "torch" and (name == "Size" or _is_dtype(name))):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def _is_dtype(name: str) -> bool:
    return isinstance(getattr(torch, name, None), torch.dtype)


def _read_metadata(folder: Path) -> Any:
    path = folder / ".metadata"
    try:
        with open(path, "rb") as fh:
            return _MetadataUnpickler(fh).load()
    except pickle.UnpicklingError as exc:
        if str(exc).count(".") and " " not in str(exc):
            raise UnsafeCheckpointError(
                f"{path} names {exc}, which a DCP checkpoint's metadata never holds: it would run code; "
                "refusing to load it (re-save the checkpoint with torch.distributed.checkpoint.save)",
                source=path,
            ) from exc
        raise CorruptCheckpointError(f"{path} is not DCP metadata ({exc}); re-save the checkpoint", source=path) from exc
    except (EOFError, ValueError, TypeError, AttributeError) as exc:
        raise CorruptCheckpointError(f"{path} is not DCP metadata ({exc}); re-save the checkpoint", source=path) from exc


class DcpReader:
    """Reads boxes of a DCP checkpoint's tensors, counting the bytes of the saved chunks it reads.

    Only the chunks that overlap a box are read (DCP's own resharding
    arithmetic, ``create_read_items_for_chunk_list``, and its ``FileSystemReader``).

    Attributes:
        bytes_read: bytes of the saved chunks read so far.
    """

    def __init__(self, folder: Path, metadata: Any) -> None:
        from torch.distributed.checkpoint import FileSystemReader

        class Reader(FileSystemReader):  # the metadata we read safely, never pickle.load's
            def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
                return metadata

        self.metadata = metadata
        self.reader = Reader(str(folder))
        self.reader.set_up_storage_reader(metadata, True)
        self.bytes_read = 0

    def read_box(self, fqn: str, box: Sequence[range]) -> torch.Tensor:
        """The box ``box`` (one contiguous ``range`` per dim) of tensor ``fqn``, as a new tensor."""
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
        from torch.distributed.checkpoint.planner import LoadPlan
        from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

        md = self.metadata.state_dict_metadata[fqn]
        out = torch.empty(tuple(len(r) for r in box), dtype=md.properties.dtype)
        if out.numel() == 0:
            return out
        chunk = ChunkStorageMetadata(offsets=torch.Size(r.start for r in box), sizes=out.shape)
        items = create_read_items_for_chunk_list(fqn, md, [chunk])
        self.reader.read_data(LoadPlan(items), _Into(out)).wait()
        self.bytes_read += sum(self.reader.storage_data[i].length for i in {it.storage_index for it in items})
        return out


class _Into:
    """The part of DCP's ``LoadPlanner`` that ``FileSystemReader.read_data`` calls: write into ``out``."""

    def __init__(self, out: torch.Tensor) -> None:
        self.out = out

    def resolve_tensor(self, read_item: Any) -> torch.Tensor:
        out = self.out
        for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            out = out.narrow(dim, start, length)
        return out

    def commit_tensor(self, read_item: Any, tensor: torch.Tensor) -> None:
        """Nothing to do: ``resolve_tensor`` gave a view of the output."""


def open_dcp(folder: Path, *, key: str | None, location: str | None = None) -> Checkpoint:
    """Open a DCP checkpoint folder lazily: metadata now, chunks when a tensor is loaded.

    Args:
        folder: the folder ``torch.distributed.checkpoint.save`` wrote.
        key: a key prefix to select and strip (``"model"``), or ``None``.
        location: what the user named, for ``origin.location``.

    Returns:
        A :class:`Checkpoint` of kind ``DCP``; ``locate(key)`` gives its :class:`DcpReader`.

    Raises:
        CorruptCheckpointError: the metadata is not DCP's.
        UnsafeCheckpointError: the metadata pickle names anything but DCP's classes.
        UnknownContainerError: ``key`` is not a key prefix.

    Example:
        >>> import tempfile, pathlib, torch
        >>> import torch.distributed.checkpoint as dcp
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = dcp.save({"model": {"w": torch.arange(6.0).reshape(2, 3)}}, checkpoint_id=d, no_dist=True)
        >>> ckpt = open_dcp(d, key=None)
        >>> ckpt.origin.kind.value, ckpt.keys(), ckpt.load("model.w")[1].tolist()
        ('dcp', ['model.w'], [3.0, 4.0, 5.0])
        >>> reader, fqn = ckpt.locate("model.w")
        >>> reader.read_box(fqn, [range(0, 2), range(1, 3)]).tolist()
        [[1.0, 2.0], [4.0, 5.0]]
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = _read_metadata(folder)
    entries = getattr(metadata, "state_dict_metadata", None)
    if not isinstance(entries, dict):
        raise CorruptCheckpointError(f"{folder / '.metadata'} holds no DCP state-dict metadata", source=folder)
    tensors = {fqn: md for fqn, md in entries.items() if isinstance(md, TensorStorageMetadata)}
    optimizer = [k for k in tensors if k.startswith(OPTIMIZER_PREFIXES)]
    metas = {k: TensorMeta(tuple(md.size), md.properties.dtype) for k, md in tensors.items() if k not in optimizer}
    renames = {k: k for k in metas} if key is None else nested.select_prefix(metas, key, source=folder)
    reader = DcpReader(folder, metadata)

    def load(name: str) -> torch.Tensor:
        return reader.read_box(renames[name], [range(n) for n in metas[renames[name]].shape])

    details: dict[str, Any] = {"optimizer_state": len(optimizer)} if optimizer else {}
    if key is not None:
        details["key_prefix"] = key + "."
    origin = Origin(SourceKind.DCP, str(folder) if location is None else location,
                    files=tuple(str(p) for p in sorted(folder.glob("*.distcp"))),
                    container=() if key is None else (key,), details=details)
    return Checkpoint({new: metas[old] for new, old in renames.items()}, load, origin, owned=True,
                      locate=lambda name: (reader, renames[name]))
