"""Apply a plan to a sharded model: the same steps as one process, agreed on by every rank.

1. **prepare** (local, then agreed): validate the plan, compute the fallback
   init (full tensors, seeded per key, so any world size gets the same full
   tensor), and decide how each entry is read (:class:`~weightsurgery.distributed.stage.Stager`).
   The ranks compare that schedule (and the seed): they must take part in the
   same scatters. When every entry is read by range (no scatter follows) the
   comparison waits for the end of the stage, one exchange for both.
   Non-persistent buffers left on ``meta`` are computed by their modules
   (:mod:`~weightsurgery.distributed.buffers`).
2. **stage**: every rank builds its local shards on the host, reading only its
   own byte ranges; the model is not touched, and a GPU mesh's devices hold no
   staged copy.
3. **commit**: each rank writes its shards through :func:`weightsurgery.apply.commit.commit`,
   whose :class:`~weightsurgery.apply.commit.Commit` is the one place a staged
   tensor reaches the model, and which undoes every write if any step fails: a real shard is filled
   in place (its ``to_local()``, streamed to a GPU through page-locked buffers,
   its undo copy on the host), a ``meta`` one is replaced by a DTensor made from
   the staged shard on the mesh's device (:func:`~weightsurgery.distributed.stage.placed`),
   and FSDP2 is told (``reset_sharded_param``, as its own ``_apply`` does) so its
   padded shard buffers follow.

A failure in any step on any rank raises the same
:class:`~weightsurgery.errors.ShardedTransferError` on every rank; before
commit, no rank has changed its model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from weightsurgery.distributed.collectives import ShardSession, digest
from weightsurgery.distributed.buffers import meta_buffers, recompute_buffers, set_buffers
from weightsurgery.distributed.stage import Stager, is_dtensor, local_device, local_init, placed
from weightsurgery.match.plan import Action, Plan
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import Checkpoint

__all__ = ["apply_sharded", "is_sharded"]

logger = logging.getLogger(__name__)


def is_sharded(module: Any) -> bool:
    """Whether ``module`` holds DTensor parameters (FSDP2, tensor parallel).

    Example:
        >>> is_sharded(nn.Linear(2, 2))
        False
    """
    import sys

    if not isinstance(module, nn.Module) or sys.modules.get("torch.distributed.tensor") is None:
        return False  # no DTensor can exist before torch.distributed.tensor is imported
    return any(is_dtensor(p) for p in module.parameters())


def apply_sharded(
    plan: Plan,
    checkpoint: Checkpoint,
    module: nn.Module,
    target: TargetSpec,
    *,
    session: ShardSession,
    init_rules: Any,
    seed: int | None,
    freeze: bool,
    progress: Callable[[int, int], None] | None,
    constructor: Any,
) -> Any:
    """:func:`weightsurgery.apply.apply_plan` for a model with DTensor parameters; see the module docstring."""
    from weightsurgery import apply as single
    from weightsurgery.apply.commit import commit, current_tensors, previous_extra_states
    from weightsurgery.apply.stage import fill_keys as adapted_fill_keys
    from weightsurgery.extra_state import extra_state_plan, stage_extra_states
    from weightsurgery.init import compute_init
    from weightsurgery.init.seeding import base_seed

    with session.phase("prepare") as step:
        single.validate_plan(plan, checkpoint, target)
        copies = [e for e in plan.entries.values() if e.action in (Action.LOAD, Action.ADAPT)]
        init_keys = [e.target for e in plan.entries.values() if e.action is Action.INIT]
        missing_buffers = meta_buffers(module)
        fill_keys = adapted_fill_keys(copies)
        if init_keys or fill_keys or missing_buffers:  # something may be drawn at random: one seed on every rank
            seed = session.agree_seed(seed)
        current = current_tensors(module, target)
        init = compute_init(module, target, [*fill_keys, *init_keys], init_rules, seed=seed,
                            constructor=constructor, materialize=fill_keys)
        buffers = recompute_buffers(module, missing_buffers, seed=base_seed(seed))[0] if missing_buffers else {}
        stager = Stager(session, checkpoint, current)
        modes = {e.target: stager.mode(e) for e in copies}
        step.digest = digest([sorted(modes.items()), seed])
        step.details = lambda: {"(seed)": str(seed), **{k: f"reads it by {m}" for k, m in modes.items()}}
        step.defer = all(m == "ranged" for m in modes.values())  # no collective in the stage: agreed at its end

    with session.phase("stage"):
        fills = {k: init.tensors[k] for k in fill_keys if k in init.tensors}
        staged, error = stager.stage_all(copies, modes, fills, progress, len(copies) + len(init_keys))
        if error is not None:
            raise error
        staged.update({k: local_init(init.tensors[k], current[k]) for k in init_keys if k in init.tensors})
        source_extra = checkpoint.metadata.get("extra_state", {})
        extra = stage_extra_states(extra_state_plan(plan, target, source_extra), source_extra) \
            if target.extra_state else {}
        casts = {}
        for e in copies:
            src = checkpoint.metas[e.source_keys[0]].dtype
            if src != current[e.target].dtype:
                casts[e.target] = (str(src).removeprefix("torch."), str(current[e.target].dtype).removeprefix("torch."))
        if progress is not None:
            progress(len(copies) + len(init_keys), len(copies) + len(init_keys))

    with session.phase("commit"):
        set_buffers(module, buffers, next((local_device(current[k]) for k in staged), torch.device("cpu")))
        on_meta = any(current[k].is_meta for k in staged)
        frozen = commit(module, target, current, staged, extra=extra,
                        previous_extra=previous_extra_states(module, list(extra)),
                        freeze=[e.target for e in copies] if freeze else None,
                        after_tensors=(lambda: _reset_fsdp(module)) if on_meta else None, place=placed)
    leftover = set(init_keys)
    logger.debug("rank %d: staged %d shards, %d inits", session.rank, len(copies), len(init_keys))
    return single.ApplyResult(casts=casts, init_specs=dict(init.specs), init_rules=dict(init.rules), frozen=frozen,
                              kept=tuple(k for k in init.kept if k in leftover))


def _reset_fsdp(module: nn.Module) -> None:
    """Tell FSDP2 its sharded parameters were replaced (what ``FSDPModule._apply`` does after ``to_empty``)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return
    with torch.no_grad():
        for mod in module.modules():
            if not isinstance(mod, FSDPModule):
                continue
            state = mod._get_fsdp_state()
            for group in state._fsdp_param_groups:
                for param in group.fsdp_params:
                    param.reset_sharded_param()
