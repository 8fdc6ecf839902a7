"""Modules as the unit of structural alignment: groups, signatures, order, cliques.

A *group* is the open tensors one module owns (for the source: the keys that
share everything but their last component). Its *signature* is the sorted
multiset of its tensors' shapes and dtype kinds, blind to leaf names, so that
``weight``/``bias`` and ``gamma``/``beta`` look alike. Scalar integer counters
(``num_batches_tracked``) are kept out of signatures: some checkpoints drop them.

A side's groups come in module order when its keys are (a ``torch.save`` state
dict, a live model). When the keys are sorted (a safetensors file), the order is
rebuilt from names (:func:`sequence`); numbers then order numbered containers,
the *bags* (``blocks.7``), but not differently named siblings inside one.

Sorted names still give the true order when every set of siblings is ordered
by its names (:func:`names_give_order`): numbered siblings (``0``, ``1``;
``conv1``, ``conv2``), a lone child, or, in a container that occurs once,
named siblings that share no signature (``features`` and ``classifier``).

A *clique* is a set of same-signature groups in one parent. Whether their order
can pair them is decided by :func:`clique_ordered`: names that differ only in
numbers (``bn0``, ``bn1``) order them; so does a module between them in a
trusted order. Otherwise (``query``, ``key``, ``value``) only names can pair them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from weightsurgery.match.order import leaf_rank, natural_key
from weightsurgery.match.tokens import alpha_stem
from weightsurgery.sources.checkpoint import TensorMeta

__all__ = [
    "Group",
    "Signature",
    "build_groups",
    "clique_ordered",
    "cliques",
    "describe",
    "names_give_order",
    "sequence",
]

Signature = tuple[tuple[tuple[int, ...], str], ...]


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "float"
    return "bool" if dtype == torch.bool else "int"


def _is_counter(meta: TensorMeta) -> bool:
    return len(meta.shape) == 0 and not meta.dtype.is_floating_point


@dataclass
class Group:
    """The open tensors of one module on one side.

    Attributes:
        path: the module path (``""`` for the root).
        leaves: tensor name -> full key, counters excluded, in canonical leaf order.
        counters: scalar integer tensors (``num_batches_tracked``) -> full key.
        signature: sorted ``(shape, dtype kind)`` of ``leaves``.
        index: position among the side's groups in the order they were listed.
    """

    path: str
    leaves: dict[str, str]
    counters: dict[str, str]
    signature: Signature
    index: int
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def parent(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def bag(self) -> str:
        """The numbered slot this module sits in, the unit whose order numbers make real.

        A module named by a bare index is its own slot (``features.28``,
        ``layer1.0.downsample.0``); otherwise it sits in its parent path cut
        after the last component with a digit: ``_blocks.7._bn1`` in
        ``_blocks.7``, ``b1_2.conv_dw`` in ``b1_2``, ``stem.conv`` in the root ``""``.
        """
        if self.path.rpartition(".")[2].isdigit():
            return self.path
        parts = self.parent.split(".") if self.parent else []
        for i in range(len(parts) - 1, -1, -1):
            if any(c.isdigit() for c in parts[i]):
                return ".".join(parts[: i + 1])
        return ""

    @property
    def size(self) -> int:
        return len(self.leaves) + len(self.counters)

    @property
    def distinctive(self) -> bool:
        """Holds a tensor of two or more dimensions (not just a norm's vectors)."""
        return any(len(shape) >= 2 for shape, _ in self.signature)


def build_groups(
    keys: Iterable[str],
    metas: Mapping[str, TensorMeta],
    owner: Callable[[str], tuple[str, str]],
) -> list[Group]:
    """Group ``keys`` by owning module, in order of first appearance.

    Args:
        keys: the open keys of one side, in that side's order.
        metas: key -> shape and dtype.
        owner: key -> ``(module path, tensor name)``.

    Returns:
        One :class:`Group` per module holding at least one non-counter tensor.

    Example:
        >>> import torch
        >>> m = {"fc.weight": TensorMeta((2, 3), torch.float32), "fc.bias": TensorMeta((2,), torch.float32)}
        >>> [(g.path, g.signature) for g in build_groups(m, m, lambda k: tuple(k.rsplit(".", 1)))]
        [('fc', (((2,), 'float'), ((2, 3), 'float')))]
    """
    members: dict[str, list[tuple[str, str]]] = {}
    for key in keys:
        module, leaf = owner(key)
        members.setdefault(module, []).append((leaf, key))
    groups: list[Group] = []
    for module, items in members.items():
        items.sort(key=lambda item: leaf_rank(item[0]))
        leaves = {leaf: key for leaf, key in items if not _is_counter(metas[key])}
        if not leaves:
            continue
        counters = {leaf: key for leaf, key in items if _is_counter(metas[key])}
        signature = tuple(sorted((tuple(metas[k].shape), _kind(metas[k].dtype)) for k in leaves.values()))
        shapes = {leaf: tuple(metas[k].shape) for leaf, k in leaves.items()}
        groups.append(Group(module, leaves, counters, signature, len(groups), shapes))
    return groups


def sequence(groups: Sequence[Group], *, trusted: bool) -> list[Group]:
    """One side's groups in module order: as listed, or rebuilt from names (numbers as numbers).

    Args:
        groups: one side's groups in listed order.
        trusted: the listed order is module order.

    Returns:
        The groups in alignment order.

    Example:
        >>> import torch
        >>> f = lambda *s: TensorMeta(s, torch.float32)
        >>> m = {"b.10.w": f(2), "b.9.w": f(3), "b.9.v": f(1)}
        >>> groups = build_groups(m, m, lambda k: tuple(k.rsplit(".", 1)))
        >>> [g.path for g in sequence(groups, trusted=False)]
        ['b.9', 'b.10']
    """
    return list(groups) if trusted else sorted(groups, key=lambda g: natural_key(g.path))


def names_give_order(groups: Sequence[Group]) -> bool:
    """Whether sorting these modules' paths numeric-aware recovers every order that matters.

    A module's own tensors come before its children's (as ``state_dict``
    lists them), and a parent's children come in name order. That order is
    the registration order, or cannot mislead, when each set of siblings
    holding tensors is

    - a lone child, or
    - numbered siblings of one stem (``0``, ``1``, ``10``; ``fc1``, ``fc2``), ordered by their numbers, or
    - named siblings whose subtrees share no signature, in a container whose
      path has no number (it occurs once: the root, ``backbone``). Then a
      wrong guess of their order moves whole subtrees once, a reordering the
      alignment meets between libraries anyway, and no same-shaped module
      can take another's place.

    Named siblings with a signature in common (``proj`` and ``f`` both holding
    a ``(48,32,1,1)`` conv) leave the order unknown. So do named siblings in
    a repeated container (``blocks.0.conv``, ``blocks.0.bn``): sorted, every
    block would be misordered the same way, and the alignment would shift by
    one module from block to block.

    Args:
        groups: one side's groups.

    Returns:
        ``True`` when the numeric-aware name order can stand for module order.

    Example:
        >>> import torch
        >>> f = lambda *s: TensorMeta(s, torch.float32)
        >>> split = lambda k: tuple(k.rsplit(".", 1))
        >>> m = {"features.0.w": f(8, 3), "features.1.w": f(8), "classifier.w": f(2, 8)}
        >>> names_give_order(build_groups(m, m, split))
        True
        >>> m = {"block.proj.w": f(8, 3), "block.f.w": f(8, 3)}
        >>> names_give_order(build_groups(m, m, split))
        False
        >>> m = {"blocks.0.conv.w": f(8, 8), "blocks.0.bn.w": f(8)}
        >>> names_give_order(build_groups(m, m, split))
        False
    """
    contents: dict[str, dict[str, set[Signature]]] = defaultdict(lambda: defaultdict(set))
    for g in groups:
        parts = g.path.split(".") if g.path else []
        for depth in range(len(parts)):
            contents[".".join(parts[:depth])][parts[depth]].add(g.signature)
    for parent, children in contents.items():
        if len(children) < 2 or len({alpha_stem(c) for c in children}) == 1:
            continue
        if any(c.isdigit() for c in parent):
            return False
        seen: set[Signature] = set()
        for signatures in children.values():
            if seen & signatures:
                return False
            seen |= signatures
    return True


def cliques(groups: Sequence[Group]) -> dict[int, list[Group]]:
    """Same-signature groups that share a parent: group index -> its clique.

    Only cliques of two or more are returned.

    Example:
        >>> import torch
        >>> f = lambda *s: TensorMeta(s, torch.float32)
        >>> m = {"attn.q.weight": f(4, 4), "attn.k.weight": f(4, 4), "attn.o.weight": f(2, 4)}
        >>> found = cliques(build_groups(m, m, lambda k: tuple(k.rsplit(".", 1))))
        >>> sorted(g.path for g in found[0])
        ['attn.k', 'attn.q']
    """
    sets: dict[tuple[str, Signature], list[Group]] = defaultdict(list)
    for g in groups:
        sets[(g.parent, g.signature)].append(g)
    return {g.index: members for members in sets.values() if len(members) > 1 for g in members}


def clique_ordered(members: Sequence[Group], *, trusted: bool) -> bool:
    """Whether a clique's order says which member is which.

    Names that differ only in their numbers (``bn0``/``bn1``, ``0``/``1``) are
    ordered by those numbers. In a trusted module order, members that each have
    another module between them are ordered by position (``bn1``, ``conv_dw``,
    ``bn2``). Adjacent members with unrelated names (``q``, ``k``, ``v``) are not.

    Example:
        >>> import torch
        >>> f = lambda *s: TensorMeta(s, torch.float32)
        >>> m = {"attn.q.weight": f(4, 4), "attn.k.weight": f(4, 4)}
        >>> clique_ordered(build_groups(m, m, lambda k: tuple(k.rsplit(".", 1))), trusted=True)
        False
    """
    if len({alpha_stem(g.path) for g in members}) == 1:
        return True
    if not trusted:
        return False
    positions = sorted(g.index for g in members)
    return all(b - a > 1 for a, b in zip(positions, positions[1:]))


def describe(signature: Signature) -> str:
    """A short text for a signature: ``(96,16,1,1)`` or ``4x(96,)`` or ``(10,32)+(10,)``.

    Example:
        >>> describe(((((8,), "float"),) * 4))
        '4x(8,)'
    """
    counts: dict[tuple[int, ...], int] = {}
    for shape, _ in sorted(signature, key=lambda s: (-len(s[0]), s[0])):
        counts[shape] = counts.get(shape, 0) + 1
    parts = []
    for shape, n in counts.items():
        text = "(" + ",".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
        parts.append(f"{n}x{text}" if n > 1 else text)
    return "+".join(parts)
