"""Checks on the whole set of name matches: what one pair cannot show, its siblings can.

A square ``nn.Linear`` weight looks the same whether the source stores it as
``(out, in)`` (torch) or ``(in, out)`` (GPT-2's ``Conv1D``). Its non-square
siblings do show the layout, so the planner runs this check after matching.

Likewise a ``Linear`` that reads a flattened feature map has the same shape
whether the source flattened ``(C, H, W)`` or ``(C, W, H)``; conv kernels that
the source stores spatially transposed (``(kw, kh)`` for ``(kh, kw)``) show
which (:func:`flatten_order`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from typing import Literal

from torch import nn

from weightsurgery.match.plan import Action, PlanEntry
from weightsurgery.match.target import TargetSpec

__all__ = ["MismatchPolicy", "flatten_order", "transposed_layout"]

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


def flatten_order(
    decided: Mapping[str, PlanEntry], target: TargetSpec, source_shapes: Collection[tuple[int, ...]] = ()
) -> dict[str, PlanEntry]:
    """Linear weights after a conv whose source stores feature maps spatially transposed: never copied plainly.

    Evidence: a non-square conv kernel matched with its two spatial dimensions
    swapped (the source's ``(out, in, kw, kh)`` for the target's ``(out, in, kh, kw)``),
    or one that no source tensor has, while one of ``source_shapes`` is its swap
    (a renamed port, where nothing pairs the kernel by name).
    Such a source flattens a feature map as ``(C, W, H)``, so a ``Linear`` whose
    input is a flattened map (``in_features`` a multiple ``C * S``, ``S > 1``, of the
    channels of the conv before it) computes something else when copied as is.
    Which permutation undoes it needs the map's height and width, which
    shapes alone do not give: such weights are initialized, with the reason.

    Returns:
        Replacement entries for the plain copies that would be wrong.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 2, (1, 3)), nn.Flatten(), nn.Linear(2 * 4 * 2, 3))
        >>> spec = TargetSpec.from_module(net)
        >>> decided = {"0.weight": PlanEntry("0.weight", Action.INIT, "0.weight", source_shape=(2, 1, 3, 1)),
        ...            "2.weight": PlanEntry("2.weight", Action.LOAD, "2.weight", source_shape=(3, 16))}
        >>> flatten_order(decided, spec)["2.weight"].action
        <Action.INIT: 'init'>
    """
    swapped: list[str] = []
    for k, e in decided.items():
        t = target.tensors.get(k)
        if t is None or e.source_shape is None or len(t.shape) != 4 or t.shape[2] == t.shape[3]:
            continue
        if tuple(e.source_shape) == (*t.shape[:2], t.shape[3], t.shape[2]):
            swapped.append(k)
    shapes = set(map(tuple, source_shapes))
    for k, t in target.tensors.items():
        if len(t.shape) == 4 and t.shape[2] != t.shape[3] and k not in swapped and tuple(t.shape) not in shapes:
            if (*t.shape[:2], t.shape[3], t.shape[2]) in shapes:
                swapped.append(k)
    if not swapped:
        return {}
    evidence = f"conv kernels stored spatially transposed ({', '.join(swapped[:3])}{' ...' if len(swapped) > 3 else ''})"
    out: dict[str, PlanEntry] = {}
    channels: int | None = None
    for k, t in target.tensors.items():
        if t.name == "weight" and len(t.shape) == 4:
            channels = t.shape[0]
            continue
        e = decided.get(k)
        if e is None or e.action is not Action.LOAD or t.name != "weight" or len(t.shape) != 2:
            continue
        if not issubclass(t.module_type, nn.Linear) or channels is None:
            continue
        spatial, rest = divmod(t.shape[1], channels)
        if rest == 0 and spatial > 1:
            out[k] = replace(
                e, action=Action.INIT, evidence=(
                    f"layout trap: {k} reads a flattened map of {channels} channels x {spatial} positions, and the "
                    f"source flattens (C, W, H): {evidence}; a plain copy would compute something else, and the "
                    "map's height and width are unknown; map it with an AdaptRule if you know them"
                ),
            )
    return out
