"""The ranks of a sharded transfer agree, step by step, or all stop with one error.

A :class:`ShardSession` is the transfer's view of ``torch.distributed``: the
control group (the default group where it has a CPU backend, as gloo does;
otherwise one new gloo group over the same ranks), this rank, and the timeout
(the default group's own, as ``init_process_group(timeout=...)`` set it).

Every step that can fail on one rank runs inside :meth:`ShardSession.phase`.
At the end of a phase the ranks compare their outcome and a digest of what
they decided with one small ``all_reduce`` (only when something is wrong do
they gather the details with ``all_gather_object``). If any rank failed, or two digests
differ, every rank raises the same :class:`~weightsurgery.errors.ShardedTransferError`;
a rank that does not answer within the timeout is an error too, never a hang.
Collectives inside a phase (a broadcast from rank 0) are issued by every rank
whatever happened locally, so no rank waits on another that gave up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from weightsurgery.errors import ShardedTransferError

__all__ = ["Phase", "RankStats", "ShardSession", "digest"]

logger = logging.getLogger(__name__)

_GROUPS: dict[int, Any] = {}  # default group id -> the gloo control group made for it (NCCL jobs)


def digest(value: Any) -> str:
    """A short stable hash of a JSON-serialisable value (a plan, a read schedule).

    Example:
        >>> digest({"a": [1, 2]}) == digest({"a": [1, 2]}), digest([1]) == digest([2])
        (True, False)
    """
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class RankStats:
    """What one rank did in a sharded transfer.

    Attributes:
        rank: the global rank.
        bytes_read: tensor bytes this rank read from files (the readers' own counters).
        bytes_received: tensor bytes it received by broadcast (sources that cannot be read by range).
        seconds: wall time of the transfer on this rank.
    """

    rank: int
    bytes_read: int = 0
    bytes_received: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "bytes_read": self.bytes_read, "bytes_received": self.bytes_received,
                "seconds": round(self.seconds, 6)}


@dataclass
class Phase:
    """What a rank hands to the end-of-phase exchange.

    Attributes:
        digest: compared across ranks; a difference is an error.
        details: ``() -> dict[str, str]`` that says what the digest covers, item by item,
            gathered only when digests differ, to name the items that disagree.
    """

    digest: str | None = None
    details: Callable[[], dict[str, str]] | None = None


class ShardSession:
    """The collectives of one sharded transfer; every rank makes one.

    Args:
        group: the control group (``None``: the default group).
        timeout: how long a rank waits for the others at a step.

    Use :meth:`for_world` to make one from the initialized default group.
    """

    def __init__(self, group: Any, timeout: timedelta) -> None:
        import torch.distributed as dist

        self.group = group
        self.timeout = timeout
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.stats = RankStats(self.rank)
        self._start = time.perf_counter()

    @classmethod
    def for_world(cls) -> ShardSession:
        """A session over every rank of the default process group.

        Raises:
            ShardedTransferError: ``torch.distributed`` is not initialized.
        """
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise ShardedTransferError(
                "the target holds DTensor parameters but torch.distributed is not initialized in this process; "
                "call torch.distributed.init_process_group() (torchrun does it for you) before transfer()",
                failures={},
            )
        default = dist.distributed_c10d._get_default_group()
        timeout = _timeout_of(default)
        try:
            default._get_backend(torch.device("cpu"))
            group = None  # gloo (or a cpu:gloo,cuda:nccl pair): object collectives run on the default group
        except RuntimeError:
            if id(default) not in _GROUPS:
                _GROUPS[id(default)] = dist.new_group(backend="gloo", timeout=timeout)
            group = _GROUPS[id(default)]
        return cls(group, timeout)

    # ------------------------------------------------------------------ agreement
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        """Run one step on every rank; at its end all ranks agree or all raise.

        An exception inside the block is held until every rank has finished the
        step; then every rank raises one :class:`ShardedTransferError` naming
        each failed rank and its error (the failed rank's own error is its
        ``__cause__``).
        """
        state = Phase()
        error: BaseException | None = None
        try:
            yield state
        except BaseException as exc:  # held, then raised on every rank alike
            error = exc
        if self._all_well(name, error is None, state.digest):  # one small all_reduce in the usual case
            return
        outcome = None if error is None else f"{type(error).__name__}: {error}"
        gathered = self._all_gather(name, (self.rank, outcome, state.digest))
        failures = {r: text for r, text, _ in gathered if text is not None}
        if failures:
            ranks = ", ".join(str(r) for r in sorted(failures))
            lines = "\n  ".join(f"rank {r}: {failures[r]}" for r in sorted(failures))
            raise ShardedTransferError(
                f"the sharded transfer failed on rank(s) {ranks} while it was at '{name}'; every rank stopped "
                f"there{self._untouched(name)}:\n  {lines}",
                failures=failures,
                phase=name,
            ) from error
        digests = {r: d for r, _, d in gathered}
        self._disagree(name, state, digests)

    def _all_well(self, name: str, ok: bool, step_digest: str | None) -> bool:
        """Whether every rank succeeded with the same digest: ``all_reduce(MAX)`` of (failed, h, -h)."""
        import torch.distributed as dist

        h = int(step_digest, 16) & (2**62 - 1) if step_digest else 0
        flags = torch.tensor([0 if ok else 1, h, -h], dtype=torch.int64)
        try:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group)
        except Exception as exc:  # a rank that died, or did not come within the timeout
            raise self._unreachable(name, exc) from exc
        return int(flags[0]) == 0 and int(flags[1]) == -int(flags[2])

    def _disagree(self, name: str, state: Phase, digests: dict[int, str | None]) -> None:
        mine = state.details() if state.details is not None else {}
        everyone = self._all_gather(name, mine)
        reference = everyone[0]
        lines: list[str] = []
        for r, theirs in enumerate(everyone[1:], start=1):
            for item in sorted(set(reference) | set(theirs)):
                if reference.get(item) != theirs.get(item):
                    lines.append(f"{item}: rank 0 {reference.get(item, '(absent)')}; rank {r} {theirs.get(item, '(absent)')}")
        shown = "\n  ".join(lines[:12]) + (f"\n  ... and {len(lines) - 12} more" if len(lines) > 12 else "")
        raise ShardedTransferError(
            f"the ranks do not agree at '{name}' (each rank resolved and planned on its own, and the results "
            f"differ); every rank stopped there{self._untouched(name)}. Give every rank the same source and the "
            f"same model:\n  {shown or 'digests ' + str(digests)}",
            failures={},
            phase=name,
        )

    @staticmethod
    def _untouched(name: str) -> str:
        return ", and no rank changed its model" if name != "commit" else ""

    def _all_gather(self, name: str, payload: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        try:
            dist.all_gather_object(out, payload, group=self.group)
        except Exception as exc:  # a rank that died, or did not come within the timeout
            raise self._unreachable(name, exc) from exc
        return out

    def _unreachable(self, name: str, exc: Exception) -> ShardedTransferError:
        return ShardedTransferError(
            f"rank {self.rank}: not every rank reached '{name}' within {self.timeout.total_seconds():.0f} s "
            f"(a rank died or hangs: {type(exc).__name__}: {str(exc)[:300]}); this rank stopped there"
            f"{self._untouched(name)}",
            failures={self.rank: f"{type(exc).__name__}: {str(exc)[:300]}"},
            phase=name,
        )

    def agree_seed(self, seed: int | None) -> int:
        """``seed`` itself, or, for ``None``, a seed drawn on rank 0 (from its global RNG) for every rank.

        Without it, ranks whose global RNGs differ would compute different full
        inits and keep regions of different tensors.
        """
        from weightsurgery.init.seeding import base_seed

        if seed is not None:
            return seed
        return int(self._all_gather("seed", base_seed(None))[0])

    # ------------------------------------------------------------------ data
    def broadcast(self, tensor: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """Send rank 0's ``tensor`` to every rank; ``None`` on every rank when rank 0 has none to send.

        Rank 0 passes the tensor (or ``None`` when it failed to make it); the
        other ranks pass ``None`` and get a new tensor of ``shape`` and ``dtype``.
        Every rank calls this for the same tensors in the same order. The bytes
        travel as raw bytes, so any dtype works on any backend.
        """
        import torch.distributed as dist

        flag = torch.tensor([1 if (self.rank != 0 or tensor is not None) else 0], dtype=torch.int64)
        dist.broadcast(flag, src=0, group=self.group)
        if not int(flag.item()):
            return None
        if self.rank == 0:
            assert tensor is not None  # noqa: S101 - the flag said so
            buf = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            out = tensor
        else:
            out = torch.empty(shape, dtype=dtype)
            buf = out.reshape(-1).view(torch.uint8)
            self.stats.bytes_received += buf.numel()
        if buf.numel():
            dist.broadcast(buf, src=0, group=self.group)
        return out

    def gather_stats(self) -> list[RankStats]:
        """Every rank's :class:`RankStats`, in rank order, on every rank."""
        self.stats.seconds = time.perf_counter() - self._start
        return [RankStats(**s) for s in self._all_gather("report", vars(self.stats))]


def _timeout_of(group: Any) -> timedelta:
    """The timeout ``init_process_group`` gave ``group`` (torch's default when it cannot be read)."""
    import torch.distributed as dist

    for device in ("cpu", "cuda"):
        try:
            return group._get_backend(torch.device(device)).options._timeout
        except (RuntimeError, AttributeError):
            continue
    return dist.default_pg_timeout
