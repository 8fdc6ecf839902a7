"""Transfers into sharded models: FSDP2 and DTensor, one call on every rank.

``transfer(src, model)`` is called on every rank of an initialized
``torch.distributed`` job whose model holds DTensor parameters
(``fully_shard``, ``distribute_tensor``, ``parallelize_module``). Matching runs
on metadata on every rank and the ranks check that they planned the same
(:mod:`~weightsurgery.distributed.collectives`); each rank then reads only
the regions its shards hold (:mod:`~weightsurgery.distributed.placement`,
:mod:`~weightsurgery.distributed.regions`, :mod:`~weightsurgery.distributed.stage`)
and commits into its shards (:mod:`~weightsurgery.distributed.apply`). The
parameters stay DTensors with their placements.

:func:`session_for` says whether a target is sharded; :func:`phase` runs one
step of a transfer so that every rank ends it together, or raises the same
error (a plain ``nullcontext`` on one process).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from weightsurgery.distributed.apply import apply_sharded, is_sharded
from weightsurgery.distributed.collectives import Phase, RankStats, ShardSession, digest

__all__ = ["DEFERRED", "Phase", "RankStats", "ShardSession", "agree_on_plan", "apply_sharded", "is_sharded", "phase",
           "session_for"]


def session_for(dst: Any, *, will_shard: bool = False) -> ShardSession | None:
    """A :class:`ShardSession` when ``dst`` is a module holding DTensors, else ``None``.

    With ``will_shard`` (a factory target that ``transfer(parallelize=...)``
    shards once built), a session whenever ``torch.distributed`` is initialized.

    Example:
        >>> from torch import nn
        >>> session_for(nn.Linear(2, 2)) is None
        True
    """
    if is_sharded(dst):
        return ShardSession.for_world()
    if will_shard:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return ShardSession.for_world()
    return None


DEFERRED = ("resolve", "plan")
"""Steps that change nothing and send nothing: their success is compared at the next exchange."""


def phase(session: ShardSession | None, name: str) -> contextlib.AbstractContextManager[Phase]:
    """``session.phase(name)`` (deferred for the steps in :data:`DEFERRED`), or a context that does nothing on one process.

    Example:
        >>> with phase(None, "plan") as step:
        ...     step.digest = "x"
    """
    return session.phase(name, defer=name in DEFERRED) if session is not None else _alone()


@contextlib.contextmanager
def _alone() -> Iterator[Phase]:
    yield Phase()


def agree_on_plan(step: Phase, plan: Any, target: Any) -> None:
    """Make the ranks compare ``plan`` (and the target's global shapes) at the end of ``step``.

    Example:
        >>> from weightsurgery.match.plan import Plan
        >>> step = Phase()
        >>> agree_on_plan(step, Plan({}), None)
        >>> len(step.digest)
        16
    """
    def describe() -> dict[str, str]:
        out = {k: _entry(e) for k, e in plan.entries.items()}
        out["(unused source keys)"] = ", ".join(plan.unused) or "none"
        if target is not None:
            out.update({f"{k} (target)": f"has shape {list(t.shape)}" for k, t in target.tensors.items()})
        return out

    step.details = describe
    step.digest = digest(describe())


def _entry(e: Any) -> str:
    action = e.action.value
    if e.action.value in ("load", "adapt"):
        text = f"{action}s from {', '.join(e.source_keys)}"
    else:
        text = f"{action} ({e.evidence})" if e.evidence else action
    if e.adapter:
        text += f" via {e.adapter}({dict(e.adapter_args)})"
    return text
