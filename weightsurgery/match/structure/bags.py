"""Alignment by numbered containers, for a side whose module order was rebuilt from sorted names.

A safetensors file lists ``_blocks.4._bn0``, ``_blocks.4._bn1``,
``_blocks.4._depthwise_conv``...: the blocks come in their true (numeric)
order, but the modules inside a block come alphabetically, which says nothing.
So order is used only where numbers make it real:

1. each side's modules are pooled into *bags*, one per numbered container
   (:attr:`~weightsurgery.match.structure.groups.Group.bag`);
2. the bag sequences are aligned (numbers order them), scoring a bag pair by the
   modules of one signature they have in common; only pairs every optimal alignment
   makes are used;
3. inside a bag pair, a signature held by one module on each side pairs them;
   several same-signature modules pair in order only where their names order
   them on both sides (``bn0``, ``bn1``), else by names (``q``/``query``), else
   not at all.

A bag pair anchors its modules when it pairs at least ``min_run`` of them, or
every module of both bags, or sits in a run of ``min_run`` consecutive aligned
bags whose order numbers make real on both sides, or when every module of both
sides is paired.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from weightsurgery.match.order import natural_key, numbered_before
from weightsurgery.match.structure.align import align
from weightsurgery.match.structure.groups import Group, Signature, clique_ordered, describe
from weightsurgery.match.structure.siblings import mutual_best
from weightsurgery.match.tokens import index_agreement, name_similarity

__all__ = ["BagAlignment", "align_bags"]

_NAME_SCALE = 64


@dataclass(frozen=True)
class BagAlignment:
    """Module pairs found through aligned bags.

    Attributes:
        pairs: ``(target, source, evidence, anchored)`` per module pair.
        contested: ``(targets, sources)`` same-signature modules nothing tells apart.
    """

    pairs: tuple[tuple[Group, Group, str, bool], ...]
    contested: tuple[tuple[tuple[Group, ...], tuple[Group, ...]], ...]


def align_bags(
    ts: Sequence[Group], ss: Sequence[Group], *, t_trusted: bool, s_trusted: bool, min_run: int
) -> BagAlignment:
    """Align numbered containers, then pair the modules inside each aligned pair.

    Args:
        ts: the target's groups.
        ss: the source's groups.
        t_trusted: the target's listed order is module order.
        s_trusted: the source's listed order is module order.
        min_run: the paired modules that make a bag pair an anchor.

    Returns:
        The module pairs and the contested same-signature sets.

    Example:
        >>> import torch
        >>> from weightsurgery.match.structure.groups import build_groups
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> f = lambda *s: TensorMeta(s, torch.float32)
        >>> split = lambda k: tuple(k.rsplit(".", 1))
        >>> t = {"b.0.x.w": f(2, 2), "b.0.y.w": f(3, 2), "b.0.z.w": f(4, 2), "b.1.x.w": f(5, 5)}
        >>> s = {"l.0.m.w": f(4, 2), "l.0.n.w": f(2, 2), "l.0.o.w": f(3, 2), "l.1.p.w": f(5, 5)}
        >>> res = align_bags(build_groups(t, t, split), build_groups(s, s, split), t_trusted=False, s_trusted=False,
        ...                  min_run=3)
        >>> [(a.path, b.path, anchored) for a, b, _, anchored in res.pairs]
        [('b.0.x', 'l.0.n', True), ('b.0.y', 'l.0.o', True), ('b.0.z', 'l.0.m', True), ('b.1.x', 'l.1.p', True)]
    """
    t_bags, s_bags = _bags(ts, trusted=t_trusted), _bags(ss, trusted=s_trusted)
    t_keys, s_keys = list(t_bags), list(s_bags)
    alignment = align(_bag_weights(t_bags, s_bags))
    certain = {i: j for i in range(len(t_keys)) if (j := alignment.certain(i)) is not None}
    runs = _runs(certain, t_keys, s_keys, t_trusted=t_trusted, s_trusted=s_trusted)
    inside = {
        i: _pair_inside(t_bags[t_keys[i]], s_bags[s_keys[j]], t_trusted=t_trusted, s_trusted=s_trusted)
        for i, j in certain.items()
    }
    complete = len(certain) == len(t_keys) == len(s_keys) and all(
        len(found) == len(t_bags[t_keys[i]]) == len(s_bags[s_keys[certain[i]]]) for i, (found, _) in inside.items()
    )
    pairs: list[tuple[Group, Group, str, bool]] = []
    contested: list[tuple[tuple[Group, ...], tuple[Group, ...]]] = []
    for i, (found, disputed) in inside.items():
        t_key, s_key = t_keys[i], s_keys[certain[i]]
        contested += disputed
        whole = len(found) == len(t_bags[t_key]) == len(s_bags[s_key])
        anchored = complete or len(found) >= min_run or (whole and len(found) > 1) or runs[i] >= min_run
        for t, s, how in found:
            evidence = (
                f"aligned module {s.path or '(root)'} <-> {t.path or '(root)'} ({describe(t.signature)}) "
                f"in aligned slots {s_key or '(root)'} <-> {t_key or '(root)'} "
                f"({len(found)} modules paired, a run of {runs[i]} aligned slots)"
            )
            pairs.append((t, s, evidence + how, anchored))
    return BagAlignment(tuple(pairs), tuple(contested))


def _runs(
    certain: dict[int, int], t_keys: list[str], s_keys: list[str], *, t_trusted: bool, s_trusted: bool
) -> dict[int, int]:
    """Bag row -> length of its run of consecutive aligned bags whose order is real on both sides."""

    def real(keys: list[str], k: int, trusted: bool) -> bool:
        return trusted or numbered_before(keys[k - 1], keys[k])

    out: dict[int, int] = {}
    run: list[int] = []
    for i in sorted(certain):
        j = certain[i]
        joined = (
            run
            and i == run[-1] + 1
            and j == certain[run[-1]] + 1
            and real(t_keys, i, t_trusted)
            and real(s_keys, j, s_trusted)
        )
        if run and not joined:
            out.update(dict.fromkeys(run, len(run)))
            run = []
        run.append(i)
    out.update(dict.fromkeys(run, len(run)))
    return out


def _bags(groups: Sequence[Group], *, trusted: bool) -> dict[str, list[Group]]:
    """Bag key -> its groups; bags in first-appearance (trusted) or numeric (rebuilt) order."""
    ordered = list(groups) if trusted else sorted(groups, key=lambda g: natural_key(g.path))
    bags: dict[str, list[Group]] = {}
    for g in ordered:
        bags.setdefault(g.bag, []).append(g)
    if trusted:
        return bags
    return {k: bags[k] for k in sorted(bags, key=natural_key)}


def _bag_weights(t_bags: dict[str, list[Group]], s_bags: dict[str, list[Group]]) -> torch.Tensor:
    """Bag pair score: modules in common (each counts once, as in module alignment), bag names as a tie-breaker."""
    t_index, s_index = _by_signature(t_bags), _by_signature(s_bags)
    shared: dict[tuple[int, int], int] = defaultdict(int)
    for sig, t_counts in t_index.items():
        for j, s_count in s_index.get(sig, {}).items():
            for i, t_count in t_counts.items():
                shared[i, j] += min(t_count, s_count)
    t_keys, s_keys = list(t_bags), list(s_bags)
    unit = _NAME_SCALE * min(len(t_keys), len(s_keys)) + 1
    weights = torch.full((len(t_keys), len(s_keys)), -1, dtype=torch.int64)
    for (i, j), tensors in shared.items():
        tk, sk = t_keys[i], s_keys[j]
        names = 0.75 * name_similarity(tk, sk) + 0.25 * index_agreement(tk, sk)
        weights[i, j] = tensors * unit + round((_NAME_SCALE - 1) * names)
    return weights


def _by_signature(bags: dict[str, list[Group]]) -> dict[Signature, dict[int, int]]:
    """Signature -> bag position -> how many of the bag's modules have it."""
    index: dict[Signature, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for position, groups in enumerate(bags.values()):
        for g in groups:
            index[g.signature][position] += 1
    return index


def _pair_inside(
    t_bag: Sequence[Group], s_bag: Sequence[Group], *, t_trusted: bool, s_trusted: bool
) -> tuple[list[tuple[Group, Group, str]], list[tuple[tuple[Group, ...], tuple[Group, ...]]]]:
    """Pair two aligned bags' modules by signature; order and names only where they tell."""
    by_sig_s: dict[object, list[Group]] = defaultdict(list)
    for s in s_bag:
        by_sig_s[s.signature].append(s)
    by_sig_t: dict[object, list[Group]] = defaultdict(list)
    for t in t_bag:
        by_sig_t[t.signature].append(t)
    found: list[tuple[Group, Group, str]] = []
    contested: list[tuple[tuple[Group, ...], tuple[Group, ...]]] = []
    for sig, t_set in by_sig_t.items():
        s_set = by_sig_s.get(sig, [])
        if not s_set:
            continue
        if len(t_set) == len(s_set) == 1:
            found.append((t_set[0], s_set[0], ""))
            continue
        if (
            len(t_set) == len(s_set)
            and clique_ordered(t_set, trusted=t_trusted)
            and clique_ordered(s_set, trusted=s_trusted)
        ):
            found += [(t, s, "; their numbering orders the twins") for t, s in zip(t_set, s_set)]
            continue
        chosen = mutual_best(t_set, s_set)
        found += [(t, s, "; names pick it among its twins") for t, s in chosen]
        rest_t = tuple(t for t in t_set if all(t is not c for c, _ in chosen))
        rest_s = tuple(s for s in s_set if all(s is not c for _, c in chosen))
        if rest_t and rest_s:
            contested.append((rest_t, rest_s))
    found.sort(key=lambda pair: t_bag.index(pair[0]))
    return found, contested
