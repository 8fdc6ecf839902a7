"""Module extra state (``get_extra_state`` / ``set_extra_state``), honoured as torch does.

torch saves what a module's ``get_extra_state()`` returns under
``<module>._extra_state`` and hands it to ``set_extra_state`` on load, for
modules whose class overrides ``set_extra_state``. A transfer does the same,
following the plan: a target module gets the extra state of the source module
its tensors were loaded from (``backbone.norm`` loaded from ``model.norm.*``
gets ``model.norm._extra_state``), or, when it has no loaded tensor, the
source's extra state under its own name.

A target module whose extra state the source lacks keeps its own and is listed
in ``report.missing_keys``, as ``load_state_dict`` lists it; source extra state
that no target module takes is listed in ``report.unexpected_keys``.

The values are deep-copied before anything is set, and set after the tensors
are committed (:meth:`weightsurgery.apply.commit.Commit.set_extra_state`); a
``set_extra_state`` that raises is reported as a
:class:`~weightsurgery.errors.ModuleProtocolError` naming the module, and the
whole commit is undone.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping
from typing import Any

from weightsurgery.errors import StrictTransferError
from weightsurgery.match.plan import Action, Plan
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.memory import EXTRA_STATE

__all__ = [
    "check_strict_extra_state",
    "extra_state_plan",
    "stage_extra_states",
    "unused_extra_state",
]


def extra_state_plan(plan: Plan, target: TargetSpec, source_extra: Mapping[str, Any]) -> dict[str, str | None]:
    """Target ``<module>._extra_state`` key -> the source extra-state key it takes, or ``None``.

    Args:
        plan: the plan (its loaded entries tell which source module each target module came from).
        target: the target; ``target.extra_state`` lists the modules that take extra state.
        source_extra: the checkpoint's ``metadata["extra_state"]`` (``{key: value}``).

    Example:
        >>> from torch import nn
        >>> from weightsurgery.match.plan import Plan, PlanEntry
        >>> spec = TargetSpec({}, {}, extra_state=("norm",))
        >>> extra_state_plan(Plan({}), spec, {"norm._extra_state": 1})
        {'norm._extra_state': 'norm._extra_state'}
    """
    loaded = [(k, e.source) for k, e in plan.entries.items()
              if e.action in (Action.LOAD, Action.ADAPT) and e.source and k in target.tensors]
    out: dict[str, str | None] = {}
    for module in target.extra_state:
        own = _key(module)
        votes = Counter(q for q in (_source_module(module, k, s, target) for k, s in loaded) if q is not None)
        candidates = [_key(q) for q, _ in votes.most_common()]
        out[own] = next((k for k in [*candidates, own] if k in source_extra), None)
    return out


def unused_extra_state(chosen: Mapping[str, str | None], source_extra: Mapping[str, Any]) -> list[str]:
    """Source extra-state keys that no target module takes, in source order."""
    taken = set(chosen.values())
    return [k for k in source_extra if k not in taken]


def check_strict_extra_state(plan: Plan, target: TargetSpec, source_extra: Mapping[str, Any]) -> None:
    """``strict=True``, as ``load_state_dict(strict=True)``: every module's extra state found, none left over.

    Raises:
        StrictTransferError: missing or unexpected ``_extra_state`` keys; nothing was changed.
    """
    chosen = extra_state_plan(plan, target, source_extra)
    missing = [k for k, s in chosen.items() if s is None]
    unused = unused_extra_state(chosen, source_extra)
    if missing or unused:
        raise StrictTransferError(
            "strict=True: module extra state does not match; nothing was changed. "
            + (f"Target modules whose extra state the source lacks: {', '.join(missing)}. " if missing else "")
            + (f"Source extra state no target module takes: {', '.join(unused)}. " if unused else "")
            + "Pass strict=False to keep each module's own extra state",
            missing=missing,
            unused=unused,
        )


def stage_extra_states(chosen: Mapping[str, str | None], source_extra: Mapping[str, Any]) -> dict[str, Any]:
    """Private copies of the chosen values, target module path -> value (nothing is set yet)."""
    return {k.removesuffix(EXTRA_STATE).removesuffix("."): copy.deepcopy(source_extra[s]) for k, s in chosen.items()
            if s is not None}


def _source_module(module: str, key: str, source: str, target: TargetSpec) -> str | None:
    """The source module that ``module`` corresponds to, as one loaded entry under it tells."""
    if target.tensors[key].module == module:  # a tensor of the module itself: the source key's module
        return source.rpartition(".")[0]
    prefix = f"{module}." if module else ""
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix):]  # a descendant: the source key must end with the same relative path
    if source == rest:
        return ""
    return source[: -len(rest) - 1] if source.endswith("." + rest) else None


def _key(module: str) -> str:
    return f"{module}.{EXTRA_STATE}" if module else EXTRA_STATE
