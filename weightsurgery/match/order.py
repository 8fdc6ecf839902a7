"""Module order from key names: numeric-aware sorting of the name tree.

A state dict saved by ``torch.save`` lists keys in module order, the order the
structural matcher wants. A safetensors file stores its keys sorted, so
``blocks.10`` comes before ``blocks.2`` and ``conv_stem`` after ``conv_head``.
This module tells the two apart (:func:`looks_sorted`) and rebuilds the best
order the names allow (:func:`natural_order`): numbers compare as numbers, a
module's children stay together, and a module's own tensors come in a
canonical leaf order (``weight``, ``bias``, ``running_mean``...).

What names cannot restore (whether ``conv_stem`` ran before ``blocks``) stays
unknown, and the structural matcher treats it so.
"""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Iterable, Sequence

from weightsurgery.match.tokens import alpha_stem, leaf_role

__all__ = ["leaf_rank", "looks_sorted", "natural_key", "natural_order", "numbered_before"]

_CHUNKS = re.compile(r"\d+|\D+")

_LEAF_ORDER = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

NaturalKey = tuple[tuple[tuple[int, int, str], ...], ...]


def natural_key(key: str) -> NaturalKey:
    """A sort key for a dotted name that compares digit runs as numbers.

    Args:
        key: a dotted key or module path.

    Returns:
        A tuple with one entry per component; each entry holds its digit and
        non-digit chunks, numbers first-class.

    Example:
        >>> sorted(["blocks.10.fc", "blocks.9.fc", "blocks.1.fc"], key=natural_key)
        ['blocks.1.fc', 'blocks.9.fc', 'blocks.10.fc']
        >>> sorted(["layer10", "layer2"], key=natural_key)
        ['layer2', 'layer10']
    """
    out = []
    for component in key.split("."):
        chunks = tuple((0, int(c), "") if c.isdigit() else (1, 0, c) for c in _CHUNKS.findall(component))
        out.append(chunks)
    return tuple(out)


def leaf_rank(leaf: str) -> tuple[int, str]:
    """The canonical position of a tensor name within its module.

    ``weight`` first, then ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked`` (aliases such as ``gamma`` rank with their role),
    then any other name alphabetically.

    Example:
        >>> sorted(["running_var", "bias", "gamma", "cls_token"], key=leaf_rank)
        ['gamma', 'bias', 'running_var', 'cls_token']
    """
    role = leaf_role(leaf)
    if role in _LEAF_ORDER:
        return (_LEAF_ORDER.index(role), "")
    return (len(_LEAF_ORDER), leaf)


def looks_sorted(keys: Sequence[str]) -> bool:
    """Whether ``keys`` are in sorted order (plain or numeric-aware) rather than module order.

    A module's ``weight`` comes before its ``bias`` in module order, so a real
    state dict is almost never sorted; a safetensors file always is.

    Args:
        keys: keys in the order a source lists them.

    Returns:
        ``True`` when the order carries no module-order information.

    Example:
        >>> looks_sorted(["fc.bias", "fc.weight", "stem.weight"])
        True
        >>> looks_sorted(["stem.weight", "fc.weight", "fc.bias"])
        False
    """
    if len(keys) < 2:
        return False
    listed = list(keys)
    if all(map(operator.le, listed, itertools.islice(listed, 1, None))):  # in C, no sort
        return True
    # numeric-aware: stops at the first pair out of order, which module order shows within a module or two
    return all(natural_key(a) <= natural_key(b) for a, b in itertools.pairwise(listed))


def natural_order(keys: Iterable[str]) -> list[str]:
    """Rebuild module order from names alone: the name tree sorted numeric-aware.

    Modules sort by their path (``blocks.9`` before ``blocks.10``); the tensors
    of one module come together, in :func:`leaf_rank` order.

    Args:
        keys: dotted tensor keys in any order.

    Returns:
        The keys in rebuilt order.

    Example:
        >>> natural_order(["blocks.10.bias", "blocks.10.weight", "blocks.9.weight", "blocks.9.running_mean"])
        ['blocks.9.weight', 'blocks.9.running_mean', 'blocks.10.weight', 'blocks.10.bias']
    """

    def order(key: str) -> tuple[NaturalKey, tuple[int, str]]:
        module, _, leaf = key.rpartition(".")
        return natural_key(module), leaf_rank(leaf)

    return sorted(keys, key=order)


def numbered_before(a: str, b: str) -> bool:
    """Whether names alone say module ``a`` comes before module ``b``.

    True when the paths first differ in components that differ only in their
    numbers, and ``a``'s number is smaller (``blocks.9`` before ``blocks.10``,
    ``bn0`` before ``bn1``), or when ``a`` is a prefix of ``b``. Names that
    differ in words (``conv_head``, ``conv_stem``) say nothing about order.

    Example:
        >>> numbered_before("blocks.9.conv", "blocks.10.bn")
        True
        >>> numbered_before("conv_head", "conv_stem")
        False
    """
    pa, pb = a.split(".") if a else [], b.split(".") if b else []
    for ca, cb in zip(pa, pb):
        if ca != cb:
            return alpha_stem(ca) == alpha_stem(cb) and natural_key(ca) < natural_key(cb)
    return len(pa) < len(pb)
