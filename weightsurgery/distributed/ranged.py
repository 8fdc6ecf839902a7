"""Read a region of a safetensors tensor by byte range, and count what was read.

A region's bytes in a row-major tensor are a list of runs
(:meth:`~weightsurgery.distributed.placement.Region.runs`): one run for an
FSDP2 ``Shard(0)`` shard, one per row for a ``Shard(1)`` one. Each run is read
straight into its place in the new local tensor. The reader is the file's own
open header (``Checkpoint.locate``), through its ``read_into``; the header
counts its own bytes (``bytes_read``). A DCP checkpoint's reader
(:class:`~weightsurgery.sources.dcp.DcpReader`) reads boxes: the region's
bounding box is read (only the saved chunks that overlap it) and cut down.
"""

from __future__ import annotations

from typing import Any

import torch

from weightsurgery.distributed.placement import Region
from weightsurgery.sources._fileread import POPULATE_FROM, populate

__all__ = ["RangedReader"]


class RangedReader:
    """Reads regions through the open safetensors headers of one checkpoint, counting bytes.

    Example:
        >>> import tempfile, pathlib, torch
        >>> from safetensors.torch import save_file
        >>> from weightsurgery.sources import resolve
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
        >>> save_file({"w": torch.arange(12.0).reshape(4, 3)}, p)
        >>> ckpt = resolve(p)
        >>> reader = RangedReader()
        >>> header, stored = ckpt.locate("w")
        >>> reader.read(header, stored, ckpt.metas["w"], Region((4, 3), (range(2, 4), range(3)))).tolist()
        [[6.0, 7.0, 8.0], [9.0, 10.0, 11.0]]
        >>> reader.bytes_read
        24
    """

    def __init__(self) -> None:
        self._counted: dict[int, tuple[Any, int]] = {}  # id(header) -> (header, its counter before us)

    @staticmethod
    def can_read(located: tuple[Any, str] | None) -> bool:
        """Whether a ``Checkpoint.locate`` answer can be read by range on this host."""
        if located is None:
            return False
        header, _ = located
        return callable(getattr(header, "read_into", None)) or callable(getattr(header, "read_box", None))

    def read(self, header: Any, stored: str, meta: Any, region: Region) -> torch.Tensor:
        """``region`` of tensor ``stored`` (of ``meta``'s shape and dtype) as a new tensor (on the host)."""
        self.track(header)
        if callable(getattr(header, "read_box", None)):  # a DCP checkpoint: saved chunks, not byte ranges
            box = [range(min(i), max(i) + 1) if len(i) else range(0) for i in region.index]
            inner = Region(tuple(len(b) for b in box), tuple(_shift(i, b.start) for i, b in zip(region.index, box)))
            return inner.take(header.read_box(stored, box))
        out = torch.empty(region.local_shape, dtype=meta.dtype)
        flat = out.reshape(-1).view(torch.uint8)
        runs = region.runs(itemsize=meta.dtype.itemsize)
        if len(runs) > 1 and flat.numel() >= POPULATE_FROM:  # many short runs (a Shard(1) shard): fault in once
            populate(memoryview(flat.numpy()))
        pos = 0
        for offset, nbytes in runs:
            header.read_into(stored, flat[pos : pos + nbytes], offset)
            pos += nbytes
        return out

    def track(self, header: Any) -> None:
        """Count what ``header``'s own counter reads from now on (a whole-tensor load through it, too)."""
        if id(header) not in self._counted and hasattr(header, "bytes_read"):
            self._counted[id(header)] = (header, int(header.bytes_read))

    @property
    def bytes_read(self) -> int:
        """Tensor bytes read so far, from the readers' own counters where they keep one."""
        return sum(int(h.bytes_read) - before for h, before in self._counted.values())


def _shift(index: range | tuple[int, ...], by: int) -> range | tuple[int, ...]:
    if isinstance(index, range):
        return range(index.start - by, index.stop - by)
    return tuple(i - by for i in index)
