"""A transfer's :class:`~weightsurgery.report.Report`, built from its plan and what apply did.

One :class:`~weightsurgery.report.KeyRecord` per plan entry: its status,
shapes and dtypes, where it came from and how, and for a leftover (or the new
rows of a grown head) the init spec and rule that gave it its values. A dry
run applies nothing, so there the spec is the one apply *would* use.
:func:`weightsurgery.transfer` calls :func:`build_report` last.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from weightsurgery.extra_state import extra_state_plan, unused_extra_state
from weightsurgery.match.plan import Action
from weightsurgery.report import KeyRecord, Report, entry_loaded_numel

if TYPE_CHECKING:
    from torch import nn

    from weightsurgery.apply import ApplyResult
    from weightsurgery.match.plan import Plan
    from weightsurgery.match.target import TargetSpec
    from weightsurgery.sources.checkpoint import Checkpoint

__all__ = ["build_report", "loaded_numel"]


def build_report(
    plan: Plan, checkpoint: Checkpoint, target: TargetSpec, rules: Any, result: ApplyResult, *,
    applied: bool, warnings: list[str], model: nn.Module, ranks: list[dict[str, Any]] | None = None,
) -> Report:
    """The report of ``plan`` applied (``applied=True``) or only planned: one record per plan entry.

    ``result`` is what apply returned (an empty ``ApplyResult`` for a dry run);
    ``rules`` are the init rules, asked what they would give where apply gave nothing.
    """
    records: dict[str, KeyRecord] = {}
    status = {Action.LOAD: "loaded", Action.ADAPT: "adapted", Action.INIT: "initialized", Action.TIED: "tied"}
    for key, e in plan.entries.items():
        t = target.tensors[target.canonical(key)]
        src_meta = checkpoint.metas.get(e.source) if e.source and e.action is not Action.INIT else None
        spec = rule = None
        state = status[e.action]
        if e.action is Action.INIT:
            spec, rule, kept = _init_of(key, t, rules, result, applied=applied)
            state = "kept" if kept else state
        elif e.action is Action.ADAPT:  # the new rows of a grown head or vocabulary
            spec, rule = _fill_of(e, t, rules, result)
        records[key] = KeyRecord(
            target=key,
            status=state,  # type: ignore[arg-type]
            target_shape=t.shape,
            target_dtype=str(t.dtype).removeprefix("torch."),
            numel=t.numel,
            source=e.source if e.action in (Action.LOAD, Action.ADAPT) else None,
            sources=e.sources,
            strategy=e.strategy,
            evidence=e.evidence,
            source_shape=e.source_shape,
            source_dtype=str(src_meta.dtype).removeprefix("torch.") if src_meta else None,
            adapter=e.adapter,
            adapter_args=dict(e.adapter_args),
            init_spec=spec,
            init_rule=rule,
            alias_of=e.alias_of,
            loaded_numel=_partial(e, target, checkpoint),
        )
    source_extra = checkpoint.metadata.get("extra_state", {})
    extra = extra_state_plan(plan, target, source_extra)
    return Report(records, origin=checkpoint.origin, plan=plan, applied=applied, unused=plan.unused,
                  frozen=result.frozen, warnings=warnings, model=model, extra_state=extra,
                  unused_extra_state=unused_extra_state(extra, source_extra), ranks=ranks or ())


def loaded_numel(e: Any, target: TargetSpec, checkpoint: Checkpoint) -> int:
    """How many of the target tensor's elements entry ``e`` fills from the source (a grown head: its copied rows)."""
    meta = checkpoint.metas.get(e.source_keys[0]) if e.source_keys else None
    shape = e.source_shape or (meta.shape if meta else None)
    return entry_loaded_numel(e, target.tensors[e.target].shape, shape)


def _partial(e: Any, target: TargetSpec, checkpoint: Checkpoint) -> int | None:
    """The loaded elements of an adapted key that gained rows; ``None`` when all came from the source."""
    if e.action is not Action.ADAPT:
        return None
    n = loaded_numel(e, target, checkpoint)
    return n if n < target.tensors[e.target].numel else None


def _fill_of(e: Any, t: Any, rules: Any, result: ApplyResult) -> tuple[str | None, str | None]:
    if e.target in result.init_specs:
        return result.init_specs[e.target], result.init_rules.get(e.target)
    from weightsurgery.adapt import get_adapter

    if not get_adapter(e.adapter or "").needs_fill(e.adapter_args):
        return None, None
    return _predicted(e.target, t, rules)[:2]  # a dry run: what apply would use


def _init_of(key: str, t: Any, rules: Any, result: ApplyResult, *, applied: bool) -> tuple[str, str | None, bool]:
    """A leftover's spec, rule and whether it keeps its constructor's values (predicted for a dry run)."""
    if applied and key in result.init_specs:
        return result.init_specs[key], result.init_rules.get(key), key in result.kept
    return _predicted(key, t, rules)


def _predicted(key: str, t: Any, rules: Any) -> tuple[str, str | None, bool]:
    """What apply would give ``key``: its spec, rule, and whether it keeps its constructor's values."""
    from weightsurgery.init import CONSTRUCTOR, Keep

    chosen, rule = rules.select(key, t.module_type, is_buffer=t.is_buffer)
    if isinstance(chosen, Keep):
        return CONSTRUCTOR, rule, True
    return chosen.describe(), rule, False
