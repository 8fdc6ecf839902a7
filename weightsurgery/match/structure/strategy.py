"""Structural alignment, step by step: align, settle siblings and twins, withdraw, pair in regions."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from weightsurgery.match.base import Abstain, Match, MatchContext, StrategyResult
from weightsurgery.match.order import looks_sorted
from weightsurgery.match.structure.align import align_band
from weightsurgery.match.structure.bags import align_bags
from weightsurgery.match.structure.cells import cells_of, run_lengths
from weightsurgery.match.structure.groups import Group, build_groups, describe, names_give_order, sequence
from weightsurgery.match.structure.leaves import pair_leaves
from weightsurgery.match.structure.outcome import (
    MIN_COVERAGE,
    MIN_RUN,
    STRATEGY,
    Outcome,
    Pair,
    abstain_groups,
    shown,
)
from weightsurgery.match.structure.regions import beside_idle_twins, crossing, pair_in_regions
from weightsurgery.match.structure.siblings import mutual_best, open_twins, resolve_siblings
from weightsurgery.match.structure.verdict import related, residual, unconfirmed, unexplained

__all__ = ["MIN_COVERAGE", "MIN_RUN", "match_structure"]

logger = logging.getLogger(__name__)


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
    outcome.accepted += residual(ts, ss, outcome)
    _withdraw_crossing(outcome, ts, ss)
    outcome.accepted += _in_regions(ts, ss, outcome, prior, ordered=ordered)
    for index, refusals in outcome.tied.items():
        if index not in outcome.settled_t:
            outcome.abstentions += refusals
            outcome.settled_t.add(index)
    outcome.abstentions += unconfirmed(ts, ss, outcome)
    matches = _tensor_matches(outcome)

    if not related(ctx, matches, outcome.accepted, ts, ss):
        logger.info(
            "structure: source and target look unrelated (%d of %d target tensors aligned)", len(matches), len(spec)
        )
        reason = (
            f"unrelated: structural alignment explains too little of the smaller side (under {MIN_COVERAGE:.0%}) "
            "to trust the pairing with {source}; map it explicitly with key_map= if it is right"
        )
        refused = [Abstain(m.target, reason.format(source=m.source), (m.source,), STRATEGY) for m in matches]
        said = refused + outcome.abstentions
        return StrategyResult((), said + unexplained(ctx, (), said))
    outcome.abstentions += unexplained(ctx, matches, outcome.abstentions)
    order = {k: n for n, k in enumerate(ctx.open_targets)}
    matches.sort(key=lambda m: order[m.target])
    logger.debug("structure: %d matches, %d abstentions", len(matches), len(outcome.abstentions))
    return StrategyResult(matches, outcome.abstentions)


def _align(ts: Sequence[Group], ss: Sequence[Group]) -> Outcome:
    """Both sides in module order: pairs every optimal alignment agrees on, siblings sorted out, anchors marked."""
    cells, w_max = cells_of(ts, ss)
    alignment = align_band(len(ts), len(ss), cells, w_max=w_max)
    certain = {i: j for i in range(len(ts)) if (j := alignment.certain(i)) is not None}
    runs = run_lengths(certain)  # a doubted pair still shows where the two orders agree around it
    doubted = _withdraw_open_twins(certain, ts, ss)
    whole = len(certain) == len(ts) == len(ss)
    pairs: list[Pair] = []
    for i, j in certain.items():
        span = "aligning every open module" if whole else f"in a run of {runs[i]} aligned modules"
        evidence = f"aligned module {shown(ss[j].path)} <-> {shown(ts[i].path)} ({describe(ts[i].signature)}) {span}"
        pairs.append(Pair(ts[i], ss[j], evidence, runs[i] >= MIN_RUN or whole))

    siblings = resolve_siblings([(p.t, p.s) for p in pairs], ts, ss)
    kept = [pairs[n] for n in siblings.kept]
    for t, s, members in siblings.named:
        among = ", ".join(shown(pairs[n].s.path) for n in members)
        evidence = (
            f"aligned module {shown(s.path)} <-> {shown(t.path)} ({describe(t.signature)}); names pick it among {among}"
        )
        kept.append(Pair(t, s, evidence, all(pairs[n].anchored for n in members)))
    outcome = _settle([p for p in kept if p.anchored], siblings.contested)
    _settle_doubted(outcome, doubted)
    for i, t in enumerate(ts):
        if i not in certain and alignment.partners[i] and t.index not in outcome.settled_t:
            rivals = [ss[j] for j in alignment.partners[i]]
            outcome.tied[t.index] = abstain_groups(
                [t],
                rivals,
                f"ambiguous: module {shown(t.path)} ({describe(t.signature)}) aligns equally well with "
                f"{', '.join(shown(g.path) for g in rivals)}" + (" or with nothing" if alignment.gap[i] else ""),
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
            f"ambiguous: module {shown(t.path)} ({describe(t.signature)}) aligns with {shown(s.path)} by order alone, "
            f"but same-shaped {', '.join(shown(g.path) for g in near_t)} and {', '.join(shown(g.path) for g in near_s)} "
            "are left open beside them, so the two sides may order these modules differently"
        )
        out.append(([t], rivals, reason))
    return out


def _settle_doubted(outcome: Outcome, doubted: Sequence[tuple[list[Group], list[Group], str]]) -> None:
    """Report withdrawn pairs as ambiguous and keep their modules from any later pairing."""
    for t_set, s_set, reason in doubted:
        outcome.abstentions += abstain_groups(t_set, s_set, reason)
        outcome.settled_t.update(g.index for g in t_set)
        outcome.settled_s.update(g.index for g in s_set)


def _align_containers(ts: Sequence[Group], ss: Sequence[Group], *, t_trusted: bool, s_trusted: bool) -> Outcome:
    """A side's order was rebuilt from names: align numbered containers, then the modules inside."""
    bags = align_bags(ts, ss, t_trusted=t_trusted, s_trusted=s_trusted, min_run=MIN_RUN)
    return _settle([Pair(t, s, evidence, True) for t, s, evidence, anchored in bags.pairs if anchored], bags.contested)


def _settle(accepted: list[Pair], contested: Sequence[tuple[Sequence[Group], Sequence[Group]]]) -> Outcome:
    """Start an outcome from anchored pairs and the same-shaped sets nothing tells apart."""
    outcome = Outcome(accepted, [], {p.t.index for p in accepted}, {p.s.index for p in accepted})
    for t_set, s_set in contested:
        outcome.abstentions += abstain_groups(
            t_set,
            s_set,
            f"ambiguous: same-shaped modules {', '.join(shown(g.path) for g in t_set)} and "
            f"{', '.join(shown(g.path) for g in s_set)} sit in no telling order and their names do not pair them",
        )
        outcome.settled_t.update(g.index for g in t_set)
        outcome.settled_s.update(g.index for g in s_set)
    return outcome


def _withdraw_crossing(outcome: Outcome, ts: Sequence[Group], ss: Sequence[Group]) -> None:
    """Withdraw accepted pairs that cross the containers the other pairs tie together.

    Their modules stay closed to elimination, but a region may pair them again.
    """
    paired_t = {p.t.index for p in outcome.accepted}
    paired_s = {p.s.index for p in outcome.accepted}
    open_t = [g for g in ts if g.index not in paired_t]
    open_s = [g for g in ss if g.index not in paired_s]
    bad = crossing([(p.t, p.s) for p in outcome.accepted], open_t, open_s)
    _withdraw(outcome, bad, "by order, but the modules around each of them pair with other containers")


def _withdraw_beside_idle_twins(outcome: Outcome, ts: Sequence[Group], ss: Sequence[Group]) -> None:
    """Withdraw pairs whose container has an identical, wholly unpaired twin (a sorted side's order guesses there)."""
    bad = beside_idle_twins([(p.t, p.s) for p in outcome.accepted], ts, ss)
    why = "by an order rebuilt from sorted names, but its container has an identical twin that nothing pairs"
    _withdraw(outcome, bad, why)


def _withdraw(outcome: Outcome, bad: Sequence[int], why: str) -> None:
    """Drop the accepted pairs ``bad`` (indices), each reported as withdrawn ``why``."""
    for n in sorted(bad):
        p = outcome.accepted[n]
        reason = f"withdrawn: module {shown(p.t.path)} ({describe(p.t.signature)}) aligns with {shown(p.s.path)} {why}"
        outcome.abstentions += abstain_groups([p.t], [p.s], reason)
    gone = set(bad)
    outcome.accepted = [p for n, p in enumerate(outcome.accepted) if n not in gone]


def _in_regions(
    ts: Sequence[Group], ss: Sequence[Group], outcome: Outcome, prior: Sequence[tuple[str, str]], *, ordered: bool
) -> list[Pair]:
    """Open modules paired inside containers that the accepted pairs tie together (:mod:`~weightsurgery.match.structure.regions`)."""
    found = pair_in_regions(ts, ss, [(p.t, p.s) for p in outcome.accepted], prior=prior, ordered=ordered)
    out = []
    for t, s, evidence in found:
        out.append(Pair(t, s, f"aligned module {shown(s.path)} <-> {shown(t.path)} {evidence}", region=True))
        outcome.settled_t.add(t.index)
        outcome.settled_s.add(s.index)
    return out


def _prior_modules(ctx: MatchContext) -> list[tuple[str, str]]:
    """Module pairs behind the tensors earlier strategies loaded."""
    spec = ctx.target.tensors
    pairs = {(spec[t].module, s.rpartition(".")[0]) for t, s in ctx.matched.items() if t in spec}
    return sorted(pairs)


def _tensor_matches(outcome: Outcome) -> list[Match]:
    """One match per tensor of every accepted module pair whose tensors pair up unambiguously."""
    matches: list[Match] = []
    for p in outcome.accepted:
        leaves = pair_leaves(p.t, p.s)
        if isinstance(leaves, str):
            reason = f"ambiguous tensors in {shown(p.t.path)} <-> {shown(p.s.path)}: {leaves}"
            outcome.abstentions += abstain_groups([p.t], [p.s], reason)
            continue
        for t_key, s_key, renamed in leaves:
            matches.append(Match(t_key, s_key, STRATEGY, p.evidence + (f"; {renamed}" if renamed else "")))
    return matches


def _source_owner(key: str) -> tuple[str, str]:
    module, _, leaf = key.rpartition(".")
    return module, leaf
