"""Apply a plan to a module: validate, stage, commit.

1. **Validate** the whole plan against the checkpoint and the target from
   metadata. Every problem is collected and raised once, before anything is read.
2. **Stage.** Read each source tensor, adapt it, cast it to the target's dtype
   and device, and compute the fallback init for the leftovers (a leftover no
   rule names keeps its constructor's values: nothing is computed for it, or
   on a factory-built target, the constructor's values are). The module is
   not touched, so any error here (a truncated file, an adapter, an interrupt)
   leaves it bit-for-bit unchanged.
   A staged tensor that shares memory with the target (a source that is the
   target itself) is copied first, and target tensors that overlap are
   checked to end up with the values the report claims (:mod:`weightsurgery._memory`).
3. **Commit.** Copy the staged tensors in place (``copy_`` under ``no_grad``),
   or, for tensors on the ``meta`` device (a factory-built target), assign
   them as new parameters. A tied parameter is filled once, through its canonical key.
   Module extra state is set last (:mod:`weightsurgery.extra_state`).

``load_state_dict`` is never called: it costs about 150 µs per key and grows
quadratically on wide models. Staged tensors never alias a memory-mapped file:
a tensor that will train must own its memory.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from weightsurgery._memory import aliases_target, check_overlaps, target_memory
from weightsurgery.errors import PlanError
from weightsurgery.extra_state import extra_state_plan, set_extra_states, stage_extra_states
from weightsurgery.match.plan import Action, Plan, PlanEntry
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import Checkpoint
from weightsurgery.sources.shared import tensor_identity

__all__ = ["ApplyResult", "apply_plan", "complete_plan", "validate_plan"]

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


def complete_plan(plan: Plan, target: TargetSpec) -> Plan:
    """Give every target key an entry: a re-applied or hand-edited plan may omit some."""
    missing = {k: PlanEntry(k, Action.INIT, evidence="not in the plan") for k in target.tensors if k not in plan.entries}
    missing.update(
        {a: PlanEntry(a, Action.TIED, alias_of=c, evidence=f"tied to {c}") for a, c in target.aliases.items()
         if a not in plan.entries}
    )
    return plan.with_entries(missing) if missing else plan


def validate_plan(plan: Plan, checkpoint: Checkpoint, target: TargetSpec) -> None:
    """Check the plan against both sides from metadata; raise one :class:`PlanError` listing every problem."""
    problems: list[str] = []
    for key, e in plan.entries.items():
        if key not in target.tensors and key not in target.aliases:
            problems.append(f"{key}: the plan names a target key the model does not have")
            continue
        if e.action is Action.TIED:
            if e.alias_of not in target.tensors:
                problems.append(f"{key}: tied to {e.alias_of!r}, which the model does not have")
            continue
        if e.action is Action.INIT:
            continue
        if key in target.aliases:
            problems.append(f"{key}: is tied to {target.aliases[key]}; load the canonical key instead")
            continue
        missing = [s for s in e.source_keys if s not in checkpoint.metas]
        if not e.source_keys or missing:
            problems.append(f"{key}: source key(s) {missing or '(none)'} not in {checkpoint.origin.describe()}")
            continue
        tshape = target.tensors[key].shape
        if e.action is Action.LOAD:
            sshape = checkpoint.metas[e.source_keys[0]].shape
            if sshape != tshape:
                problems.append(f"{key}: target shape {tshape} but source {e.source_keys[0]} has {sshape}")
        elif e.action is Action.ADAPT:
            from weightsurgery.adapt import get_adapter
            from weightsurgery.errors import AdapterError

            try:
                get_adapter(e.adapter or "")
            except AdapterError as exc:
                problems.append(f"{key}: {exc}")
    if problems:
        raise PlanError(
            f"the plan does not fit the target ({len(problems)} problem(s)); nothing was changed:\n  "
            + "\n  ".join(problems),
            problems=problems,
        )


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
    """Validate, stage and commit ``plan`` into ``module``.

    Args:
        plan: a complete plan (see :func:`complete_plan`).
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
        Exception: anything raised while staging (I/O, an adapter) propagates,
            and the module is left unchanged.
    """
    validate_plan(plan, checkpoint, target)
    from weightsurgery.init import compute_init

    copies = [e for e in plan.entries.values() if e.action in (Action.LOAD, Action.ADAPT)]
    init_keys = [e.target for e in plan.entries.values() if e.action is Action.INIT]
    current = _current_tensors(module, target)
    total = len(copies) + len(init_keys)

    fill_keys = _fill_keys(copies)
    init = compute_init(module, target, [*fill_keys, *init_keys], init_rules, seed=seed, constructor=constructor,
                        materialize=fill_keys)
    staged: dict[str, torch.Tensor] = {}
    casts: dict[str, tuple[str, str]] = {}
    memory = [] if checkpoint.owned else target_memory(current)  # a source that is the target
    for i, e in enumerate(copies):
        dst = current[e.target]
        tensor, sources = _read(checkpoint, e, target, init.tensors.get(e.target))
        if tensor.dtype != dst.dtype:
            casts[e.target] = (str(tensor.dtype).removeprefix("torch."), str(dst.dtype).removeprefix("torch."))
        staged[e.target] = _stage(tensor, dst, sources, owned=checkpoint.owned)
        if aliases_target(staged[e.target], memory):  # commit would overwrite it before reading it
            staged[e.target] = staged[e.target].clone()
        if progress is not None:
            progress(i + 1, total)
    staged.update({k: init.tensors[k] for k in init_keys if k in init.tensors})
    if progress is not None:
        progress(total, total)

    check_overlaps(current, staged, plan)
    source_extra = checkpoint.metadata.get("extra_state", {})
    extra = stage_extra_states(extra_state_plan(plan, target, source_extra), source_extra) if target.extra_state else {}
    _commit(module, target, current, staged)
    set_extra_states(module, extra)
    frozen: tuple[str, ...] = ()
    if freeze:
        frozen = _freeze(module, target, [e.target for e in copies])
    logger.debug("applied %d copies, %d inits, %d casts", len(copies), len(init_keys), len(casts))
    leftover = set(init_keys)
    return ApplyResult(casts=casts, init_specs=dict(init.specs), init_rules=dict(init.rules), frozen=frozen,
                       kept=tuple(k for k in init.kept if k in leftover))


def _fill_keys(copies: list[PlanEntry]) -> list[str]:
    """Adapted keys that gain new rows (a grown head, a grown vocabulary): the fallback init fills them.

    New rows no rule names keep the constructor's values, as a whole leftover does.
    """
    from weightsurgery.adapt import get_adapter

    return [e.target for e in copies if e.action is Action.ADAPT and get_adapter(e.adapter or "").needs_fill(e.adapter_args)]


def _read(
    checkpoint: Checkpoint, e: PlanEntry, target: TargetSpec, fill: torch.Tensor | None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    tensors = [checkpoint.load(s) for s in e.source_keys]
    if e.action is Action.LOAD:
        return tensors[0], tensors
    from weightsurgery.adapt import run_adapter

    shape = target.tensors[e.target].shape
    return run_adapter(e.adapter or "", tensors, shape, e.adapter_args, fill=fill, key=e.target), tensors


def _stage(tensor: torch.Tensor, dst: torch.Tensor, sources: list[torch.Tensor], *, owned: bool) -> torch.Tensor:
    """Cast ``tensor`` to ``dst``'s dtype and device.

    A materialized ``dst`` is filled by ``copy_`` at commit, which copies
    anyway. A ``meta`` ``dst`` is replaced by the staged tensor itself, so it
    must own its memory: never a view of a memory-mapped file, never a slice
    of a bigger tensor.
    """
    device = torch.device("cpu") if dst.is_meta else dst.device
    out = tensor.to(device=device, dtype=dst.dtype)
    if dst.is_meta:
        ptr = out.untyped_storage().data_ptr()
        aliased = any(ptr == s.untyped_storage().data_ptr() for s in sources)
        whole = out.is_contiguous() and out.untyped_storage().nbytes() == out.numel() * out.element_size()
        if aliased and not (owned and whole) or not whole:
            out = out.clone(memory_format=torch.contiguous_format)
    return out


def _current_tensors(module: nn.Module, target: TargetSpec) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    modules = dict(module.named_modules(remove_duplicate=False))  # one walk, not a get_submodule per key
    for key, t in target.tensors.items():
        owner = modules[t.module]
        tensor = owner._buffers[t.name] if t.is_buffer else owner._parameters[t.name]
        if tensor is None:  # pragma: no cover - TargetSpec skips None entries
            raise PlanError(f"{key}: the module holds None there")
        out[key] = tensor
    return out


def _commit(
    module: nn.Module, target: TargetSpec, current: Mapping[str, torch.Tensor], staged: Mapping[str, torch.Tensor]
) -> None:
    """Write staged tensors: in place where the target is materialized, by assignment on ``meta``.

    On ``meta``, every slot that held the same tensor (tied by identity, or two
    parameters over one view: :func:`~weightsurgery.sources.shared.tensor_identity`)
    gets the same new data; each original object becomes one new object, so
    ties stay ties and views stay views.
    """
    owners: dict[Hashable, list[tuple[nn.Module, str, bool, torch.Tensor]]] = defaultdict(list)
    if any(current[k].is_meta for k in staged):
        for mod in module.modules():
            for name, p in mod._parameters.items():
                if p is not None and p.is_meta:
                    owners[tensor_identity(p)].append((mod, name, False, p))
            for name, b in mod._buffers.items():
                if b is not None and b.is_meta:
                    owners[tensor_identity(b)].append((mod, name, True, b))
    with torch.no_grad():
        for key, value in staged.items():
            dst = current[key]
            if not dst.is_meta:
                dst.copy_(value)
                continue
            made: dict[int, torch.Tensor] = {}
            for mod, name, is_buffer, old in owners[tensor_identity(dst)]:
                if id(old) not in made:
                    keep = isinstance(old, nn.Parameter)
                    made[id(old)] = nn.Parameter(value, requires_grad=old.requires_grad) if keep else value
                (mod._buffers if is_buffer else mod._parameters)[name] = made[id(old)]


def _freeze(module: nn.Module, target: TargetSpec, keys: list[str]) -> tuple[str, ...]:
    frozen = []
    current = _current_tensors(module, target)
    for key in keys:
        t = current[key]
        if isinstance(t, nn.Parameter):
            t.requires_grad_(False)
            frozen.append(key)
    return tuple(frozen)
