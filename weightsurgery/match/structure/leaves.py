"""Pair the tensors of two aligned modules: same name, same role, unique shape, then names.

Two modules aligned by signature hold the same shapes, but which tensor is
which still needs saying when libraries name leaves differently (``gamma`` /
``weight``, ``moving_mean`` / ``running_mean``) or when several leaves share a
shape (a norm layer's four vectors). Evidence is taken in this order, each
step only where it is unambiguous:

1. the same leaf name;
2. the same role (:func:`~weightsurgery.match.tokens.leaf_role`);
3. the only remaining leaf of that shape on each side;
4. a strictly best name similarity, one to one.

A named pair whose shapes differ is contradictory evidence: the modules are
not paired at all. Steps 3 and 4 never pair two leaves whose names both
have a known role and the roles differ (a ``bias`` into a ``weight``, a
``running_mean`` into a ``weight``): the names contradict, and a shape
alone is no evidence against them (:func:`roles_contradict`).
"""

from __future__ import annotations

from collections.abc import Callable

from weightsurgery.match.structure.groups import Group
from weightsurgery.match.tokens import known_roles, leaf_role, name_similarity

__all__ = ["counterpart", "pair_leaves", "roles_contradict"]

LeafPair = tuple[str, str, str]  # target key, source key, rename note ("" if same leaf name)
_KNOWN_ROLES = known_roles()
_Pairing = Callable[[Group, Group, list[str], list[str]], list[tuple[str, str]]]


def pair_leaves(t: Group, s: Group) -> list[LeafPair] | str:
    """Pair every tensor of target module ``t`` with one of source module ``s``.

    Args:
        t: a target module's open tensors.
        s: the source module aligned with it (same signature).

    Returns:
        ``(target key, source key, note)`` for each tensor, counters included
        where their names agree; or, when the tensors cannot be told apart,
        the reason as a string.

    Example:
        >>> import torch
        >>> from weightsurgery.match.structure.groups import build_groups
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> v = TensorMeta((8,), torch.float32)
        >>> split = lambda k: tuple(k.rsplit(".", 1))
        >>> [t] = build_groups(["bn.weight", "bn.bias"], {"bn.weight": v, "bn.bias": v}, split)
        >>> [s] = build_groups(["norm.beta", "norm.gamma"], {"norm.beta": v, "norm.gamma": v}, split)
        >>> pair_leaves(t, s)
        [('bn.weight', 'norm.gamma', 'gamma -> weight'), ('bn.bias', 'norm.beta', 'beta -> bias')]
    """
    t_left, s_left = dict(t.leaves), dict(s.leaves)
    found: dict[str, str] = {}  # target leaf -> source leaf

    def take(pairing: _Pairing) -> str | None:
        for a, b in pairing(t, s, list(t_left), list(s_left)):
            if t.shapes[a] != s.shapes[b]:
                return f"{t.leaves[a]} {t.shapes[a]} and {s.leaves[b]} {s.shapes[b]} share a name but not a shape"
            found[a] = b
            del t_left[a], s_left[b]
        return None

    for pairing in (_same_name, _same_role):
        problem = take(pairing)
        if problem:
            return problem
    take(_unique_shape)
    take(_best_names)
    if t_left and any(roles_contradict(a, b) for a in t_left for b in s_left if t.shapes[a] == s.shapes[b]):
        return (
            f"{', '.join(t.leaves[a] for a in t_left)} and {', '.join(s.leaves[b] for b in s_left)} "
            "share shapes but their names say different roles"
        )
    if t_left:
        return (
            f"cannot tell {', '.join(t.leaves[a] for a in t_left)} from "
            f"{', '.join(s.leaves[b] for b in s_left)} (same shapes, unrelated names)"
        )
    out = [(t.leaves[a], s.leaves[b], "" if a == b else f"{b} -> {a}") for a, b in found.items()]
    order = list(t.leaves)
    out.sort(key=lambda pair: order.index(_leaf(pair[0])))
    for a, key in t.counters.items():
        b = next((b for b in s.counters if b == a or leaf_role(b) == leaf_role(a)), None)
        if b is not None:
            out.append((key, s.counters[b], "" if a == b else f"{b} -> {a}"))
    return out


def counterpart(leaf: str, t: Group, s: Group) -> str | None:
    """The source key in ``s`` most likely meant for target leaf ``leaf`` of ``t`` (for abstention reasons).

    Example:
        >>> import torch
        >>> from weightsurgery.match.structure.groups import build_groups
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> m = {"a.weight": TensorMeta((2, 2), torch.float32)}
        >>> [g] = build_groups(m, m, lambda k: tuple(k.rsplit(".", 1)))
        >>> counterpart("weight", g, g)
        'a.weight'
    """
    pool = {**s.leaves, **s.counters}
    for b, key in pool.items():
        if b == leaf or leaf_role(b) == leaf_role(leaf):
            return key
    shape = t.shapes.get(leaf)
    same = [key for b, key in s.leaves.items() if s.shapes[b] == shape and not roles_contradict(leaf, b)]
    return same[0] if len(same) == 1 else None


def roles_contradict(a: str, b: str) -> bool:
    """Whether leaf names ``a`` and ``b`` both name a known role (:func:`~weightsurgery.match.tokens.leaf_role`) and differ.

    An unknown name (``cls_token``, ``w``) has no role to contradict: only its shape speaks for it.

    Example:
        >>> roles_contradict("bias", "weight"), roles_contradict("beta", "bias"), roles_contradict("w", "weight")
        (True, False, False)
    """
    ra, rb = leaf_role(a), leaf_role(b)
    return ra != rb and ra in _KNOWN_ROLES and rb in _KNOWN_ROLES


def _leaf(key: str) -> str:
    return key.rpartition(".")[2]


def _same_name(t: Group, s: Group, a: list[str], b: list[str]) -> list[tuple[str, str]]:
    return [(x, x) for x in a if x in b]


def _same_role(t: Group, s: Group, a: list[str], b: list[str]) -> list[tuple[str, str]]:
    out = []
    for x in a:
        role = leaf_role(x)
        ours = [y for y in a if leaf_role(y) == role]
        theirs = [y for y in b if leaf_role(y) == role]
        if len(ours) == 1 and len(theirs) == 1:
            out.append((x, theirs[0]))
    return out


def _unique_shape(t: Group, s: Group, a: list[str], b: list[str]) -> list[tuple[str, str]]:
    out = []
    for x in a:
        ours = [y for y in a if t.shapes[y] == t.shapes[x]]
        theirs = [y for y in b if s.shapes[y] == t.shapes[x]]
        if len(ours) == 1 and len(theirs) == 1 and not roles_contradict(x, theirs[0]):
            out.append((x, theirs[0]))
    return out


def _best_names(t: Group, s: Group, a: list[str], b: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for x in a:
        same = (y for y in b if s.shapes[y] == t.shapes[x] and not roles_contradict(x, y))
        scores = sorted(((name_similarity(x, y), y) for y in same), reverse=True)
        if scores and scores[0][0] > 0 and (len(scores) == 1 or scores[1][0] < scores[0][0]):
            out.append((x, scores[0][1]))
    if len({y for _, y in out}) != len(out):
        return []
    return out
