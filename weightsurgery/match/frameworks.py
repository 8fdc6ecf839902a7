"""What another framework's checkpoint says about layout, applied to the plan.

A framework reader (:mod:`weightsurgery.sources.frameworks`) converts each
tensor to PyTorch's layout as its file's evidence decides, and lists the
tensors it could not decide in ``metadata["undecided"]``. The planner calls
:func:`framework_layouts` on its decisions: a key whose source is undecided is
never copied (it is left over, with the reader's reason), and every other
key's evidence names the layout its source was converted from. A square
``Dense`` of unknown layout is the trap this closes: its shape fits either way.

:func:`epsilon_notes` compares a normalization's epsilon in the source with the
target module's, for the report's warnings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from torch import nn

from weightsurgery.match.plan import Action, Plan, PlanEntry

__all__ = ["epsilon_notes", "framework_layouts"]


def framework_layouts(decided: Mapping[str, PlanEntry], metadata: Mapping[str, Any]) -> dict[str, PlanEntry]:
    """Entries to replace: undecided sources refused, converted ones annotated.

    A key left over for another reason says, too, that the source has
    undecided tensors (the matcher may not have paired them at all: their
    shapes are still the other framework's).

    Args:
        decided: the planner's entries so far.
        metadata: the checkpoint's metadata (``"undecided"``, ``"layouts"``).

    Returns:
        Replacement entries.

    Example:
        >>> e = PlanEntry("fc.weight", Action.LOAD, "dense.vars.0", strategy="exact", source_shape=(4, 4))
        >>> out = framework_layouts({"fc.weight": e}, {"undecided": {"dense.vars.0": "no config"}})
        >>> out["fc.weight"].action.value, out["fc.weight"].evidence
        ('init', 'layout undecided: source dense.vars.0 is not copied: no config')
    """
    undecided: Mapping[str, str] = metadata.get("undecided") or {}
    layouts: Mapping[str, Mapping[str, Any]] = metadata.get("layouts") or {}
    if not undecided and not layouts:
        return {}
    out: dict[str, PlanEntry] = {}
    first = next(iter(undecided), None)
    note = (f"{len(undecided)} source tensor(s) have an undecided layout and are never copied, e.g. {first}: "
            f"{undecided[first]}") if first is not None else ""
    for key, e in decided.items():
        if e.action is Action.INIT and note and not e.evidence.startswith(("excluded", "layout undecided")):
            out[key] = replace(e, evidence="; ".join([e.evidence, note]).strip("; "))
        if e.action not in (Action.LOAD, Action.ADAPT):
            continue
        resolved = (metadata.get("resolvable") or {}).get(e.source or "", {}).get("adapter")
        refused = [s for s in e.source_keys if s in undecided and not (e.strategy == "aliases" and resolved)]
        if refused:
            out[key] = replace(
                e, action=Action.INIT, adapter=None, adapter_args={},
                evidence=f"layout undecided: source {refused[0]} is not copied: {undecided[refused[0]]}",
            )
            continue
        notes = [_describe(s, layouts[s]) for s in e.source_keys if s in layouts]
        if notes:
            out[key] = replace(e, evidence="; ".join([e.evidence, *notes]).strip("; "))
    return out


def _describe(key: str, layout: Mapping[str, Any]) -> str:
    args = ", ".join(f"{k}={v}" for k, v in (layout.get("args") or {}).items())
    name = layout.get("layout", "identity")
    what = f"{name}({args})" if args else name
    return f"source layout {what} from {layout.get('source', key)} [{layout.get('evidence', '')}]"


def epsilon_notes(plan: Plan, model: nn.Module, metadata: Mapping[str, Any]) -> list[str]:
    """A note for each normalization whose epsilon in the source differs from the target module's.

    Example:
        >>> from weightsurgery.match.plan import Plan
        >>> bn = nn.Sequential(nn.BatchNorm2d(2))
        >>> plan = Plan({"0.running_var": PlanEntry("0.running_var", Action.LOAD, "bn.running_var")}, (), "")
        >>> epsilon_notes(plan, bn, {"epsilon": {"bn.running_var": 0.001}})[0][:62]
        'epsilon differs: 1 target normalization(s) (0) use eps=1e-05 a'
    """
    source_eps: Mapping[str, float] = metadata.get("epsilon") or {}
    if not source_eps:
        return []
    modules = dict(model.named_modules())
    differ: dict[tuple[float, float], list[str]] = {}
    for key, e in plan.entries.items():
        if e.action not in (Action.LOAD, Action.ADAPT) or e.source not in source_eps:
            continue
        owner = key.rpartition(".")[0]
        module = modules.get(owner)
        eps = getattr(module, "eps", getattr(module, "variance_epsilon", None))
        if isinstance(eps, float) and abs(eps - source_eps[e.source]) > 1e-12:
            names = differ.setdefault((eps, source_eps[e.source]), [])
            if owner not in names:
                names.append(owner)
    return [
        f"epsilon differs: {len(names)} target normalization(s) ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}) "
        f"use eps={target:g} and the source used {source:g}; outputs differ slightly unless you set their eps to {source:g}"
        for (target, source), names in differ.items()
    ]
