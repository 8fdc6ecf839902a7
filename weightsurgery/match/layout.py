"""Checks on the whole set of name matches: what one pair cannot show, its siblings can.

A square ``nn.Linear`` weight looks the same whether the source stores it as
``(out, in)`` (torch) or ``(in, out)`` (GPT-2's ``Conv1D``). Its non-square
siblings do show the layout, so the planner runs this check after matching.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Literal

from torch import nn

from weightsurgery.match.plan import Action, PlanEntry
from weightsurgery.match.target import TargetSpec

__all__ = ["MismatchPolicy", "transposed_layout"]

MismatchPolicy = Literal["init", "adapt", "error"]


def transposed_layout(
    decided: Mapping[str, PlanEntry], target: TargetSpec, on_mismatch: MismatchPolicy
) -> dict[str, PlanEntry]:
    """Linear weights that the source stores transposed, as GPT-2's ``Conv1D`` does.

    Evidence comes from the non-square ``nn.Linear`` weights matched by name:
    their source shape is either the target's (direct) or its reverse
    (transposed). A square weight cannot show its layout, so a plain copy of
    one would be silently wrong whenever its siblings are transposed. When
    every non-square weight is transposed, the layout is certain: under
    ``on_mismatch="adapt"`` all of them, square ones included, are transposed;
    otherwise the square ones are initialized with the reason. When the
    evidence is mixed, a square weight whose module name matches a transposed
    one is initialized, never guessed.
    """
    linear = {
        k: e for k, e in decided.items()
        if e.source_shape is not None and e.action is not Action.ADAPT and target.tensors[k].name == "weight"
        and len(target.tensors[k].shape) == 2 and issubclass(target.tensors[k].module_type, nn.Linear)
    }
    shape = {k: target.tensors[k].shape for k in linear}
    transposed = [k for k, e in linear.items() if e.source_shape == shape[k][::-1] != shape[k]]
    if not transposed:
        return {}
    direct = [k for k, e in linear.items() if e.source_shape == shape[k] and shape[k][0] != shape[k][1]]
    names = {target.tensors[k].module.rsplit(".", 1)[-1] for k in transposed}
    square = [
        k for k, e in linear.items() if e.source_shape == shape[k] and shape[k][0] == shape[k][1]
        and (not direct or target.tensors[k].module.rsplit(".", 1)[-1] in names)
    ]
    evidence = f"{len(transposed)} of {len(transposed) + len(direct)} non-square Linear weights are stored transposed"
    out: dict[str, PlanEntry] = {}
    for k in transposed + square:
        e = linear[k]
        if on_mismatch == "adapt" and not direct:
            out[k] = replace(
                e, action=Action.ADAPT, adapter="transpose", adapter_args={},
                evidence=f"{e.strategy} match; source layout is (in, out): {evidence}",
            )
        elif k in square:
            out[k] = replace(
                e, action=Action.INIT, evidence=(
                    f"layout unknown: {evidence}, and a square weight cannot show which; "
                    + ("pass on_mismatch='adapt' to transpose it" if not direct else "map it with an AdaptRule")
                ),
            )
    return out
