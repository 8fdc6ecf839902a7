"""Rank 0 sends each rank its own region of a tensor only rank 0 can make.

A torch pickle cannot be read by range, and a whole-tensor adapter (a
position-embedding resample) needs every source element: rank 0 makes the full
tensor, one at a time, and each rank receives only the region it holds
(:class:`~weightsurgery.distributed.placement.Region`): ``torch.chunk``'s uneven
pieces, an empty one, ``_StridedShard``'s interleaved rows, and the whole
tensor where it is replicated. Regions differ in size, so the bytes travel by
point-to-point ``isend``/``recv`` from rank 0 (``scatter`` would pad every
piece to the largest); a rank that holds the tensor whole receives all of it.

Rank 0 learns every rank's regions once per transfer, in one ``gather_object``:
a rank's region depends on its place in a mesh rank 0 may not belong to (FSDP2
over one row of a 2-D mesh). A rank's memory holds its shards plus, on rank 0,
one full tensor (and the copies of the regions that are not one contiguous run
of it, while they are sent).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from weightsurgery.distributed.collectives import ShardSession
from weightsurgery.distributed.placement import Region

__all__ = ["Scatter"]


class Scatter:
    """The scatters of one staging step, in order: every rank calls :meth:`send` for the same tensors.

    Args:
        session: the ranks' collectives.
        mine: this rank's region of each tensor to be scattered, in the order they will be sent.

    Raises:
        RankUnreachableError: a rank did not take part (it died, or hangs).
    """

    def __init__(self, session: ShardSession, mine: Sequence[Region]) -> None:
        self.session = session
        self.mine = list(mine)
        self.everyone: list[list[Region]] | None = None  # on rank 0: [rank][tensor]
        if not self.mine:
            return
        import torch.distributed as dist

        session.flush("scatter")  # the ranks agree on what they decided before any data moves

        gathered: list[list[Region]] | None = [[] for _ in range(session.world)] if session.rank == 0 else None
        with self._collective():
            dist.gather_object(self.mine, gathered, dst=0, group=session.group)
        if gathered is not None:
            self.everyone = gathered

    def send(self, i: int, full: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """This rank's region of tensor ``i``; ``None`` on every rank when rank 0 has none to send.

        Rank 0 passes the full tensor (or ``None``, when it failed to make it: the
        others then get ``None`` too); the other ranks pass ``None`` and receive
        a new tensor of their region's shape and ``dtype``, counted in
        ``bytes_received``.
        """
        import torch.distributed as dist

        session, region = self.session, self.mine[i]
        flag = torch.tensor([1 if (session.rank != 0 or full is not None) else 0], dtype=torch.int64)
        with self._collective():
            dist.broadcast(flag, src=0, group=session.group)
        if not int(flag.item()):
            return None
        if session.rank == 0:
            assert full is not None and self.everyone is not None  # noqa: S101 - the flag and __init__ said so
            return self._send_all(i, full.detach().to("cpu").contiguous())
        out = torch.empty(region.local_shape, dtype=dtype)
        buf = out.reshape(-1).view(torch.uint8)
        if buf.numel():
            with self._collective():
                dist.recv(buf, src=0, group=session.group)
        session.stats.bytes_received += buf.numel()
        return out

    def _send_all(self, i: int, full: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        assert self.everyone is not None  # noqa: S101 - rank 0
        flat = full.reshape(-1).view(torch.uint8)
        bufs = {rank: _region_bytes(self.everyone[rank][i], full, flat) for rank in range(1, self.session.world)}
        with self._collective():
            works = [dist.isend(buf, dst=rank, group=self.session.group) for rank, buf in bufs.items() if buf.numel()]
            for work in works:
                work.wait()
        region = self.mine[i]
        return full if region.is_full else region.take(full)

    def _collective(self) -> _Guard:
        return _Guard(self.session)


class _Guard:
    """Turns a failed collective into the session's :class:`~weightsurgery.errors.RankUnreachableError`."""

    def __init__(self, session: ShardSession) -> None:
        self.session = session

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is not None and isinstance(exc, Exception) and not isinstance(exc, AssertionError):
            raise self.session.unreachable("stage", exc, self.started) from exc
        return False


def _region_bytes(region: Region, full: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """``region`` of ``full`` as bytes: a view where it is one contiguous run, else a copy."""
    if region.numel == 0:
        return flat[:0]
    runs = region.runs(itemsize=full.element_size())
    if len(runs) == 1:
        offset, nbytes = runs[0]
        return flat[offset : offset + nbytes]
    return region.take(full).reshape(-1).view(torch.uint8)
