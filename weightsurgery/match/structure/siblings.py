"""Same-shaped siblings: when alignment order cannot say which is which, only names may.

An alignment in module order pairs modules in order. Among same-signature
siblings that order means nothing when it carries no evidence: ``q``, ``k``,
``v`` side by side, with names unrelated to their place. Such aligned pairs are
pooled per sibling set and re-paired by names: a pair is kept only when each is
the other's strictly best-named candidate (``q`` and ``query``). The rest are
*contested* and left for the caller to report as ambiguous.

The same doubt arises when an aligned pair has *open twins*: on both sides, a
nearest same-signature neighbour that the alignment left unpaired
(:func:`open_twins`). Then the two sides
order those same-shaped modules differently (a shortcut registered before the
branch on one side, after it on the other) or hold a different number of them,
and the alignment had to choose which of them to pair by order alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from weightsurgery.match.structure.groups import Group, clique_ordered, cliques
from weightsurgery.match.tokens import name_similarity

__all__ = ["SiblingResolution", "mutual_best", "open_twins", "resolve_siblings"]

_Key = tuple[str, tuple[int, ...]]


@dataclass(frozen=True)
class SiblingResolution:
    """What became of the aligned pairs.

    Attributes:
        kept: indices of the pairs whose alignment order is evidence enough.
        named: ``(target, source, pair indices of its sibling set)`` chosen by names.
        contested: ``(targets, sources)`` sibling sets nothing tells apart.
    """

    kept: tuple[int, ...]
    named: tuple[tuple[Group, Group, tuple[int, ...]], ...]
    contested: tuple[tuple[tuple[Group, ...], tuple[Group, ...]], ...]


def resolve_siblings(
    pairs: Sequence[tuple[Group, Group]],
    ts: Sequence[Group],
    ss: Sequence[Group],
) -> SiblingResolution:
    """Check each aligned pair against its sibling sets; re-pair the doubtful ones by names.

    Args:
        pairs: aligned ``(target group, source group)`` pairs.
        ts: every open target group.
        ss: every open source group.

    Returns:
        The pairs kept, re-paired and contested.

    Example:
        >>> import torch
        >>> from weightsurgery.match.structure.groups import build_groups
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> w = TensorMeta((4, 4), torch.float32)
        >>> split = lambda k: tuple(k.rsplit(".", 1))
        >>> ts = build_groups(["attn.q.weight", "attn.k.weight"], {"attn.q.weight": w, "attn.k.weight": w}, split)
        >>> ss = build_groups(["at.key.weight", "at.query.weight"], {"at.key.weight": w, "at.query.weight": w}, split)
        >>> res = resolve_siblings(list(zip(ts, ss)), ts, ss)
        >>> [(t.path, s.path) for t, s, _ in res.named]
        [('attn.q', 'at.query'), ('attn.k', 'at.key')]
    """
    t_cl, s_cl = cliques(ts), cliques(ss)
    link: dict[_Key, _Key] = {}

    def find(key: _Key) -> _Key:
        while link.setdefault(key, key) != key:
            key = link[key]
        return key

    kept: list[int] = []
    flagged: dict[int, _Key] = {}
    for n, (t, s) in enumerate(pairs):
        tc, sc = t_cl.get(t.index), s_cl.get(s.index)
        doubtful = (tc is not None and not clique_ordered(tc, trusted=True)) or (
            sc is not None and not clique_ordered(sc, trusted=True)
        )
        keys = [("t", _ids(tc)) if tc else None, ("s", _ids(sc)) if sc else None]
        present = [k for k in keys if k is not None]
        if not doubtful or not present:
            kept.append(n)
            continue
        flagged[n] = present[0]
        for k in present[1:]:
            link[find(k)] = find(present[0])

    taken_t = {pairs[n][0].index for n in kept}
    taken_s = {pairs[n][1].index for n in kept}
    components: dict[_Key, list[int]] = defaultdict(list)
    for n, key in flagged.items():
        components[find(key)].append(n)
    named: list[tuple[Group, Group, tuple[int, ...]]] = []
    contested: list[tuple[tuple[Group, ...], tuple[Group, ...]]] = []
    for members in components.values():
        t_set = _pool((pairs[n][0] for n in members), t_cl, taken_t)
        s_set = _pool((pairs[n][1] for n in members), s_cl, taken_s)
        chosen = mutual_best(t_set, s_set)
        named += [(t, s, tuple(members)) for t, s in chosen]
        paired_t = {t.index for t, _ in chosen}
        paired_s = {s.index for _, s in chosen}
        rest_t = tuple(t for t in t_set if t.index not in paired_t)
        rest_s = tuple(s for s in s_set if s.index not in paired_s)
        if rest_t and rest_s:
            contested.append((rest_t, rest_s))
    return SiblingResolution(tuple(kept), tuple(named), tuple(contested))


def _ids(members: Sequence[Group]) -> tuple[int, ...]:
    return tuple(sorted(g.index for g in members))


def _pool(groups: Iterable[Group], found: dict[int, list[Group]], taken: set[int]) -> list[Group]:
    """The aligned groups and their sibling sets, minus groups already kept in a sure pair."""
    out: dict[int, Group] = {}
    for g in groups:
        for member in found.get(g.index, [g]):
            if member.index not in taken:
                out[member.index] = member
    return sorted(out.values(), key=lambda g: g.index)


def mutual_best(t_set: Sequence[Group], s_set: Sequence[Group]) -> list[tuple[Group, Group]]:
    """Pairs that are each other's strictly best-named candidate, with some name in common.

    Example:
        >>> import torch
        >>> from weightsurgery.match.structure.groups import build_groups
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> m = {k: TensorMeta((4, 4), torch.float32) for k in ("a.q.w", "a.k.w", "b.key.w", "b.value.w")}
        >>> groups = build_groups(m, m, lambda k: tuple(k.rsplit(".", 1)))
        >>> [(t.path, s.path) for t, s in mutual_best(groups[:2], groups[2:])]
        [('a.k', 'b.key')]
    """
    sim = {(t.index, s.index): name_similarity(t.path, s.path) for t in t_set for s in s_set}

    def strict_best(scores: list[tuple[float, int]]) -> int | None:
        scores.sort(reverse=True)
        if not scores or scores[0][0] <= 0 or (len(scores) > 1 and scores[1][0] >= scores[0][0]):
            return None
        return scores[0][1]

    out = []
    for a, t in enumerate(t_set):
        b = strict_best([(sim[t.index, s.index], k) for k, s in enumerate(s_set)])
        if b is None:
            continue
        s = s_set[b]
        if strict_best([(sim[u.index, s.index], k) for k, u in enumerate(t_set)]) == a:
            out.append((t, s))
    return out


def open_twins(
    certain: Mapping[int, int], ts: Sequence[Group], ss: Sequence[Group]
) -> dict[int, tuple[list[Group], list[Group]]]:
    """Aligned pairs with a same-shaped neighbour left open on both sides.

    A module's *neighbours* are the nearest modules of its signature before and
    after it in its side's order, if they share a container below the side's
    top (the deepest path every module of the side sits in). A neighbour the
    alignment left open is an *open twin*: on both sides, it could have taken
    the pair's place had the two sides ordered these modules differently.

    Args:
        certain: row -> column of the pairs every optimal alignment makes.
        ts: the target's groups in alignment order.
        ss: the source's groups in alignment order.

    Returns:
        Row -> (open target twins, open source twins), for each pair that has both.

    Example:
        >>> import torch
        >>> from weightsurgery.match.structure.groups import build_groups
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> w, v = TensorMeta((4, 4), torch.float32), TensorMeta((2, 4), torch.float32)
        >>> split = lambda k: tuple(k.rsplit(".", 1))
        >>> t = {"b.conv1.w": w, "b.down.w": w, "head.w": v}  # the shortcut comes last here ...
        >>> s = {"l.proj.w": w, "l.a.w": w, "fc.w": v}  # ... and first there
        >>> near_t, near_s = open_twins({0: 0, 2: 2}, build_groups(t, t, split), build_groups(s, s, split))[0]
        >>> [g.path for g in near_t], [g.path for g in near_s]
        (['b.down'], ['l.a'])
    """
    paired_s = set(certain.values())
    near_t = _open_neighbours(ts, set(certain))
    near_s = _open_neighbours(ss, paired_s)
    out: dict[int, tuple[list[Group], list[Group]]] = {}
    for i, j in certain.items():
        if near_t[i] and near_s[j]:
            out[i] = (near_t[i], near_s[j])
    return out


def _open_neighbours(groups: Sequence[Group], paired: set[int]) -> list[list[Group]]:
    """Per position: its same-signature neighbours (before, after) that are left open and share a container."""
    top = _top(groups)
    by_sig: dict[object, list[int]] = defaultdict(list)
    for n, g in enumerate(groups):
        by_sig[g.signature].append(n)
    out: list[list[Group]] = [[] for _ in groups]
    for positions in by_sig.values():
        for k, n in enumerate(positions):
            for m in (positions[k - 1] if k else None, positions[k + 1] if k + 1 < len(positions) else None):
                if m is not None and m not in paired and _shared_depth(groups[n].path, groups[m].path) > top:
                    out[n].append(groups[m])
    return out


def _shared_depth(a: str, b: str) -> int:
    """How many leading path components ``a`` and ``b`` have in common."""
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def _top(groups: Sequence[Group]) -> int:
    """The depth of the deepest container every group of a side sits in."""
    first = groups[0].path if groups else ""
    return min((_shared_depth(first, g.path) for g in groups), default=0)
