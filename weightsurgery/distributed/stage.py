"""Stage each rank's local shards: read what it holds, nothing more.

Each plan entry is staged in one of three ways, decided from metadata alone so
that every rank decides the same (the schedule is compared across ranks):

``ranged``
    every source key lies in a safetensors file: each rank reads the byte
    ranges of its own source regions (:mod:`weightsurgery.distributed.regions`)
    with the file reader's ranged reads, and counts them.
``memory``
    the source is already in this process (a state dict, a module): each rank
    takes its region of it.
``scatter``
    the source cannot be read by range (a torch pickle), or the adapter needs
    the whole tensor (a position-embedding resample): rank 0 makes the full
    tensor, one tensor at a time, and sends each rank only its region
    (:mod:`~weightsurgery.distributed.scatter`), so rank 0's memory holds at most
    one full tensor beyond its shards, and the others' only their shards.

The staged value of a DTensor target is its local shard alone, a plain tensor
on the host in the target's dtype (:func:`stage_local`), whatever the mesh's
device, as one process stages for a device target (:mod:`weightsurgery._device`):
a GPU mesh holds no staged copy of its shards. Commit copies it into the
existing shard's ``to_local()`` (through page-locked buffers on a GPU, with
the undo copy on the host), or, for a ``meta`` shard, makes it a DTensor with
the target's mesh, placements, global shape and stride on the mesh's device
then, one tensor at a time (:func:`placed`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from weightsurgery._device import staging_value
from weightsurgery.distributed.collectives import ShardSession
from weightsurgery.distributed.placement import Region, full_region, local_region
from weightsurgery.distributed.ranged import RangedReader
from weightsurgery.distributed.regions import Piece, assemble, source_regions
from weightsurgery.distributed.scatter import Scatter
from weightsurgery.errors import RankUnreachableError
from weightsurgery.match.plan import Action, PlanEntry
from weightsurgery.sources.checkpoint import Checkpoint, SourceKind

__all__ = ["Stager", "is_dtensor", "local_device", "local_init", "placed", "stage_local"]

logger = logging.getLogger(__name__)

IN_MEMORY = (SourceKind.STATE_DICT, SourceKind.MODULE)


def is_dtensor(tensor: object) -> bool:
    """Whether ``tensor`` is a DTensor (without importing DTensor where none can exist)."""
    import sys

    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(tensor, mod.DTensor)


def local_device(dst: torch.Tensor) -> torch.device:
    """Where ``dst``'s local shard lives (a ``meta`` shard: the mesh's device)."""
    local = dst.to_local() if is_dtensor(dst) else dst
    if not local.is_meta:
        return local.device
    if not is_dtensor(dst) or dst.device_mesh.device_type == "cpu":
        return torch.device("cpu")
    kind = dst.device_mesh.device_type
    return torch.device(kind, getattr(torch, kind).current_device())


def stage_local(local: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``local``, this rank's region of ``dst``, as ``dst``'s staged value: on the host, in ``dst``'s dtype.

    Never on the device of a GPU mesh (:func:`~weightsurgery._device.staging_value`:
    a value already on the host in that dtype is staged as itself). Commit puts
    it where ``dst`` lives (:func:`placed` for a ``meta`` shard).
    """
    return staging_value(local, dst.dtype, local_device(dst))


def placed(value: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """What a ``meta`` target ``dst`` is replaced by, at commit: a DTensor laid out like ``dst``.

    Its local tensor is the staged ``value`` moved to the mesh's device (no copy
    on a CPU mesh). A plain target, or a value that is a DTensor already, is
    ``value`` itself.
    """
    if not is_dtensor(dst) or is_dtensor(value):
        return value
    from torch.distributed.tensor import DTensor

    local = value.to(local_device(dst))
    return DTensor.from_local(local, dst.device_mesh, dst.placements, run_check=False, shape=dst.shape,
                              stride=dst.stride())


class Stager:
    """Reads and builds the local shards of one plan, on one rank.

    Args:
        session: the ranks' collectives.
        checkpoint: the source.
        current: target key -> the model's tensor (DTensor or plain).
    """

    def __init__(self, session: ShardSession, checkpoint: Checkpoint, current: Mapping[str, torch.Tensor]) -> None:
        self.session = session
        self.checkpoint = checkpoint
        self.current = current
        self.shapes = {k: m.shape for k, m in checkpoint.metas.items()}
        self.reader = RangedReader()
        self._whole_bytes = 0  # tensor bytes rank 0 read whole from a source with no counter of its own (a pickle)
        self._regions: dict[str, Region] = {}

    # ------------------------------------------------------------ the schedule
    def region(self, key: str) -> Region:
        """The region of target ``key`` this rank holds (computed once)."""
        if key not in self._regions:
            self._regions[key] = local_region(self.current[key])
        return self._regions[key]

    def mode(self, entry: PlanEntry) -> str:
        """``"ranged"``, ``"memory"`` or ``"scatter"`` for ``entry`` (see the module docstring)."""
        region = self.region(entry.target)
        if source_regions(entry, region, self.shapes) is None:
            return "memory" if self.checkpoint.origin.kind in IN_MEMORY else "scatter"
        if self.checkpoint.origin.kind in IN_MEMORY:
            return "memory"
        if all(RangedReader.can_read(self.checkpoint.locate(k)) for k in entry.source_keys):
            return "ranged"
        return "scatter"

    # ------------------------------------------------------------ staging
    def stage_all(
        self,
        copies: Sequence[PlanEntry],
        modes: Mapping[str, str],
        fills: Mapping[str, torch.Tensor],
        progress: Callable[[int, int], None] | None,
        total: int,
    ) -> tuple[dict[str, torch.Tensor], BaseException | None]:
        """Stage every entry; never stops half-way through the collectives.

        Returns:
            The staged values, and the first error this rank met (``None`` if none).
            After an error, this rank still takes part in every scatter; after a rank
            stopped answering (:class:`~weightsurgery.errors.RankUnreachableError`), in none.
        """
        staged: dict[str, torch.Tensor] = {}
        error: BaseException | None = None
        fills = dict(fills)
        started = time.monotonic()
        try:
            for entry in copies:  # a whole-tensor adapter's DTensor fill, gathered by every rank before any local step
                fill = fills.get(entry.target)
                if fill is not None and is_dtensor(fill) and source_regions(entry, self.region(entry.target),
                                                                             self.shapes) is None:
                    fills[entry.target] = fill.full_tensor()
        except Exception as exc:  # a DTensor collective: a rank that died
            raise self.session.unreachable("stage", exc, started) from exc
        scattered = [e for e in copies if modes[e.target] == "scatter"]
        scatter = Scatter(self.session, [self.region(e.target) for e in scattered])
        order = {e.target: i for i, e in enumerate(scattered)}
        for i, entry in enumerate(copies):
            dst = self.current[entry.target]
            region = self.region(entry.target)
            fill = fills.get(entry.target)
            try:
                if modes[entry.target] == "scatter":
                    local = self._scatter(scatter, order[entry.target], entry, fill, dst, ok=error is None)
                elif error is None:
                    local = self._local(entry, region, fill, modes[entry.target])
                else:
                    local = None
                if local is not None and error is None:
                    staged[entry.target] = stage_local(local, dst)
                if progress is not None and error is None:
                    progress(i + 1, total)
            except RankUnreachableError as exc:  # the group is broken: no further collective can finish
                error = exc
                break
            except BaseException as exc:  # held (an interrupt too): the other ranks still wait on our scatters
                error = error or exc
        self.session.stats.bytes_read += self.reader.bytes_read + self._whole_bytes
        return staged, error

    def _local(self, entry: PlanEntry, region: Region, fill: torch.Tensor | None, mode: str) -> torch.Tensor:
        pieces = source_regions(entry, region, self.shapes)
        if pieces is None:  # a whole-tensor adapter on a source in memory: every rank runs it
            return region.take(self._whole(entry, fill))
        read = [self._read(p, mode) for p in pieces]
        return assemble(entry, region, pieces, read, _local_fill(fill, region))

    def _read(self, piece: Piece, mode: str) -> torch.Tensor:
        if mode == "memory":
            tensor = self.checkpoint.load(piece.key)
            if is_dtensor(tensor):
                raise TypeError(
                    f"source tensor {piece.key!r} is itself a DTensor (a sharded model as the source); pass its full "
                    "state dict (torch.distributed.checkpoint.state_dict.get_model_state_dict(model, "
                    "options=StateDictOptions(full_state_dict=True))) or save it with torch.distributed.checkpoint"
                )
            return piece.region.take(tensor)
        header, stored = self.checkpoint.locate(piece.key)  # type: ignore[misc]
        return self.reader.read(header, stored, self.checkpoint.metas[piece.key], piece.region)

    def _scatter(
        self, scatter: Scatter, i: int, entry: PlanEntry, fill: torch.Tensor | None, dst: torch.Tensor, *, ok: bool
    ) -> torch.Tensor | None:
        """Rank 0 makes the full tensor; each rank receives its region (``None``: rank 0 failed to make it)."""
        plain = entry.action is Action.LOAD
        meta = self.checkpoint.metas[entry.source_keys[0]] if plain else None
        shape = meta.shape if meta is not None else tuple(dst.shape)
        dtype = meta.dtype if meta is not None else dst.dtype
        full = None
        if self.session.rank == 0 and ok:
            try:
                if plain:
                    full = self._load_whole(entry.source_keys[0])
                else:
                    full = self._whole(entry, fill).to(dtype)
                if tuple(full.shape) != tuple(shape) or full.dtype != dtype:
                    raise ValueError(f"{entry.target}: the source gave {tuple(full.shape)} {full.dtype}, "
                                     f"its header says {tuple(shape)} {dtype}")
            except Exception:
                scatter.send(i, None, dtype)  # tell the others, then hold the error
                raise
        return scatter.send(i, full, dtype)

    def _whole(self, entry: PlanEntry, fill: torch.Tensor | None) -> torch.Tensor:
        """The full target tensor of an adapted entry (every source read whole)."""
        from weightsurgery.adapt import run_adapter

        tensors = [self._load_whole(k) for k in entry.source_keys]
        shape = tuple(self.current[entry.target].shape)
        return run_adapter(entry.adapter or "", tensors, shape, entry.adapter_args, fill=fill, key=entry.target)

    def _load_whole(self, key: str) -> torch.Tensor:
        """Source tensor ``key``, read whole (on rank 0), its bytes counted in ``bytes_read``.

        A safetensors shard's own counter counts the read; a pickle's tensor is
        counted here, by its bytes.
        """
        located = self.checkpoint.locate(key)
        if located is not None:
            self.reader.track(located[0])
        tensor = self.checkpoint.load(key)
        if located is None and self.checkpoint.origin.kind not in IN_MEMORY:
            self._whole_bytes += tensor.numel() * tensor.element_size()
        return tensor


def _local_fill(fill: torch.Tensor | None, region: Region) -> torch.Tensor | None:
    """The rows of ``fill`` (a full tensor, or a DTensor laid out like the target) this rank holds."""
    if fill is None:
        return None
    if is_dtensor(fill):
        return fill.to_local()
    return region.take(fill) if tuple(fill.shape) == region.shape else fill


def local_init(value: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """A leftover's full init value as ``dst``'s staged value: its region, on the host (:func:`stage_local`).

    The full value is computed the same on every rank (seeded per key), so the
    full tensor after sharding is the same for any world size.
    """
    region = local_region(dst) if is_dtensor(dst) else full_region(dst.shape)
    if is_dtensor(value):
        return value
    return stage_local(region.take(value), dst)
