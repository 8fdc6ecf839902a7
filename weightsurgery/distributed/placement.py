"""Which elements of a global tensor a rank holds: placement math on metadata.

A DTensor's local shard is a box of the global tensor: along each tensor dim,
a set of global indices (:class:`Region`). ``Shard(d)`` keeps a ``torch.chunk``
piece of dim ``d`` (so an uneven split gives the last ranks fewer rows, or
none: FSDP2's padding is not data); two mesh dims sharding one tensor dim nest;
``_StridedShard`` (FSDP2 over a tensor-parallel dim) keeps interleaved indices;
``Replicate`` keeps the whole dim. The sizes and offsets come from torch's own
``Shard.local_shard_size_and_offset``, so a region always agrees with the
layout DTensor gives the tensor.

A region is computed from the mesh coordinate alone: no collective, no data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from weightsurgery.errors import ShardedTransferError

__all__ = ["Region", "full_region", "local_region", "placement_region"]

Index = range | tuple[int, ...]
"""The global indices held along one dim, in local order: a ``range`` when contiguous."""


@dataclass(frozen=True)
class Region:
    """The part of a global tensor one rank holds.

    Attributes:
        shape: the global shape.
        index: per dim, the global indices held, in the order of the local tensor.

    Example:
        >>> r = Region((4, 3), (range(2, 4), range(0, 3)))
        >>> r.local_shape, r.numel
        ((2, 3), 6)
        >>> r.take(torch.arange(12).reshape(4, 3)).tolist()
        [[6, 7, 8], [9, 10, 11]]
        >>> r.runs(itemsize=4)  # one contiguous byte run: rows 2..3
        [(24, 24)]
    """

    shape: tuple[int, ...]
    index: tuple[Index, ...]

    @property
    def local_shape(self) -> tuple[int, ...]:
        return tuple(len(i) for i in self.index)

    @property
    def numel(self) -> int:
        return math.prod(self.local_shape)

    @property
    def is_full(self) -> bool:
        return all(isinstance(i, range) and i == range(n) for i, n in zip(self.index, self.shape))

    def with_dim(self, dim: int, index: Index, size: int) -> Region:
        """The same region with dim ``dim`` replaced (a source of another size along it)."""
        shape = self.shape[:dim] + (size,) + self.shape[dim + 1 :]
        return Region(shape, self.index[:dim] + (_compact(index),) + self.index[dim + 1 :])

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """This region of ``full`` (a tensor of :attr:`shape`) as a new contiguous tensor."""
        if tuple(full.shape) != self.shape:
            raise ValueError(f"region of a {self.shape} tensor taken from one of shape {tuple(full.shape)}")
        out = full
        for dim, idx in enumerate(self.index):
            if isinstance(idx, range):
                out = out.narrow(dim, idx.start, len(idx)) if len(idx) != self.shape[dim] else out
            else:
                out = out.index_select(dim, torch.tensor(idx, dtype=torch.long, device=full.device))
        return out.clone(memory_format=torch.contiguous_format)

    def runs(self, *, itemsize: int) -> list[tuple[int, int]]:
        """Byte runs ``(offset, nbytes)`` of this region in a row-major tensor, in local order.

        Consecutive runs that touch are merged, so a ``Shard(0)`` region is one run
        and a ``Shard(1)`` region of a matrix one run per row.
        """
        if self.numel == 0:
            return []
        strides = [itemsize] * len(self.shape)
        for d in range(len(self.shape) - 2, -1, -1):
            strides[d] = strides[d + 1] * self.shape[d + 1]
        # the innermost dims held whole form one block; the dim before them is walked in contiguous pieces
        inner = len(self.shape)
        while inner > 0 and isinstance(self.index[inner - 1], range) and self.index[inner - 1] == range(self.shape[inner - 1]):
            inner -= 1
        if inner == 0:
            return [(0, math.prod(self.shape) * itemsize)]
        block = strides[inner - 1]
        pieces = _pieces(self.index[inner - 1])
        runs: list[tuple[int, int]] = []
        for outer in _product(self.index[: inner - 1]):
            base = sum(i * s for i, s in zip(outer, strides))
            for start, length in pieces:
                offset, nbytes = base + start * block, length * block
                if runs and runs[-1][0] + runs[-1][1] == offset:
                    runs[-1] = (runs[-1][0], runs[-1][1] + nbytes)
                else:
                    runs.append((offset, nbytes))
        return runs


def full_region(shape: Sequence[int]) -> Region:
    """The whole tensor (a plain tensor, or a replicated one)."""
    return Region(tuple(shape), tuple(range(n) for n in shape))


def placement_region(
    shape: Sequence[int], mesh_shape: Sequence[int], coordinate: Sequence[int], placements: Sequence[object]
) -> Region:
    """The region a rank at ``coordinate`` of a mesh of ``mesh_shape`` holds under ``placements``.

    Example:
        >>> from torch.distributed.tensor import Replicate, Shard
        >>> placement_region((7, 4), (2,), (1,), [Shard(0)]).index   # torch.chunk: 4 rows, then 3
        (range(4, 7), range(0, 4))
        >>> placement_region((3, 8), (2, 2), (1, 0), [Shard(0), Shard(1)]).index
        (range(2, 3), range(0, 4))
        >>> placement_region((3,), (4,), (3,), [Shard(0)]).index    # uneven: the last rank holds nothing
        (range(3, 3),)
        >>> placement_region((2, 2), (2,), (0,), [Replicate()]).is_full
        True
    """
    from torch.distributed.tensor import Partial, Shard

    strided = _strided_type()
    index: list[Index] = [range(n) for n in shape]
    for mesh_dim, p in enumerate(placements):
        n, coord = mesh_shape[mesh_dim], coordinate[mesh_dim]
        if isinstance(p, Partial):
            raise ShardedTransferError(
                f"a parameter placed as {p} (a pending reduction) has no values of its own to load; "
                "redistribute it to Shard or Replicate before the transfer",
                failures={},
            )
        if strided is not None and isinstance(p, strided):
            current = index[p.dim]
            size, offsets = p.local_shard_size_and_offset(len(current), n, coord, offset_mode=_all_offsets())
            index[p.dim] = _compact([current[o] for o in (offsets or [])][:size])
        elif isinstance(p, Shard):
            current = index[p.dim]
            size, offset = Shard.local_shard_size_and_offset(len(current), n, coord)
            index[p.dim] = _compact(current[offset : offset + size])
    return Region(tuple(shape), tuple(index))


def local_region(tensor: torch.Tensor) -> Region:
    """The region of its global tensor that this rank's local shard of ``tensor`` holds.

    A plain tensor is held whole.
    """
    from torch.distributed.tensor import DTensor

    if not isinstance(tensor, DTensor):
        return full_region(tensor.shape)
    mesh = tensor.device_mesh
    coordinate = mesh.get_coordinate()
    if coordinate is None:
        raise ShardedTransferError(
            f"this rank is not part of the device mesh {mesh} a parameter lives on; call transfer() on the "
            "ranks of the model's mesh only",
            failures={},
        )
    return placement_region(tuple(tensor.shape), tuple(mesh.shape), coordinate, tensor.placements)


def _compact(index: Sequence[int] | range) -> Index:
    if isinstance(index, range) and index.step == 1:
        return index
    values = tuple(int(i) for i in index)
    if values and values == tuple(range(values[0], values[0] + len(values))):
        return range(values[0], values[0] + len(values))
    return values if values else range(0)


def _pieces(index: Index) -> list[tuple[int, int]]:
    """Contiguous pieces ``(start, length)`` of one dim's indices, in order."""
    if isinstance(index, range):
        return [(index.start, len(index))] if len(index) else []
    pieces: list[tuple[int, int]] = []
    for i in index:
        if pieces and pieces[-1][0] + pieces[-1][1] == i:
            pieces[-1] = (pieces[-1][0], pieces[-1][1] + 1)
        else:
            pieces.append((i, 1))
    return pieces


def _product(indices: Sequence[Index]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for idx in indices:
        out = [prefix + (i,) for prefix in out for i in idx]
    return out


def _strided_type() -> type | None:
    try:
        from torch.distributed.tensor.placement_types import _StridedShard
    except ImportError:  # pragma: no cover - older torch
        return None
    return _StridedShard


def _all_offsets() -> object:
    from torch.distributed.tensor.placement_types import _StridedShardOffsetMode

    return _StridedShardOffsetMode.ALL
