"""Structural alignment: match modules by their place in the network when names do not line up.

For checkpoints from another library (``_blocks.7._depthwise_conv`` against
``blocks.2.1.conv_dw``), names say little; shapes in order say a lot. This
strategy:

1. groups each side's open tensors by owning module and gives every module a
   leaf-name-blind *signature* (shapes and dtype kinds);
2. aligns the two module sequences in order by dynamic programming
   (:mod:`~weightsurgery.match.structure_align`), gaps allowed on both sides,
   so inserted and removed modules, new heads, extra blocks and backbone
   slices cost nothing. Every aligned module scores one unit, whatever its
   tensor count; name similarity (:mod:`~weightsurgery.match.tokens`) only
   breaks ties between alignments of equal structure;
3. keeps a module pair only if *every* optimal alignment makes it, and it sits
   in a run of at least :data:`MIN_RUN` consecutive aligned modules (an anchor);
4. pairs same-signature siblings whose order tells nothing (``q``, ``k``,
   ``v``) by names, or not at all (:mod:`~weightsurgery.match.structure_siblings`);
5. in module order, withdraws a pair that order alone chose among *open
   twins* (below);
6. when a side's keys are sorted (a safetensors file), trusts the
   numeric-aware name order where it provably is module order
   (:func:`~weightsurgery.match.structure_groups.names_give_order`: numbered
   siblings, and named ones only where their order cannot mislead); otherwise
   it aligns numbered containers instead and pairs the modules inside them
   (:mod:`~weightsurgery.match.structure_bags`). A sorted side is always
   aligned in numeric-aware order (``features.2`` before ``features.10``), and
   a pair inside a container with an identical, wholly unpaired twin is
   withdrawn there: one source block against two, order only guessed which;
7. matches a leftover module whose signature is unique on both sides, if it
   holds a weight of two or more dimensions or the names agree (``conv_stem``
   sorts after ``blocks``); a module withdrawn or reported ambiguous is never
   a leftover, so this elimination builds on certain pairs only;
8. loads nothing unless the two sides are clearly related: at least
   :data:`MIN_COVERAGE` of the smaller side explained, with an anchor,
   prior name matches, or every open module explained.

What evidence is enough. Order pairs two same-shaped modules only as far as
both sides order them alike, and libraries do not always: torchvision's RegNet
registers the shortcut (a 1x1 conv and a norm) before the branch whose first
1x1 conv and norm have the same shapes; timm registers it last. Shapes cannot
tell such a reordering from a shortcut dropped on one side and added on the
other, so the alignment must not be asked to: (a) scoring modules, not
tensors, keeps a norm's four vectors from outvoting a conv, which turned that
reordering into one strictly best (and wrong) alignment; the reordering then
shows as a tie, reported as ambiguous. (b) A pair whose nearest same-shaped
neighbour is left open on *both* sides, an open twin, could have been either
twin had the orders differed; it is withdrawn unless names pick it
(``downsample``/``shortcut``), and its modules are closed to later steps.

What it cannot tell apart it leaves open, with an
:class:`~weightsurgery.match.base.Abstain` naming the candidates.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from weightsurgery.match.base import Abstain, Match, MatchContext, StrategyResult
from weightsurgery.match.order import looks_sorted
from weightsurgery.match.structure_align import Cells, align_band
from weightsurgery.match.structure_bags import align_bags
from weightsurgery.match.structure_groups import Group, build_groups, describe, names_give_order, sequence
from weightsurgery.match.structure_leaves import counterpart, pair_leaves
from weightsurgery.match.structure_regions import beside_idle_twins, crossing, pair_in_regions
from weightsurgery.match.structure_siblings import mutual_best, open_twins, resolve_siblings
from weightsurgery.match.tokens import concepts, name_similarity, numeric_components

__all__ = ["MIN_COVERAGE", "MIN_RUN", "match_structure"]

logger = logging.getLogger(__name__)

STRATEGY = "structure"

#: Consecutive aligned modules that anchor an alignment.
MIN_RUN = 3

#: The fraction of the smaller side that must be explained before anything loads.
MIN_COVERAGE = 0.5

_NAME_SCALE = 64  # name evidence per pair, in integer units (< one structural unit in total)


@dataclass
class _Pair:
    t: Group
    s: Group
    evidence: str
    anchored: bool = False  # in a run of aligned neighbours (not a lone unique module)
    region: bool = False  # paired inside containers that other pairs tie together


@dataclass
class _Outcome:
    """Module pairs accepted so far and the reasons for the ones refused.

    Attributes:
        accepted: module pairs to load.
        abstentions: reasons for the modules left open.
        settled_t: target groups accepted or reported ambiguous (by ``Group.index``).
        settled_s: source groups accepted or contested.
        tied: alignment ties per target group, reported unless a unique signature settles them.
    """

    accepted: list[_Pair]
    abstentions: list[Abstain]
    settled_t: set[int]
    settled_s: set[int]
    tied: dict[int, list[Abstain]] = field(default_factory=dict)


def match_structure(ctx: MatchContext) -> StrategyResult:
    """Align the open modules of both sides by structure and claim the certain pairs.

    Args:
        ctx: the keys still open, with shapes; the target's module paths.

    Returns:
        Matches (strategy ``"structure"``) with their evidence, and abstentions
        naming the candidates of every module left open that had some.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from weightsurgery.match.base import MatchContext
        >>> from weightsurgery.match.target import TargetSpec
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> net = lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
        >>> target = TargetSpec.from_module(net())
        >>> source = {f"stage.{k}": TensorMeta.of(v) for k, v in net().state_dict().items()}
        >>> ctx = MatchContext(source, target, list(target.tensors), list(source))
        >>> result = match_structure(ctx)
        >>> len(result.matches) == len(target.tensors), result.matches[0].source
        (True, 'stage.0.weight')
    """
    spec = ctx.target.tensors
    t_all = build_groups(ctx.open_targets, ctx.target.metas(), lambda k: (spec[k].module, spec[k].name))
    s_all = build_groups(ctx.open_sources, ctx.source, _source_owner)
    if not t_all or not s_all:
        return StrategyResult()
    t_sorted, s_sorted = looks_sorted(list(spec)), looks_sorted(list(ctx.source))
    t_trusted = not t_sorted or names_give_order(t_all)
    s_trusted = not s_sorted or names_give_order(s_all)
    # A sorted side is always re-ordered numeric-aware (features.2 before features.10), even where
    # that order is trusted: its listed order puts features.10 first and shifts equal blocks by one.
    ts, ss = sequence(t_all, trusted=not t_sorted), sequence(s_all, trusted=not s_sorted)
    if t_trusted and s_trusted:
        outcome = _align(ts, ss)
    else:  # an order rebuilt from sorted names is real only where numbers give it
        outcome = _align_containers(ts, ss, t_trusted=t_trusted, s_trusted=s_trusted)
    _withdraw_crossing(outcome, ts, ss)
    if t_sorted or s_sorted:
        _withdraw_beside_idle_twins(outcome, ts, ss)
    ordered = t_trusted and s_trusted
    prior = _prior_modules(ctx)
    outcome.accepted += _in_regions(ts, ss, outcome, prior, ordered=ordered)
    outcome.accepted += _residual(ts, ss, outcome)
    _withdraw_crossing(outcome, ts, ss)
    outcome.accepted += _in_regions(ts, ss, outcome, prior, ordered=ordered)
    for index, refusals in outcome.tied.items():
        if index not in outcome.settled_t:
            outcome.abstentions += refusals
            outcome.settled_t.add(index)
    outcome.abstentions += _unconfirmed(ts, ss, outcome)
    matches = _tensor_matches(outcome)

    if not _related(ctx, matches, outcome.accepted, ts, ss):
        logger.info(
            "structure: source and target look unrelated (%d of %d target tensors aligned)", len(matches), len(spec)
        )
        reason = (
            f"unrelated: structural alignment explains too little of the smaller side (under {MIN_COVERAGE:.0%}) "
            "to trust the pairing with {source}; map it explicitly with key_map= if it is right"
        )
        refused = [Abstain(m.target, reason.format(source=m.source), (m.source,), STRATEGY) for m in matches]
        said = refused + outcome.abstentions
        return StrategyResult((), said + _unexplained(ctx, (), said))
    outcome.abstentions += _unexplained(ctx, matches, outcome.abstentions)
    order = {k: n for n, k in enumerate(ctx.open_targets)}
    matches.sort(key=lambda m: order[m.target])
    logger.debug("structure: %d matches, %d abstentions", len(matches), len(outcome.abstentions))
    return StrategyResult(matches, outcome.abstentions)


def _align(ts: Sequence[Group], ss: Sequence[Group]) -> _Outcome:
    """Both sides in module order: pairs every optimal alignment agrees on, siblings sorted out, anchors marked."""
    cells, w_max = _cells(ts, ss)
    alignment = align_band(len(ts), len(ss), cells, w_max=w_max)
    certain = {i: j for i in range(len(ts)) if (j := alignment.certain(i)) is not None}
    runs = _run_lengths(certain)  # a doubted pair still shows where the two orders agree around it
    doubted = _withdraw_open_twins(certain, ts, ss)
    whole = len(certain) == len(ts) == len(ss)
    pairs: list[_Pair] = []
    for i, j in certain.items():
        span = "aligning every open module" if whole else f"in a run of {runs[i]} aligned modules"
        evidence = f"aligned module {_p(ss[j].path)} <-> {_p(ts[i].path)} ({describe(ts[i].signature)}) {span}"
        pairs.append(_Pair(ts[i], ss[j], evidence, runs[i] >= MIN_RUN or whole))

    siblings = resolve_siblings([(p.t, p.s) for p in pairs], ts, ss)
    kept = [pairs[n] for n in siblings.kept]
    for t, s, members in siblings.named:
        among = ", ".join(_p(pairs[n].s.path) for n in members)
        evidence = (
            f"aligned module {_p(s.path)} <-> {_p(t.path)} ({describe(t.signature)}); names pick it among {among}"
        )
        kept.append(_Pair(t, s, evidence, all(pairs[n].anchored for n in members)))
    outcome = _settle([p for p in kept if p.anchored], siblings.contested)
    _settle_doubted(outcome, doubted)
    for i, t in enumerate(ts):
        if i not in certain and alignment.partners[i] and t.index not in outcome.settled_t:
            rivals = [ss[j] for j in alignment.partners[i]]
            outcome.tied[t.index] = _abstain_groups(
                [t],
                rivals,
                f"ambiguous: module {_p(t.path)} ({describe(t.signature)}) aligns equally well with "
                f"{', '.join(_p(g.path) for g in rivals)}" + (" or with nothing" if alignment.gap[i] else ""),
            )
    return outcome


def _withdraw_open_twins(
    certain: dict[int, int], ts: Sequence[Group], ss: Sequence[Group]
) -> list[tuple[list[Group], list[Group], str]]:
    """Drop from ``certain`` the pairs only order chose among same-shaped modules left open nearby.

    A pair stays when names pick it among its twins (``downsample`` and
    ``shortcut``). The rest are returned as ``(targets, sources, reason)`` to
    report and close. Runs are counted before this: a withdrawn pair still
    shows that the orders agree around it, but never loads itself.
    """
    out: list[tuple[list[Group], list[Group], str]] = []
    for i, (near_t, near_s) in open_twins(certain, ts, ss).items():
        t, s = ts[i], ss[certain[i]]
        if (t, s) in mutual_best([t, *near_t], [s, *near_s]):
            continue
        del certain[i]
        rivals = [s, *near_s]
        reason = (
            f"ambiguous: module {_p(t.path)} ({describe(t.signature)}) aligns with {_p(s.path)} by order alone, "
            f"but same-shaped {', '.join(_p(g.path) for g in near_t)} and {', '.join(_p(g.path) for g in near_s)} "
            "are left open beside them, so the two sides may order these modules differently"
        )
        out.append(([t], rivals, reason))
    return out


def _settle_doubted(outcome: _Outcome, doubted: Sequence[tuple[list[Group], list[Group], str]]) -> None:
    """Report withdrawn pairs as ambiguous and keep their modules from any later pairing."""
    for t_set, s_set, reason in doubted:
        outcome.abstentions += _abstain_groups(t_set, s_set, reason)
        outcome.settled_t.update(g.index for g in t_set)
        outcome.settled_s.update(g.index for g in s_set)


def _align_containers(ts: Sequence[Group], ss: Sequence[Group], *, t_trusted: bool, s_trusted: bool) -> _Outcome:
    """A side's order was rebuilt from names: align numbered containers, then the modules inside."""
    bags = align_bags(ts, ss, t_trusted=t_trusted, s_trusted=s_trusted, min_run=MIN_RUN)
    return _settle([_Pair(t, s, evidence, True) for t, s, evidence, anchored in bags.pairs if anchored], bags.contested)


def _settle(accepted: list[_Pair], contested: Sequence[tuple[Sequence[Group], Sequence[Group]]]) -> _Outcome:
    """Start an outcome from anchored pairs and the same-shaped sets nothing tells apart."""
    outcome = _Outcome(accepted, [], {p.t.index for p in accepted}, {p.s.index for p in accepted})
    for t_set, s_set in contested:
        outcome.abstentions += _abstain_groups(
            t_set,
            s_set,
            f"ambiguous: same-shaped modules {', '.join(_p(g.path) for g in t_set)} and "
            f"{', '.join(_p(g.path) for g in s_set)} sit in no telling order and their names do not pair them",
        )
        outcome.settled_t.update(g.index for g in t_set)
        outcome.settled_s.update(g.index for g in s_set)
    return outcome


def _withdraw_crossing(outcome: _Outcome, ts: Sequence[Group], ss: Sequence[Group]) -> None:
    """Withdraw accepted pairs that cross the containers the other pairs tie together.

    Their modules stay closed to elimination, but a region may pair them again.
    """
    paired_t = {p.t.index for p in outcome.accepted}
    paired_s = {p.s.index for p in outcome.accepted}
    open_t = [g for g in ts if g.index not in paired_t]
    open_s = [g for g in ss if g.index not in paired_s]
    bad = crossing([(p.t, p.s) for p in outcome.accepted], open_t, open_s)
    _withdraw(outcome, bad, "by order, but the modules around each of them pair with other containers")


def _withdraw_beside_idle_twins(outcome: _Outcome, ts: Sequence[Group], ss: Sequence[Group]) -> None:
    """Withdraw pairs whose container has an identical, wholly unpaired twin (a sorted side's order guesses there)."""
    bad = beside_idle_twins([(p.t, p.s) for p in outcome.accepted], ts, ss)
    why = "by an order rebuilt from sorted names, but its container has an identical twin that nothing pairs"
    _withdraw(outcome, bad, why)


def _withdraw(outcome: _Outcome, bad: Sequence[int], why: str) -> None:
    """Drop the accepted pairs ``bad`` (indices), each reported as withdrawn ``why``."""
    for n in sorted(bad):
        p = outcome.accepted[n]
        reason = f"withdrawn: module {_p(p.t.path)} ({describe(p.t.signature)}) aligns with {_p(p.s.path)} {why}"
        outcome.abstentions += _abstain_groups([p.t], [p.s], reason)
    gone = set(bad)
    outcome.accepted = [p for n, p in enumerate(outcome.accepted) if n not in gone]


def _in_regions(
    ts: Sequence[Group], ss: Sequence[Group], outcome: _Outcome, prior: Sequence[tuple[str, str]], *, ordered: bool
) -> list[_Pair]:
    """Open modules paired inside containers that the accepted pairs tie together (:mod:`structure_regions`)."""
    found = pair_in_regions(ts, ss, [(p.t, p.s) for p in outcome.accepted], prior=prior, ordered=ordered)
    out = []
    for t, s, evidence in found:
        out.append(_Pair(t, s, f"aligned module {_p(s.path)} <-> {_p(t.path)} {evidence}", region=True))
        outcome.settled_t.add(t.index)
        outcome.settled_s.add(s.index)
    return out


def _prior_modules(ctx: MatchContext) -> list[tuple[str, str]]:
    """Module pairs behind the tensors earlier strategies loaded."""
    spec = ctx.target.tensors
    pairs = {(spec[t].module, s.rpartition(".")[0]) for t, s in ctx.matched.items() if t in spec}
    return sorted(pairs)


def _tensor_matches(outcome: _Outcome) -> list[Match]:
    """One match per tensor of every accepted module pair whose tensors pair up unambiguously."""
    matches: list[Match] = []
    for p in outcome.accepted:
        leaves = pair_leaves(p.t, p.s)
        if isinstance(leaves, str):
            reason = f"ambiguous tensors in {_p(p.t.path)} <-> {_p(p.s.path)}: {leaves}"
            outcome.abstentions += _abstain_groups([p.t], [p.s], reason)
            continue
        for t_key, s_key, renamed in leaves:
            matches.append(Match(t_key, s_key, STRATEGY, p.evidence + (f"; {renamed}" if renamed else "")))
    return matches


def _source_owner(key: str) -> tuple[str, str]:
    module, _, leaf = key.rpartition(".")
    return module, leaf


def _p(path: str) -> str:
    return path or "(root)"


def _cells(ts: Sequence[Group], ss: Sequence[Group]) -> tuple[Cells, int]:
    """Pair scores, as a function of index tensors: one unit per aligned module, names as a tie-breaker.

    Every module counts the same: a norm's four vectors are not four times the
    evidence of a conv's one kernel, or an alignment that skips the convs to
    pair every norm would win where a shortcut moved. Name evidence stays
    under one unit in total. Names are compared once per pair of concept sets
    (:func:`~weightsurgery.match.tokens.concepts`), not once per module pair,
    so a deep stack of repeated blocks costs a few comparisons.

    Returns:
        The cell function and the largest weight it can return.
    """
    unit = _NAME_SCALE * min(len(ts), len(ss)) + 1
    sig_ids: dict[object, int] = {}
    name_ids: dict[tuple[str, ...], int] = {}
    num_ids: dict[tuple[int, ...], int] = {}

    def ids(groups: Sequence[Group], empty_last: int) -> tuple[torch.Tensor, ...]:
        sig, name, num, last = [], [], [], []
        for g in groups:
            sig.append(sig_ids.setdefault(g.signature, len(sig_ids)))
            name.append(name_ids.setdefault(tuple(sorted(concepts(g.path))), len(name_ids)))
            numbers = numeric_components(g.path)
            num.append(num_ids.setdefault(numbers, len(num_ids)))
            last.append(numbers[-1] if numbers else empty_last)
        return tuple(torch.tensor(x, dtype=torch.int64) for x in (sig, name, num, last))

    t_sig, t_name, t_num, t_last = ids(ts, -1)
    s_sig, s_name, s_num, s_last = ids(ss, -2)  # an empty index never agrees in its last number
    names = list(name_ids)
    width = len(names)

    def cells(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        out = torch.full(rows.shape, -1, dtype=torch.int64)
        same = t_sig[rows] == s_sig[cols]
        r, c = rows[same], cols[same]
        combo = t_name[r] * width + s_name[c]
        uniq, inverse = torch.unique(combo, return_inverse=True)
        sim = torch.tensor(
            [_similarity(names[u // width], names[u % width]) for u in uniq.tolist()], dtype=torch.float64
        )
        agree = torch.where(
            t_num[r] == s_num[c], 1.0, torch.where(t_last[r] == s_last[c], 0.5, 0.0)
        ).to(torch.float64)
        score = 0.75 * sim[inverse] + 0.25 * agree
        out[same] = unit + torch.round((_NAME_SCALE - 1) * score).to(torch.int64)
        return out

    return cells, unit + _NAME_SCALE - 1


def _similarity(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    """:func:`~weightsurgery.match.tokens.name_similarity` of two concept multisets."""
    if not a and not b:
        return 0.0
    ca, cb = Counter(a), Counter(b)
    return 2.0 * sum(min(n, cb[k]) for k, n in ca.items()) / (len(a) + len(b))


def _run_lengths(pairs: dict[int, int]) -> dict[int, int]:
    """Row -> length of the run of consecutive aligned pairs it belongs to."""
    out: dict[int, int] = {}
    run: list[int] = []
    for i in sorted(pairs):
        if run and not (i == run[-1] + 1 and pairs[i] == pairs[run[-1]] + 1):
            out.update(dict.fromkeys(run, len(run)))
            run = []
        run.append(i)
    out.update(dict.fromkeys(run, len(run)))
    return out


def _residual(ts: Sequence[Group], ss: Sequence[Group], outcome: _Outcome) -> list[_Pair]:
    """Leftover modules whose signature is unique on both sides, when shape or names make it telling.

    Elimination assumes the two leftovers are the same part. It does not pair
    a module whose container (below the root) keeps another leftover that
    nothing on the other side could match, unless names tie the other module
    to that container (``classifier`` and ``classifier.3``): such a container
    is a part the other side lacks (``cls.predictions.transform`` of a
    masked-LM head, holding a ``dense`` shaped like the backbone's ``pooler.dense``).
    """
    left_t = [t for t in ts if t.index not in outcome.settled_t]
    left_s = [s for s in ss if s.index not in outcome.settled_s]
    count_t = Counter(t.signature for t in left_t)
    count_s = Counter(s.signature for s in left_s)
    foreign_t, foreign_s = _foreign_parents(left_t, count_s), _foreign_parents(left_s, count_t)
    by_sig = {s.signature: s for s in left_s}
    out: list[_Pair] = []
    for t in left_t:
        if count_t[t.signature] != 1 or count_s[t.signature] != 1:
            continue
        s = by_sig[t.signature]
        if _foreign(t, s, foreign_t) or _foreign(s, t, foreign_s):
            continue
        if t.distinctive:
            why = "a weight no other module has"
        elif name_similarity(t.path.rpartition(".")[2], s.path.rpartition(".")[2]) == 1.0:
            why = "names agree"
        else:
            continue
        evidence = f"only module left with signature {describe(t.signature)} on both sides"
        out.append(_Pair(t, s, f"{evidence}: {_p(s.path)} <-> {_p(t.path)} ({why})"))
        outcome.settled_t.add(t.index)
        outcome.settled_s.add(s.index)
    return out


def _foreign_parents(left: Sequence[Group], other: Counter[object]) -> set[str]:
    """Containers below the root that keep a leftover module whose signature the other side has not left."""
    return {g.parent for g in left if g.parent and other[g.signature] == 0}


def _foreign(g: Group, other: Group, foreign: set[str]) -> bool:
    """``g`` sits in a container the other side lacks, and ``other``'s name does not point there."""
    return g.parent in foreign and name_similarity(other.path, g.parent) == 0.0


def _unconfirmed(ts: Sequence[Group], ss: Sequence[Group], outcome: _Outcome) -> list[Abstain]:
    """Reasons for the modules left open that had same-signature candidates."""
    taken = {p.s.index for p in outcome.accepted}
    free: dict[object, list[Group]] = {}
    for s in ss:
        if s.index not in taken:
            free.setdefault(s.signature, []).append(s)
    out: list[Abstain] = []
    for t in ts:
        rivals = free.get(t.signature)
        if t.index in outcome.settled_t or not rivals:
            continue
        out += _abstain_groups(
            [t],
            rivals,
            f"unconfirmed: module {_p(t.path)} ({describe(t.signature)}) has the signature of "
            f"{', '.join(_p(g.path) for g in rivals[:4])}{' ...' if len(rivals) > 4 else ''}, but no run of aligned "
            "neighbours, unique weight shape or name confirms a pairing",
        )
    return out


def _unexplained(ctx: MatchContext, matches: Sequence[Match], abstentions: Sequence[Abstain]) -> list[Abstain]:
    """A reason, naming the candidates, for every open key left without a match or a reason.

    Shown only where no earlier strategy gave one: "no candidate" is said only
    when no unused source tensor has the key's shape.
    """
    said = {m.target for m in matches} | {a.target for a in abstentions}
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for key in ctx.open_sources:
        by_shape.setdefault(tuple(ctx.source[key].shape), []).append(key)
    out = []
    for key in ctx.open_targets:
        if key in said:
            continue
        shape = tuple(ctx.target.tensors[key].shape)
        rivals = by_shape.get(shape, [])
        if not rivals:
            reason = f"no candidate: no unused source tensor is sized {shape}"
        else:
            shown = ", ".join(rivals[:4]) + (" ..." if len(rivals) > 4 else "")
            reason = (
                f"unpaired: unused source tensors sized {shape} exist ({shown}), but no name, alignment, "
                f"container or unique size pairs {key} with one; map it explicitly with rename= if you know the source"
            )
        out.append(Abstain(key, reason, tuple(rivals[:8]), STRATEGY, fallback=True))
    return out


def _related(
    ctx: MatchContext, matches: Sequence[Match], accepted: Sequence[_Pair], ts: Sequence[Group], ss: Sequence[Group]
) -> bool:
    """Whether enough is explained to trust any of it (unrelated pairs collapse here)."""
    smaller = min(len(ctx.target.tensors), len(ctx.source))
    claimed = len(ctx.target.tensors) - len(ctx.open_targets)
    # pairs found inside tied containers lean on other pairs: they do not make a pairing look related
    leaning = {k for p in accepted if p.region for k in (*p.t.leaves.values(), *p.t.counters.values())}
    own = sum(1 for m in matches if m.target not in leaning)
    if smaller == 0 or (claimed + own) / smaller < MIN_COVERAGE:
        return False
    anchored = any(p.anchored for p in accepted)
    explained = len(accepted) == min(len(ts), len(ss))
    return anchored or claimed / smaller >= MIN_COVERAGE or explained


def _abstain_groups(t_set: Sequence[Group], s_set: Sequence[Group], reason: str) -> list[Abstain]:
    out = []
    for t in t_set:
        for leaf, key in {**t.leaves, **t.counters}.items():
            candidates = tuple(c for s in s_set if (c := counterpart(leaf, t, s)) is not None)
            out.append(
                Abstain(
                    key, f"{reason}; map {key} explicitly with key_map= if you know the source", candidates, STRATEGY
                )
            )
    return out
