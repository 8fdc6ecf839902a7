"""Matching strategy ``fused``: separate projections to and from a fused one.

Pairs, per module and per tensor (``weight`` and ``bias`` separately):

* attention: ``{q,k,v}``, ``{query,key,value}`` or ``{q_proj,k_proj,v_proj}``
  with ``qkv``, ``qkv_proj`` or ``torch.nn.MultiheadAttention``'s ``in_proj_weight``/``in_proj_bias``;
* gated MLP: ``{gate_proj,up_proj}`` with ``gate_up_proj``.

A pair is claimed only when the module paths line up (equal, or equal after a
wrapper prefix on one side, e.g. ``module.``), every part is present and
unclaimed, and the shapes add up exactly: the parts' dim 0 sums to the fused
dim 0 and every other dim is equal. Fusing yields one match naming all parts
(adapter ``fuse``); splitting yields one match per part, each reading the fused
key (adapter ``split`` with ``{"index": i, "sizes": [...], "dim": 0}``).
Where names line up but shapes, parts or candidates do not, the strategy
abstains with the reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from weightsurgery.match.base import Abstain, Match, MatchContext, StrategyResult

__all__ = ["FAMILIES", "match_fused"]

STRATEGY = "fused"

#: family -> (the separate part-name tuples, the fused module names). ``in_proj`` is
#: MultiheadAttention's ``in_proj_weight``/``in_proj_bias`` on the module itself.
FAMILIES: Mapping[str, tuple[tuple[tuple[str, ...], ...], tuple[str, ...]]] = {
    "attention": (
        (("q", "k", "v"), ("query", "key", "value"), ("q_proj", "k_proj", "v_proj")),
        ("qkv", "qkv_proj", "in_proj"),
    ),
    "gated-mlp": ((("gate_proj", "up_proj"),), ("gate_up_proj",)),
}
_LEAVES = ("weight", "bias")


@dataclass(frozen=True)
class _Fused:
    family: str
    module: str  # path of the module owning the projection(s)
    leaf: str  # weight | bias
    key: str


@dataclass(frozen=True)
class _Parts:
    family: str
    module: str
    leaf: str
    names: tuple[str, ...]
    keys: tuple[str | None, ...]  # one per name; None where absent

    @property
    def complete(self) -> bool:
        return None not in self.keys


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
        ...        for p in "qkv" for t in ("weight", "bias")}
        >>> ctx = MatchContext(src, target, list(target.tensors), list(src))
        >>> for m in match_fused(ctx).matches:
        ...     print(m.target, m.sources, m.adapter)
        in_proj_weight ('q.weight', 'k.weight', 'v.weight') fuse
        in_proj_bias ('q.bias', 'k.bias', 'v.bias') fuse
    """
    src_fused, src_parts = _scan(ctx.open_sources)
    tgt_fused, tgt_parts = _scan(ctx.open_targets)
    matches: list[Match] = []
    abstentions: list[Abstain] = []
    claims: dict[str, list[list[Match]]] = defaultdict(list)  # source key -> candidate match groups using it

    for fused in tgt_fused:  # fuse: separate sources -> fused target
        group = _pick(fused.module, [p for p in src_parts if (p.family, p.leaf) == (fused.family, fused.leaf)])
        if isinstance(group, list):
            if group:
                abstentions.append(_ambiguous(fused.key, [k for g in group for k in g.keys if k]))
            continue
        if group is None:
            continue
        why = _fuse_problem(fused, group, ctx)
        if why:
            abstentions.append(Abstain(fused.key, why, tuple(k for k in group.keys if k), STRATEGY))
            continue
        keys = tuple(k for k in group.keys if k is not None)
        m = Match(
            target=fused.key,
            source=keys[0],
            strategy=STRATEGY,
            sources=keys,
            adapter="fuse",
            adapter_args={"dim": 0},
            evidence=f"fused {', '.join(group.names)} of {group.module or '(root)'!r}",
        )
        for k in keys:
            claims[k].append([m])

    for parts in tgt_parts:  # split: fused source -> separate targets
        found = _pick(parts.module, [f for f in src_fused if (f.family, f.leaf) == (parts.family, parts.leaf)])
        if isinstance(found, list):
            if found:
                for k in parts.keys:
                    if k:
                        abstentions.append(_ambiguous(k, [f.key for f in found]))
            continue
        if found is None:
            continue
        why = _split_problem(parts, found, ctx)
        if why:
            abstentions += [Abstain(k, why, (found.key,), STRATEGY) for k in parts.keys if k]
            continue
        sizes = [ctx.target.tensors[k].shape[0] for k in parts.keys if k]
        group_matches = [
            Match(
                target=k,
                source=found.key,
                strategy=STRATEGY,
                adapter="split",
                adapter_args={"index": i, "sizes": sizes, "dim": 0},
                evidence=f"part {i} ({parts.names[i]}) of fused {found.key!r}",
            )
            for i, k in enumerate(parts.keys)
            if k
        ]
        claims[found.key].append(group_matches)

    taken: set[int] = set()
    for key, groups in claims.items():
        if len(groups) > 1:
            for g in groups:
                taken.add(id(g[0]))
                abstentions += [
                    Abstain(
                        m.target,
                        f"source {key!r} fits several fused groups; add a rename or AdaptRule",
                        (key,),
                        STRATEGY,
                    )
                    for m in g
                ]
    seen: set[int] = set()
    for groups in claims.values():
        for g in groups:
            if id(g[0]) not in taken and id(g[0]) not in seen:
                seen.add(id(g[0]))
                matches += g
    return StrategyResult(matches=_in_order(matches, ctx.open_targets), abstentions=_dedupe(abstentions))


def _scan(keys: Iterable[str]) -> tuple[list[_Fused], list[_Parts]]:
    """Find fused projections and groups of separate parts among ``keys``."""
    fused: list[_Fused] = []
    found: dict[tuple[str, str, str, tuple[str, ...]], dict[str, str]] = defaultdict(dict)
    for key in keys:
        module, _, leaf = key.rpartition(".")
        if leaf in ("in_proj_weight", "in_proj_bias"):  # nn.MultiheadAttention
            fused.append(_Fused("attention", module, leaf.removeprefix("in_proj_"), key))
            continue
        if leaf not in _LEAVES:
            continue
        parent, _, name = module.rpartition(".")
        for family, (part_sets, fused_names) in FAMILIES.items():
            if name in fused_names and name != "in_proj":
                fused.append(_Fused(family, parent, leaf, key))
            for names in part_sets:
                if name in names:
                    found[(family, parent, leaf, names)][name] = key
    parts = [
        _Parts(family, module, leaf, names, tuple(by_name.get(n) for n in names))
        for (family, module, leaf, names), by_name in found.items()
    ]
    return fused, parts


def _aligned(a: str, b: str) -> bool:
    """Module paths equal, or equal after a wrapper prefix on one side."""
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def _pick(module: str, candidates: list) -> object:
    """The one candidate whose module lines up with ``module`` (exact first), a list if several, None if none."""
    exact = [c for c in candidates if c.module == module]
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        return exact
    near = [c for c in candidates if module and c.module and _aligned(c.module, module)]
    if len(near) == 1:
        return near[0]
    return near or None


def _fuse_problem(fused: _Fused, group: _Parts, ctx: MatchContext) -> str:
    if not group.complete:
        absent = [n for n, k in zip(group.names, group.keys, strict=True) if k is None]
        return f"{fused.key} is fused but the source has no {', '.join(absent)} {fused.leaf} in {group.module!r}"
    shapes = [ctx.source[k].shape for k in group.keys if k]
    return _sum_problem(ctx.target.tensors[fused.key].shape, shapes, fused.key, group.keys)


def _split_problem(parts: _Parts, fused: _Fused, ctx: MatchContext) -> str:
    if not parts.complete:
        absent = [n for n, k in zip(parts.names, parts.keys, strict=True) if k is None]
        return f"source {fused.key} is fused but the target has no {', '.join(absent)} {parts.leaf}"
    shapes = [ctx.target.tensors[k].shape for k in parts.keys if k]
    return _sum_problem(ctx.source[fused.key].shape, shapes, fused.key, parts.keys)


def _sum_problem(whole: tuple[int, ...], shapes: list[tuple[int, ...]], fused_key: str, keys: tuple) -> str:
    rest = {s[1:] for s in shapes}
    if not whole or rest != {whole[1:]} or any(not s for s in shapes) or sum(s[0] for s in shapes) != whole[0]:
        listed = ", ".join(f"{k} {tuple(s)}" for k, s in zip(keys, shapes, strict=True))
        return f"shapes do not add up: {fused_key} {tuple(whole)} vs {listed}"
    return ""


def _ambiguous(target: str, candidates: list[str]) -> Abstain:
    return Abstain(target, f"several fused candidates: {', '.join(candidates)}", tuple(candidates), STRATEGY)


def _in_order(matches: list[Match], order: list[str]) -> list[Match]:
    rank = {k: i for i, k in enumerate(order)}
    return sorted(matches, key=lambda m: rank.get(m.target, len(rank)))


def _dedupe(items: list[Abstain]) -> list[Abstain]:
    return list({a.target: a for a in items}.values())
