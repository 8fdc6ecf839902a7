"""apply_plan: validate, stage, commit (see :mod:`weightsurgery.apply`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from weightsurgery._memory import check_overlaps
from weightsurgery.apply.commit import commit, current_tensors, previous_extra_states
from weightsurgery.apply.stage import fill_keys, stage
from weightsurgery.apply.validate import check_writable, validate_plan
from weightsurgery.extra_state import extra_state_plan, stage_extra_states
from weightsurgery.match.plan import Action, Plan
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import Checkpoint

__all__ = ["ApplyResult", "apply_plan"]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ApplyResult:
    """What apply did beyond the plan: casts and the init each leftover got.

    Attributes:
        casts: target key -> (source dtype, target dtype) where they differ.
        init_specs: target key -> the init spec used (``"trunc_normal(std=0.02)"``); for an
            adapted key that gained rows, the spec of the new rows.
        init_rules: target key -> the rule that chose it (``"head.*"``, ``"default"``).
        frozen: parameter keys set to ``requires_grad=False``.
        kept: leftover keys that hold their constructor's values.
    """

    casts: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    init_specs: Mapping[str, str] = field(default_factory=dict)
    init_rules: Mapping[str, str] = field(default_factory=dict)
    frozen: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()


def apply_plan(
    plan: Plan,
    checkpoint: Checkpoint,
    module: nn.Module,
    target: TargetSpec,
    *,
    init_rules: Any,
    seed: int | None = None,
    freeze: bool = False,
    progress: Progress | None = None,
    constructor: Any = None,
) -> ApplyResult:
    """Validate, stage and commit ``plan`` into ``module``: all of it, or nothing.

    Args:
        plan: a complete plan (see :func:`~weightsurgery.apply.validate.complete_plan`).
        checkpoint: the source the plan was made from (or one with the same keys).
        module: the target, changed in place.
        target: ``TargetSpec.from_module(module)``.
        init_rules: a ``weightsurgery.init.InitRules`` for the leftovers.
        seed: makes every initialized tensor reproducible.
        freeze: set ``requires_grad=False`` on every loaded parameter.
        progress: called as ``progress(done, total)`` while tensors are staged.
        constructor: the constructor's values of leftovers on ``meta``
            (:meth:`weightsurgery.factory.ConstructorReplay.values`).

    Returns:
        The casts made and the init spec each leftover got.

    Raises:
        PlanError: the plan does not fit; nothing was changed.
        ModuleProtocolError: a target tensor that cannot be written in place; nothing was changed.
        UnsupportedTensorError: a source tensor with no dense values; nothing was changed.
        BaseException: anything raised while staging (I/O, an adapter) or
            committing (an interrupt) propagates, and the module is left unchanged.

    Example:
        >>> from weightsurgery.init import InitRules
        >>> from weightsurgery.sources import resolve
        >>> from weightsurgery.match.plan import PlanEntry
        >>> model = nn.Linear(2, 2)
        >>> target = TargetSpec.from_module(model)
        >>> plan = Plan({"weight": PlanEntry("weight", Action.LOAD, source="w"),
        ...              "bias": PlanEntry("bias", Action.INIT)})
        >>> result = apply_plan(plan, resolve({"w": torch.eye(2)}), model, target,
        ...                     init_rules=InitRules.from_user("zeros"), seed=0)
        >>> model.weight.tolist(), model.bias.tolist(), result.init_specs
        ([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], {'bias': 'zeros'})
    """
    validate_plan(plan, checkpoint, target)
    from weightsurgery.init import compute_init

    with torch.inference_mode(False):  # staged values are normal tensors, even under the caller's inference mode
        copies = [e for e in plan.entries.values() if e.action in (Action.LOAD, Action.ADAPT)]
        init_keys = [e.target for e in plan.entries.values() if e.action is Action.INIT]
        current = current_tensors(module, target)
        total = len(copies) + len(init_keys)
        check_writable(current, [e.target for e in copies], target)  # before anything is read

        fills = fill_keys(copies)
        init = compute_init(module, target, [*fills, *init_keys], init_rules, seed=seed, constructor=constructor,
                            materialize=fills)
        written_inits = [k for k in init_keys if k in init.tensors]
        check_writable(current, written_inits, target)
        staged = stage(copies, checkpoint, target, current, init.tensors, progress=progress, total=total)
        staged.tensors.update({k: init.tensors[k] for k in written_inits})
        if progress is not None:
            progress(total, total)

        check_overlaps(current, staged.tensors, plan)
        source_extra = checkpoint.metadata.get("extra_state", {})
        extra = (stage_extra_states(extra_state_plan(plan, target, source_extra), source_extra)
                 if target.extra_state else {})
        previous = previous_extra_states(module, list(extra))
        leftover = set(init_keys)
        specs, rules, kept = dict(init.specs), dict(init.rules), tuple(k for k in init.kept if k in leftover)
        del init  # its tensors are staged now: commit frees each as it is written
        frozen = commit(module, target, current, staged.tensors, extra=extra, previous_extra=previous,
                        freeze=[e.target for e in copies] if freeze else None)
    logger.debug("applied %d copies, %d inits, %d casts", len(copies), len(init_keys), len(staged.casts))
    return ApplyResult(casts=staged.casts, init_specs=specs, init_rules=rules, frozen=frozen, kept=kept)
