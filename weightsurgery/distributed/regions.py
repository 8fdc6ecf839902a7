"""Which source elements make a target region, for the adapters that work piece by piece.

A plain load takes the same region of its source. Adapters that are row-wise
or elementwise map a target region to source regions without the whole
tensor: a head subset or reorder takes the source rows it names (new rows come
from the fill), a fused ``qkv`` takes each rank's rows from the parts they lie
in, a split takes its rows out of the fused source, a transpose reads the
permuted region. :func:`source_regions` says, for one plan entry, which region
of each source key to read; :func:`assemble` makes the local target tensor from
what was read. Other adapters (a position-embedding resample) need the whole
tensor and return ``None``: rank 0 computes them and sends each rank its region
(:mod:`~weightsurgery.distributed.scatter`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from weightsurgery.distributed.placement import Region
from weightsurgery.match.plan import Action, PlanEntry

__all__ = ["Piece", "assemble", "source_regions"]

NEW_ROW = -1


@dataclass(frozen=True)
class Piece:
    """One source read for a target region.

    Attributes:
        key: the source key.
        region: the region of the source tensor to read.
        dim: the target dim the piece is placed along (fused parts, head rows).
        positions: the local positions along ``dim`` it fills, or ``None`` for all of the region.
    """

    key: str
    region: Region
    dim: int = 0
    positions: tuple[int, ...] | None = None


def source_regions(
    entry: PlanEntry, target: Region, source_shapes: Mapping[str, tuple[int, ...]]
) -> list[Piece] | None:
    """The source regions that make ``target`` for ``entry``; ``None`` if it needs whole tensors.

    Example:
        >>> from weightsurgery.match.plan import Action, PlanEntry
        >>> e = PlanEntry("qkv.weight", Action.ADAPT, sources=("q", "k", "v"), adapter="fuse")
        >>> pieces = source_regions(e, Region((6, 2), (range(1, 4), range(2))), {"q": (2, 2), "k": (2, 2), "v": (2, 2)})
        >>> [(p.key, p.region.index[0], p.positions) for p in pieces]   # rows 1..3 of [q; k; v]
        [('q', range(1, 2), (0,)), ('k', range(0, 2), (1, 2))]
    """
    if entry.action is Action.LOAD:
        return [Piece(entry.source_keys[0], target)]
    if entry.action is not Action.ADAPT:
        return None
    args = entry.adapter_args
    keys = entry.source_keys
    if entry.adapter == "head" and len(keys) == 1:
        return _head(keys[0], target, [int(r) for r in args.get("rows", ())], source_shapes[keys[0]])
    if entry.adapter == "fuse":
        return _fuse(keys, target, int(args.get("dim", 0)), source_shapes)
    if entry.adapter == "split" and len(keys) == 1:
        return _split(keys[0], target, args, source_shapes[keys[0]])
    if entry.adapter == "transpose" and len(keys) == 1:
        return _transpose(keys[0], target, args.get("dims"), source_shapes[keys[0]])
    return None


def assemble(
    entry: PlanEntry, target: Region, pieces: Sequence[Piece], read: Sequence[torch.Tensor], fill: torch.Tensor | None
) -> torch.Tensor:
    """The local target tensor from the ``read`` tensors of ``pieces`` (and ``fill``'s local rows)."""
    if entry.action is Action.LOAD:
        return read[0]
    if entry.adapter == "transpose":
        dims = entry.adapter_args.get("dims")
        order = list(dims) if dims is not None else list(range(read[0].dim() - 1, -1, -1))
        return read[0].permute(order).contiguous()
    dtype = read[0].dtype if read else (fill.dtype if fill is not None else torch.float32)
    out = torch.empty(target.local_shape, dtype=dtype)
    if entry.adapter == "head" and fill is not None:
        rows = [int(r) for r in entry.adapter_args.get("rows", ())]
        new = [i for i, g in enumerate(target.index[0]) if rows[g] == NEW_ROW]
        if new:
            pos = torch.tensor(new, dtype=torch.long)
            out.index_copy_(0, pos, fill.to(dtype).index_select(0, pos))
    for piece, tensor in zip(pieces, read):
        if piece.positions is None:
            out.copy_(tensor)
        elif piece.positions:
            out.index_copy_(piece.dim, torch.tensor(piece.positions, dtype=torch.long), tensor.to(dtype))
    return out


def _head(key: str, target: Region, rows: list[int], shape: tuple[int, ...]) -> list[Piece]:
    held = [(i, rows[g]) for i, g in enumerate(target.index[0])]
    taken = [(i, r) for i, r in held if r != NEW_ROW]
    region = target.with_dim(0, [r for _, r in taken], shape[0])
    return [Piece(key, region, 0, tuple(i for i, _ in taken))] if taken else []


def _fuse(keys: Sequence[str], target: Region, dim: int, shapes: Mapping[str, tuple[int, ...]]) -> list[Piece]:
    dim = dim % len(target.shape) if target.shape else 0
    pieces: list[Piece] = []
    start = 0
    for key in keys:
        size = shapes[key][dim]
        local = [(i, g - start) for i, g in enumerate(target.index[dim]) if start <= g < start + size]
        if local:
            pieces.append(Piece(key, target.with_dim(dim, [s for _, s in local], size), dim, tuple(i for i, _ in local)))
        start += size
    return pieces


def _split(key: str, target: Region, args: Mapping[str, Any], shape: tuple[int, ...]) -> list[Piece]:
    dim = int(args.get("dim", 0)) % len(target.shape)
    sizes = [int(s) for s in args.get("sizes", ())]
    offset = sum(sizes[: int(args.get("index", 0))])
    return [Piece(key, target.with_dim(dim, [g + offset for g in target.index[dim]], shape[dim]))]


def _transpose(key: str, target: Region, dims: Sequence[int] | None, shape: tuple[int, ...]) -> list[Piece]:
    order = list(dims) if dims is not None else list(range(len(target.shape) - 1, -1, -1))
    index: list[Any] = [None] * len(order)
    for out_dim, src_dim in enumerate(order):
        index[src_dim] = target.index[out_dim]
    return [Piece(key, Region(tuple(shape), tuple(index)))]
