"""The ranks of a sharded transfer agree, step by step, or all stop with one error.

A :class:`ShardSession` is the transfer's view of ``torch.distributed``: the
control group (the default group where it has a CPU backend, as gloo does;
otherwise one new gloo group over the same ranks), this rank, and the timeout
(the default group's own, as ``init_process_group(timeout=...)`` set it).

Every step that can fail on one rank runs inside :meth:`ShardSession.phase`.
The ranks compare their outcomes and a digest of what each step decided in an
*exchange*: one ``all_gather`` of a few integers per rank (failed or not, a hash
of where the rank is, a hash of the digests since the last exchange, rank 0's
seed, this rank's counters). Only when something is wrong do they gather the
details with ``all_gather_object``; then every rank raises the same
:class:`~weightsurgery.errors.ShardedTransferError`, built from what was gathered
alone. A rank that does not answer within the timeout is an error too, never a
hang: the survivors stop at once (no further collective on a broken group) and
name the ranks that did not answer (:mod:`~weightsurgery.distributed.rollcall`)
in a :class:`~weightsurgery.errors.RankUnreachableError`.

A step that changes nothing and sends nothing (``defer``: resolving, planning,
a schedule of local reads) is not exchanged on its own when it succeeds: its
digest waits for the next exchange, which must come before the model changes or
any data moves between ranks (the end of a step that is not deferred,
:meth:`ShardSession.agree_seed`, the first scatter
(:class:`~weightsurgery.distributed.scatter.Scatter`), :meth:`ShardSession.gather_stats`). A rank whose step fails exchanges at once;
the others meet it at their next exchange, so every rank makes the same
exchanges in the same order. Where ranks reach different exchanges (they took
different paths), the hash of where each rank is tells them apart, and they stop
together. A transfer from a safetensors file makes two exchanges: after staging
and after the commit. Collectives inside a phase (a scatter from rank 0) are
issued by every rank whatever happened locally, so no rank waits on another that
gave up.
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
from typing import Any, NoReturn

import torch

from weightsurgery.distributed.rollcall import new_serial, roll_call
from weightsurgery.errors import RankUnreachableError, ShardedTransferError

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
        bytes_read: tensor bytes this rank read from files (the readers' own counters; a pickle's
            tensors, which rank 0 reads whole, by their bytes).
        bytes_received: tensor bytes it received from rank 0 (its regions of tensors only rank 0 can make).
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
        defer: when the step succeeds, compare it at the next exchange instead of now
            (settable inside the step; only for steps that change nothing and send nothing).
    """

    digest: str | None = None
    details: Callable[[], dict[str, str]] | None = None
    defer: bool = False


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
        self.serial = new_serial()
        self._start = time.perf_counter()
        self._pending: list[tuple[str, Phase]] = []  # deferred steps that succeeded here, not yet exchanged
        self._gathered: list[RankStats] = []  # every rank's counters, from the last exchange

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
    def phase(self, name: str, *, defer: bool = False) -> Iterator[Phase]:
        """Run one step on every rank; at its end all ranks agree or all raise.

        An exception inside the block is held until every rank has finished the
        step (or, when others deferred theirs, reached their next exchange);
        then every rank raises one :class:`ShardedTransferError` naming each
        failed rank and its error (the failed rank's own error is its
        ``__cause__``). With ``defer`` (or ``Phase.defer`` set inside the block),
        a success is compared at the next exchange (see the module docstring).
        """
        state = Phase(defer=defer)
        try:
            yield state
        except BaseException as exc:  # held, then raised on every rank alike
            if getattr(exc, "_agreed", False):  # an exchange inside the step already stopped every rank
                raise
            if isinstance(exc, RankUnreachableError):  # the group is broken: no exchange can finish
                raise
            self._exchange(name, failure=exc)
            raise AssertionError("unreachable: a failed step's exchange raises")  # pragma: no cover
        self._pending.append((name, state))
        if not state.defer:
            self._exchange(name)

    def flush(self, label: str) -> None:
        """Exchange the deferred steps now, if any (before data moves between ranks)."""
        if self._pending:
            self._exchange(label)

    def _exchange(self, label: str, *, failure: BaseException | None = None, seed: int = 0) -> list[list[int]]:
        """One ``all_gather`` of (failed, where, digests, seed, counters); raises on every rank if anything is wrong.

        Returns every rank's row; the counters become :meth:`gather_stats`'s answer.
        """
        import torch.distributed as dist

        pending, self._pending = self._pending, []
        digests = [(n, p.digest) for n, p in pending]
        self.stats.seconds = time.perf_counter() - self._start
        row = [0 if failure is None else 1, _hash(label), _hash(digests), seed, self.stats.bytes_read,
               self.stats.bytes_received, round(self.stats.seconds * 1e6)]
        mine = torch.tensor(row, dtype=torch.int64)
        rows = [torch.empty_like(mine) for _ in range(self.world)]
        started = time.monotonic()
        try:
            dist.all_gather(rows, mine, group=self.group)
        except Exception as exc:  # a rank that died, or did not come within the timeout
            raise _agreed(self.unreachable(label, exc, started)) from exc
        table = [r.tolist() for r in rows]
        self._gathered = [RankStats(r, bytes_read=t[4], bytes_received=t[5], seconds=t[6] / 1e6)
                          for r, t in enumerate(table)]
        if any(t[0] for t in table) or len({(t[1], t[2]) for t in table}) > 1:
            self._stop(label, failure, pending)
        return table

    def _stop(self, label: str, failure: BaseException | None, pending: list[tuple[str, Phase]]) -> NoReturn:
        """Something is wrong on some rank: gather what each rank did and raise the same error everywhere."""
        outcome = None if failure is None else f"{type(failure).__name__}: {failure}"
        gathered = self._all_gather(label, {"label": label, "failure": outcome,
                                            "steps": [(n, p.digest) for n, p in pending]})
        order: list[str] = []
        for g in gathered:  # every step any rank took, in the order they run
            order += [n for n, _ in g["steps"] if n not in order]
            if g["failure"] is not None and g["label"] not in order:
                order.append(g["label"])
        failures = {r: g["failure"] for r, g in enumerate(gathered) if g["failure"] is not None}
        for name in order:
            failed = [r for r in failures if gathered[r]["label"] == name]
            if failed:
                ranks = ", ".join(str(r) for r in sorted(failures))
                lines = "\n  ".join(
                    f"rank {r}: {failures[r]}" if gathered[r]["label"] == name
                    else f"rank {r} (at '{gathered[r]['label']}'): {failures[r]}" for r in sorted(failures))
                raise _agreed(ShardedTransferError(
                    f"the sharded transfer failed on rank(s) {ranks} while it was at '{name}'; every rank "
                    f"stopped{self._untouched(gathered)}:\n  {lines}",
                    failures=failures, phase=name)) from failure
            theirs = [dict(g["steps"]).get(name, _NOT_REACHED) for g in gathered]
            if _NOT_REACHED in theirs:  # some rank went another way (a dry run beside a transfer)
                self._out_of_step(name, gathered, failure)
            if len(set(theirs)) > 1:
                self._disagree(name, dict(pending).get(name), gathered, failure)
        self._out_of_step(gathered[0]["label"], gathered, failure)  # the same steps, but met at different points

    def _out_of_step(self, name: str, gathered: list[dict[str, Any]], failure: BaseException | None) -> NoReturn:
        where = ", ".join(f"rank {r} at '{g['label']}'" for r, g in enumerate(gathered))
        raise _agreed(ShardedTransferError(
            f"the ranks are out of step at '{name}' ({where}): each rank decided on its own which steps to take, "
            f"and the decisions differ; every rank stopped{self._untouched(gathered)}. Give every rank the same "
            "source, the same model and the same arguments",
            failures={}, phase=name)) from failure

    def _disagree(self, name: str, state: Phase | None, gathered: list[dict[str, Any]],
                  failure: BaseException | None) -> NoReturn:
        mine = state.details() if state is not None and state.details is not None else {}
        everyone = self._all_gather(name, mine)
        reference = everyone[0]
        lines: list[str] = []
        for r, theirs in enumerate(everyone[1:], start=1):
            for item in sorted(set(reference) | set(theirs)):
                if reference.get(item) != theirs.get(item):
                    lines.append(f"{item}: rank 0 {reference.get(item, '(absent)')}; rank {r} {theirs.get(item, '(absent)')}")
        shown = "\n  ".join(lines[:12]) + (f"\n  ... and {len(lines) - 12} more" if len(lines) > 12 else "")
        digests = {r: dict(g["steps"]).get(name) for r, g in enumerate(gathered)}
        raise _agreed(ShardedTransferError(
            f"the ranks do not agree at '{name}' (each rank resolved and planned on its own, and the results "
            f"differ); every rank stopped{self._untouched(gathered)}. Give every rank the same source and the "
            f"same model:\n  {shown or 'digests ' + str(digests)}",
            failures={},
            phase=name,
        )) from failure

    @staticmethod
    def _untouched(gathered: list[dict[str, Any]]) -> str:
        kept = [r for r, g in enumerate(gathered) if g["label"] == "commit" and g["failure"] is None]
        if kept:  # a failed commit undid its writes; the others' stand
            ranks = ", ".join(map(str, kept))
            return f"; rank(s) {ranks} committed and keep their new shards, so the model is incomplete"
        return ", and no rank changed its model"

    def _all_gather(self, name: str, payload: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        started = time.monotonic()
        try:
            dist.all_gather_object(out, payload, group=self.group)
        except Exception as exc:  # a rank that died, or did not come within the timeout
            raise _agreed(self.unreachable(name, exc, started)) from exc
        return out

    def unreachable(self, name: str, exc: BaseException, started: float) -> RankUnreachableError:
        """The error for a collective of step ``name`` that failed with ``exc`` (begun at ``time.monotonic()`` ``started``).

        Takes the roll call first (:func:`~weightsurgery.distributed.rollcall.roll_call`), so that the
        message names the ranks that did not answer; it waits at most the timeout (plus a short grace)
        after ``started``.
        """
        missing, why = roll_call(serial=self.serial, step=name, rank=self.rank, world=self.world,
                                 started=started, timeout=self.timeout)
        seconds = f"{self.timeout.total_seconds():.0f} s"
        cause = f"{type(exc).__name__}: {str(exc)[:300]}"
        if missing:
            who = f"rank(s) {', '.join(map(str, missing))} did not answer at '{name}' within {seconds} (killed, crashed or hung)"
        else:
            who = (f"not every rank reached '{name}' within {seconds} (a rank died or hangs; which one cannot be "
                   f"told: {why or 'every rank answered the roll call'})")
        failures = {r: f"did not answer at '{name}' within {seconds}" for r in missing}
        failures[self.rank] = cause
        after = ("; the ranks that answered may have written their shards, so the model is incomplete: restart "
                 "the job" if name == "commit" else ", and no rank changed its model")
        return RankUnreachableError(
            f"rank {self.rank}: {who}; this rank stopped there{after} ({cause})",
            failures=failures, phase=name, missing=missing,
        )

    def agree_seed(self, seed: int | None) -> int:
        """``seed`` itself, or, for ``None``, a seed drawn on rank 0 (from its global RNG) for every rank.

        Without it, ranks whose global RNGs differ would compute different full
        inits and keep regions of different tensors. For ``None`` this is an
        exchange (every rank must call it at the same point); call it only when
        a seed is needed, as one process draws one only when something random runs.
        """
        from weightsurgery.init.seeding import base_seed

        if seed is not None:
            return seed
        drawn = base_seed(None) if self.rank == 0 else 0
        return int(self._exchange("seed", seed=drawn)[0][3])

    # ------------------------------------------------------------------ data
    def gather_stats(self) -> list[RankStats]:
        """Every rank's :class:`RankStats`, in rank order, on every rank, as of the last exchange.

        Exchanges the deferred steps first, if any (a dry run ends after planning);
        otherwise no collective: every exchange carries the counters. ``seconds``
        is a rank's time from the start of the transfer to its last exchange.
        """
        self.flush("report")
        if not self._gathered:
            self._exchange("report")
        return list(self._gathered)


_NOT_REACHED = "(not reached)"


def _hash(value: Any) -> int:
    """A 63-bit integer hash of a JSON-serialisable value (it travels in an int64 tensor)."""
    return int(digest(value), 16) >> 1


def _agreed(error: ShardedTransferError) -> ShardedTransferError:
    """Mark ``error`` as raised by an exchange: a step that sees it stops without exchanging again."""
    error._agreed = True  # type: ignore[attr-defined]
    return error


def _timeout_of(group: Any) -> timedelta:
    """The timeout ``init_process_group`` gave ``group`` (torch's default when it cannot be read)."""
    import torch.distributed as dist

    for device in ("cpu", "cuda"):
        try:
            return group._get_backend(torch.device(device)).options._timeout
        except (RuntimeError, AttributeError):
            continue
    return dist.default_pg_timeout
