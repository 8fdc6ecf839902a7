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

import itertools
import operator
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Literal

from torch import nn

from weightsurgery.match.plan import Action, PlanEntry
from weightsurgery.match.target import TargetSpec

__all__ = ["MismatchPolicy", "check_layout", "flatten_order", "transposed_layout"]

MismatchPolicy = Literal["init", "adapt", "error"]


class _NoTensor:
    shape = None  # a key the target lacks: never equal to a source shape


_NO_TENSOR = _NoTensor()


_SHAPE, _SOURCE_SHAPE = operator.attrgetter("shape"), operator.attrgetter("source_shape")


def _reshaped(decided: Mapping[str, PlanEntry], target: TargetSpec) -> list[tuple[str, PlanEntry]]:
    """The entries whose source shape is not the target's: one C-level pass, the only ones a layout can show in."""
    shapes = map(_SHAPE, map(target.tensors.get, decided, itertools.repeat(_NO_TENSOR)))
    differ = map(operator.ne, map(_SOURCE_SHAPE, decided.values()), shapes)
    return list(itertools.compress(decided.items(), differ))


def check_layout(
    decided: Mapping[str, PlanEntry],
    target: TargetSpec,
    on_mismatch: MismatchPolicy,
    source_shapes: Iterable[tuple[int, ...]] = (),
    *,
    reshaped: Iterable[str] | None = None,
) -> dict[str, PlanEntry]:
    """:func:`transposed_layout`, then :func:`flatten_order` on its outcome: the replacement entries of both.

    Both read only the entries whose source shape is not the target's: those
    among ``reshaped`` (the keys the caller knows may differ; the planner
    does), else found in one pass over ``decided``. A plan of plain same-shape
    copies costs a look at the target's 4-d kernels.
    """
    if reshaped is None:
        reshaped_entries = _reshaped(decided, target)
    else:
        tensors = target.tensors
        reshaped_entries = [
            (k, e) for k in dict.fromkeys(reshaped)
            if (e := decided.get(k)) is not None and k in tensors and e.source_shape != tensors[k].shape
        ]
    return _checked(decided, target, on_mismatch, source_shapes, reshaped_entries)


def _checked(
    decided: Mapping[str, PlanEntry],
    target: TargetSpec,
    on_mismatch: MismatchPolicy,
    source_shapes: Iterable[tuple[int, ...]],
    reshaped: list[tuple[str, PlanEntry]],
) -> dict[str, PlanEntry]:
    out = _transposed(decided, target, on_mismatch, reshaped)
    out.update(_flatten({**decided, **out} if out else decided, target, source_shapes, reshaped))
    return out


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
    return _transposed(decided, target, on_mismatch, _reshaped(decided, target))


def _transposed(
    decided: Mapping[str, PlanEntry],
    target: TargetSpec,
    on_mismatch: MismatchPolicy,
    reshaped: list[tuple[str, PlanEntry]],
) -> dict[str, PlanEntry]:
    tensors, adapted = target.tensors, Action.ADAPT

    def linear_weight(k: str) -> bool:
        t = tensors[k]
        return t.name == "weight" and len(t.shape) == 2 and issubclass(t.module_type, nn.Linear)

    transposed = [
        k for k, e in reshaped
        if (s := e.source_shape) is not None and len(s) == 2 and s[0] != s[1] and e.action is not adapted
        and tensors[k].shape[::-1] == s and linear_weight(k)
    ]
    if not transposed:
        return {}
    linear = {
        k: e for k, e in decided.items() if e.source_shape is not None and e.action is not adapted and linear_weight(k)
    }
    shape = {k: tensors[k].shape for k in linear}
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
    decided: Mapping[str, PlanEntry], target: TargetSpec, source_shapes: Iterable[tuple[int, ...]] = ()
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
    return _flatten(decided, target, source_shapes, _reshaped(decided, target))


def _flatten(
    decided: Mapping[str, PlanEntry],
    target: TargetSpec,
    source_shapes: Iterable[tuple[int, ...]],
    reshaped: list[tuple[str, PlanEntry]],
) -> dict[str, PlanEntry]:
    tensors = target.tensors
    swapped = [  # only a 4-d source shape with unequal spatial sizes can be a swapped kernel
        k for k, e in reshaped
        if (s := e.source_shape) is not None and len(s) == 4 and s[2] != s[3] and (t := tensors.get(k)) is not None
        and tuple(s) == (*t.shape[:2], t.shape[3], t.shape[2])
    ]
    four_d = itertools.compress(tensors, map((4).__eq__, map(len, map(_SHAPE, tensors.values()))))
    kernels = [k for k in four_d if (t := tensors[k]).shape[2] != t.shape[3] and k not in swapped]
    if kernels:  # the source's shapes are read only when some kernel could show a swap
        shapes = set(map(tuple, source_shapes))
        for k in kernels:
            t = tensors[k]
            if tuple(t.shape) not in shapes and (*t.shape[:2], t.shape[3], t.shape[2]) in shapes:
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
