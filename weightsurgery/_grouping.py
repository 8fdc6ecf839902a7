"""Collapse long lists of state-dict keys into brace patterns for reports.

The twenty batch-norm keys of a ResNet's residual blocks become one line::

    layer{1..4}.{0,1}.bn{1,2}.{weight,bias}

A pattern is only written when the keys are exactly its expansion: no key is
invented and none is lost, so :func:`expand_group` inverts :func:`group_keys`.

How it works: each key is split into dotted components and starts as its own
group, a list of slots with one alternative each. Groups of the same length
whose slots agree everywhere but at one position merge, and that slot gains
the other's alternatives. Because the groups are disjoint and agree on every
other slot, the merged group is still an exact cartesian product. Positions
are merged right to left (parameter names first, then blocks, then stages),
repeated until nothing changes. The first component only merges names that
differ in their digits (``layer1``/``layer2``, ``0``/``1``), so distinct
top-level modules (``norm``, ``head``) stay on their own lines.

Keys that contain ``{``, ``}`` or ``,`` are left as they are and never merged.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["expand_group", "group_keys"]

_DIGITS = re.compile(r"(\d+)")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(\d+)\.\.(\d+)")
_RESERVED = frozenset("{},")


@dataclass
class _Group:
    slots: list[list[str]]  # one list of alternatives per dotted component, first-seen order
    frozen: bool = False


def group_keys(keys: Iterable[str]) -> list[str]:
    """Collapse ``keys`` into brace patterns whose expansion is exactly ``keys``.

    Args:
        keys: state-dict keys; duplicates are ignored.

    Returns:
        One pattern per group, in the order each group's first key appears.
        Runs of integers read ``{0..11}`` (contiguous) or ``{0,2,5}``; other
        alternatives keep their first-seen order, as in ``{weight,bias}``.

    Example:
        >>> group_keys(["blocks.0.attn.weight", "blocks.0.attn.bias", "blocks.1.attn.weight",
        ...             "blocks.1.attn.bias", "head.weight"])
        ['blocks.{0,1}.attn.{weight,bias}', 'head.weight']
        >>> group_keys(f"layer{i}.conv.weight" for i in range(1, 5))
        ['layer{1..4}.conv.weight']
    """
    groups = [
        _Group([[c] for c in key.split(".")], frozen=not _RESERVED.isdisjoint(key)) for key in dict.fromkeys(keys)
    ]
    width = max((len(g.slots) for g in groups), default=0)
    changed = True
    while changed:
        changed = False
        for position in reversed(range(width)):
            groups, merged = _merge_at(groups, position)
            changed = changed or merged
    return [".".join(_render_slot(slot) for slot in g.slots) for g in groups]


def expand_group(pattern: str) -> list[str]:
    """Every key a :func:`group_keys` pattern stands for.

    Args:
        pattern: a pattern such as ``"layer{1..4}.{0,1}.bn{1,2}.{weight,bias}"``.

    Returns:
        The keys, in the pattern's order (leftmost brace varies slowest).

    Raises:
        ValueError: a range whose start exceeds its end (``{5..2}``).

    Example:
        >>> expand_group("bn{1,2}.{weight,bias}")
        ['bn1.weight', 'bn1.bias', 'bn2.weight', 'bn2.bias']
        >>> expand_group("blocks.{0..2}.mlp")
        ['blocks.0.mlp', 'blocks.1.mlp', 'blocks.2.mlp']
    """
    pieces = _BRACE.split(pattern)
    choices: list[list[str]] = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            choices.append([piece])
            continue
        rng = _RANGE.fullmatch(piece)
        if rng is None:
            choices.append(piece.split(","))
            continue
        lo, hi = int(rng.group(1)), int(rng.group(2))
        if lo > hi:
            raise ValueError(f"pattern {pattern!r}: range {{{piece}}} runs backwards; write {{{hi}..{lo}}}")
        choices.append([str(n) for n in range(lo, hi + 1)])
    return ["".join(parts) for parts in itertools.product(*choices)]


def _merge_at(groups: list[_Group], position: int) -> tuple[list[_Group], bool]:
    """Merge every set of groups that agree on all slots but ``position``."""
    out: list[_Group] = []
    survivor: dict[tuple[object, ...], _Group] = {}
    merged = False
    for group in groups:
        if group.frozen or len(group.slots) <= position:
            out.append(group)
            continue
        # Slot ``position`` is left out of the signature; the first component also needs
        # the same non-digit skeleton, so only numbered siblings merge there.
        own = _skeleton(group.slots[position][0]) if position == 0 else None
        signature = (len(group.slots), own, *(frozenset(s) for i, s in enumerate(group.slots) if i != position))
        first = survivor.get(signature)
        if first is None:
            survivor[signature] = group
            out.append(group)
        else:
            first.slots[position].extend(group.slots[position])
            merged = True
    return out, merged


def _skeleton(component: str) -> str:
    return _DIGITS.sub("#", component)


def _render_slot(alternatives: list[str]) -> str:
    if len(alternatives) == 1:
        return alternatives[0]
    split = [_DIGITS.split(a) for a in alternatives]
    first = split[0]
    same_shape = all(len(s) == len(first) for s in split) and all(
        s[i] == first[i] for s in split for i in range(0, len(first), 2)
    )
    if same_shape:
        varying = [i for i in range(1, len(first), 2) if len({s[i] for s in split}) > 1]
        if len(varying) == 1 and all(_canonical_int(s[varying[0]]) for s in split):
            i = varying[0]
            numbers = sorted(int(s[i]) for s in split)
            return "".join(first[:i]) + _render_numbers(numbers) + "".join(first[i + 1 :])
    return "{" + ",".join(alternatives) + "}"


def _canonical_int(text: str) -> bool:
    return text == str(int(text))


def _render_numbers(numbers: list[int]) -> str:
    if len(numbers) >= 3 and numbers[-1] - numbers[0] == len(numbers) - 1:
        return f"{{{numbers[0]}..{numbers[-1]}}}"
    return "{" + ",".join(map(str, numbers)) + "}"
