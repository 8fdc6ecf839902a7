"""Matching strategy ``fused``: separate projections to and from a fused one, by name tokens.

Every module name is read as tokens (:func:`~weightsurgery.match.tokens.split_tokens`):

* a **part** names exactly one role, spelled short or long (``q``/``query``,
  ``k``/``key``, ``v``/``value``, ``gate``, ``up``), and otherwise only
  decoration words (``proj``, ``lin``, ``linear``, ``to``...): ``query``,
  ``q_proj``, ``k_lin``, ``to_v``, ``gate_proj``. Parts under one parent module
  that differ only in the role word form a group;
* a **fused** projection names two or more roles in order: a compact token of
  role letters (``qkv``, ``kv``: ``qkv``, ``qkv_proj``, ``to_qkv``), the words
  ``gate`` then ``up`` (``gate_up_proj``), or ``torch.nn.MultiheadAttention``'s
  ``in_proj_weight``/``in_proj_bias`` (``q, k, v``).

The order of the parts always comes from the fused name (``qkv`` is
``[q; k; v]``), never from key order: a ``.safetensors`` file lists
``key < query < value``. Spelled-out fused names such as ``query_key_value``
are *not* accepted: GPT-NeoX, BLOOM and Falcon use that name for a per-head
interleaved layout that a plain concatenation would scramble.

A fused key and a group pair up, per tensor (``weight`` and ``bias``
separately), when their module paths line up, tried in this order and stopping
at the first tier with a candidate:

1. equal paths;
2. equal after a wrapper prefix on one side (``module.attn`` and ``attn``);
3. equal container indices (``encoder.layer.3.attention.self`` and
   ``layers.3.self_attn``), only when every fused key of that kind and every
   group of that kind have distinct indices and the two index sets are equal,
   so the pairing is a one-to-one correspondence of layers.

A pair is claimed only when there is exactly one candidate, its roles are the
fused name's roles, every part is present and unclaimed, and the shapes add up
exactly (the parts' dim 0 sums to the fused dim 0, every other dim equal).
Fusing yields one match naming all parts (adapter ``fuse``); splitting yields
one match per part, each reading the fused key (adapter ``split`` with
``{"index": i, "sizes": [...], "dim": 0}``). Where names line up but shapes,
parts or candidates do not, the strategy abstains with the reason.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from weightsurgery.match.base import Abstain, Match, MatchContext, StrategyResult
from weightsurgery.match.fused_names import PART_DECORATION as PART_DECORATION
from weightsurgery.match.fused_names import ROLE_WORDS as ROLE_WORDS
from weightsurgery.match.fused_names import FusedKey, PartGroup, scan
from weightsurgery.match.fused_names import fused_roles as fused_roles
from weightsurgery.match.fused_names import part_role as part_role
from weightsurgery.match.tokens import numeric_components

__all__ = ["PART_DECORATION", "ROLE_WORDS", "fused_roles", "match_fused", "part_role"]

logger = logging.getLogger(__name__)

STRATEGY = "fused"


def match_fused(ctx: MatchContext) -> StrategyResult:
    """Pair separate ``q,k,v`` (or ``gate,up``) with a fused projection, in either direction.

    Args:
        ctx: the open keys and both sides' shapes.

    Returns:
        ``fuse`` matches (fused target from separate sources), ``split`` matches
        (separate targets from a fused source), and abstentions where names line
        up but shapes, parts or candidates do not.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from weightsurgery.match.target import TargetSpec
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> target = TargetSpec.from_module(nn.MultiheadAttention(4, 1))
        >>> src = {f"{p}.{t}": TensorMeta((4, 4) if t == "weight" else (4,), torch.float32)
        ...        for p in "vkq" for t in ("weight", "bias")}
        >>> ctx = MatchContext(src, target, list(target.tensors), list(src))
        >>> for m in match_fused(ctx).matches:
        ...     print(m.target, m.sources, m.adapter)
        in_proj_weight ('q.weight', 'k.weight', 'v.weight') fuse
        in_proj_bias ('q.bias', 'k.bias', 'v.bias') fuse
    """
    src_fused, src_groups = scan(ctx.open_sources)
    tgt_fused, tgt_groups = scan(ctx.open_targets)
    abstentions: list[Abstain] = []
    claims: dict[str, list[list[Match]]] = defaultdict(list)  # source key -> candidate match groups using it

    for fused, group in _pairs(tgt_fused, src_groups, abstentions, fused_is_target=True):  # fuse
        why = _problem(fused, group, ctx, fused_is_target=True)
        if why:
            abstentions.append(Abstain(fused.key, why, group.all_keys(), STRATEGY))
            continue
        keys = tuple(group.key(r) or "" for r in fused.roles)
        m = Match(
            target=fused.key,
            source=keys[0],
            strategy=STRATEGY,
            sources=keys,
            adapter="fuse",
            adapter_args={"dim": 0},
            evidence=f"fused {', '.join(fused.roles)} of {group.module or '(root)'!r} in the order of {fused.key!r}",
        )
        claim = [m]
        for k in keys:
            claims[k].append(claim)

    for fused, group in _pairs(src_fused, tgt_groups, abstentions, fused_is_target=False):  # split
        why = _problem(fused, group, ctx, fused_is_target=False)
        targets = group.all_keys()
        if why:
            abstentions += [Abstain(k, why, (fused.key,), STRATEGY) for k in targets]
            continue
        keys = [group.key(r) or "" for r in fused.roles]
        sizes = [ctx.target.tensors[k].shape[0] for k in keys]
        claims[fused.key].append(
            [
                Match(
                    target=k,
                    source=fused.key,
                    strategy=STRATEGY,
                    adapter="split",
                    adapter_args={"index": i, "sizes": sizes, "dim": 0},
                    evidence=f"part {i} ({fused.roles[i]}) of fused {fused.key!r}",
                )
                for i, k in enumerate(keys)
            ]
        )

    matches: list[Match] = []
    for key, groups in claims.items():
        if len(groups) > 1:
            why = f"source {key!r} fits several fused groups; add a rename or AdaptRule"
            abstentions += [Abstain(m.target, why, (key,), STRATEGY) for g in groups for m in g]
    contested = {id(g) for groups in claims.values() if len(groups) > 1 for g in groups}
    seen: set[int] = set()
    for groups in claims.values():
        for g in groups:
            if id(g) not in seen and id(g) not in contested:
                matches += g
            seen.add(id(g))
    matched = {m.target for m in matches}
    abstentions = [a for a in abstentions if a.target not in matched]
    logger.debug("fused: %d matches, %d abstentions", len(matches), len(abstentions))
    return StrategyResult(matches=_in_order(matches, ctx.open_targets), abstentions=_dedupe(abstentions))


def _pairs(
    fused_side: list[FusedKey], groups: list[PartGroup], abstentions: list[Abstain], *, fused_is_target: bool
) -> list[tuple[FusedKey, PartGroup]]:
    """Each fused key with the one group whose module lines up (tiers in the module docstring)."""
    by_index = _index_bijection(fused_side, groups)
    lookup = _GroupIndex(groups)
    out: list[tuple[FusedKey, PartGroup]] = []
    for fused in fused_side:
        tiers = (
            lookup.equal(fused.module),
            lookup.aligned(fused.module) if fused.module else (),
            lookup.same_indices(fused.module) if fused.kind in by_index else (),
        )
        fitting = ([g for g in tier if g.leaf == fused.leaf and _roles_fit(g, fused)] for tier in tiers)
        found = next((t for t in fitting if t), [])
        if len(found) == 1:
            out.append((fused, found[0]))
        elif found:
            candidates = [k for g in found for k in g.all_keys()]
            reason = f"several separate groups fit fused {fused.key!r}: {', '.join(candidates)}"
            if fused_is_target:
                abstentions.append(Abstain(fused.key, reason, tuple(candidates), STRATEGY))
            else:
                abstentions += [Abstain(k, reason, (fused.key,), STRATEGY) for k in candidates]
    rivals: dict[int, list[FusedKey]] = defaultdict(list)
    for fused, group in out:
        rivals[id(group)].append(fused)
    for fused, group in out:
        if len(rivals[id(group)]) > 1:
            names = tuple(f.key for f in rivals[id(group)])
            reason = f"several fused candidates: {', '.join(names)}"
            if fused_is_target:
                abstentions.append(Abstain(fused.key, reason, group.all_keys(), STRATEGY))
            else:
                abstentions += [Abstain(k, reason, names, STRATEGY) for k in group.all_keys()]
    return [(f, g) for f, g in out if len(rivals[id(g)]) == 1]


class _GroupIndex:
    """The groups by module path, by path suffix and by container indices, each lookup in group order.

    One lookup per fused key, never a scan of every group: a model with a
    thousand attention layers pairs in linear time.
    """

    def __init__(self, groups: Sequence[PartGroup]) -> None:
        self.groups = groups
        self.by_module: dict[str, list[int]] = defaultdict(list)
        self.by_suffix: dict[str, list[int]] = defaultdict(list)  # x -> groups whose module ends with "." + x
        self.by_indices: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, g in enumerate(groups):
            self.by_module[g.module].append(i)
            self.by_indices[_indices(g.module)].append(i)
            for x in _proper_suffixes(g.module):
                self.by_suffix[x].append(i)

    def _pick(self, indices: Iterable[int]) -> list[PartGroup]:
        return [self.groups[i] for i in sorted(set(indices))]

    def equal(self, module: str) -> list[PartGroup]:
        return self._pick(self.by_module.get(module, ()))

    def aligned(self, module: str) -> list[PartGroup]:
        """Groups under a non-empty path equal to ``module``, or equal after a wrapper prefix on one side."""
        hits = [*self.by_module.get(module, ()), *self.by_suffix.get(module, ())]
        for x in _proper_suffixes(module):
            hits += self.by_module.get(x, ())
        return [g for g in self._pick(hits) if g.module]

    def same_indices(self, module: str) -> list[PartGroup]:
        return self._pick(self.by_indices.get(_indices(module), ()))


def _proper_suffixes(path: str) -> list[str]:
    """``"a.b.c"`` -> ``["b.c", "c"]``: what ``path`` ends with after a dot."""
    out = []
    dot = path.find(".")
    while dot >= 0:
        out.append(path[dot + 1 :])
        dot = path.find(".", dot + 1)
    return out


def _roles_fit(group: PartGroup, fused: FusedKey) -> bool:
    """The group's roles are the fused roles, or a subset of two or more (a part is missing)."""
    return group.roles <= set(fused.roles) and (group.roles == set(fused.roles) or len(group.roles) >= 2)


def _index_bijection(fused_side: list[FusedKey], groups: list[PartGroup]) -> set[tuple[str, tuple[str, ...]]]:
    """Fused kinds whose container indices pair one-to-one with the groups' (tier 3 applies to these)."""
    ok: set[tuple[str, tuple[str, ...]]] = set()
    for kind in {f.kind for f in fused_side}:
        f_idx = Counter(_indices(f.module) for f in fused_side if f.kind == kind)
        g_idx = Counter(_indices(g.module) for g in groups if g.leaf == kind[0] and g.roles == set(kind[1]))
        if f_idx and max(f_idx.values()) == 1 and g_idx and max(g_idx.values()) == 1 and set(f_idx) == set(g_idx):
            ok.add(kind)
    return ok


def _indices(module: str) -> tuple[int, ...]:
    return numeric_components(module) if module else ()


def _problem(fused: FusedKey, group: PartGroup, ctx: MatchContext, *, fused_is_target: bool) -> str:
    """Why ``fused`` and ``group`` cannot pair (missing or unclear parts, shapes), or ``""``."""
    side = "source" if fused_is_target else "target"
    unclear = [(r, ks) for r, ks in group.parts if len(ks) > 1]
    if unclear:
        listed = "; ".join(f"{r}: {', '.join(ks)}" for r, ks in unclear)
        return f"the {side} has several keys for one role of {fused.key!r} ({listed}); map them with key_map="
    absent = [r for r in fused.roles if group.key(r) is None]
    if absent:
        where = group.module or "(root)"
        return f"{fused.key} is fused but the {side} has no {', '.join(absent)} {fused.leaf} in {where!r}"
    keys = [group.key(r) or "" for r in fused.roles]
    part_shapes = [(ctx.source[k] if fused_is_target else ctx.target.tensors[k]).shape for k in keys]
    whole = (ctx.target.tensors[fused.key] if fused_is_target else ctx.source[fused.key]).shape
    return _sum_problem(tuple(whole), [tuple(s) for s in part_shapes], fused.key, keys)


def _sum_problem(whole: tuple[int, ...], shapes: list[tuple[int, ...]], fused_key: str, keys: Sequence[str]) -> str:
    rest = {s[1:] for s in shapes}
    if not whole or rest != {whole[1:]} or any(not s for s in shapes) or sum(s[0] for s in shapes) != whole[0]:
        listed = ", ".join(f"{k} {s}" for k, s in zip(keys, shapes, strict=True))
        return f"shapes do not add up: {fused_key} {whole} vs {listed}"
    return ""


def _in_order(matches: list[Match], order: list[str]) -> list[Match]:
    rank = {k: i for i, k in enumerate(order)}
    return sorted(matches, key=lambda m: rank.get(m.target, len(rank)))


def _dedupe(items: list[Abstain]) -> list[Abstain]:
    return list({a.target: a for a in items}.values())
