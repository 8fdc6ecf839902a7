"""After the alignment: leftovers paired by elimination, reasons for what stays open, and relatedness."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from weightsurgery.match.base import Abstain, Match, MatchContext
from weightsurgery.match.structure.groups import Group, describe
from weightsurgery.match.structure.outcome import MIN_COVERAGE, STRATEGY, Outcome, Pair, abstain_groups, shown
from weightsurgery.match.tokens import name_similarity

__all__ = ["related", "residual", "unconfirmed", "unexplained"]


def residual(ts: Sequence[Group], ss: Sequence[Group], outcome: Outcome) -> list[Pair]:
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
    out: list[Pair] = []
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
        out.append(Pair(t, s, f"{evidence}: {shown(s.path)} <-> {shown(t.path)} ({why})"))
        outcome.settled_t.add(t.index)
        outcome.settled_s.add(s.index)
    return out


def _foreign_parents(left: Sequence[Group], other: Counter[object]) -> set[str]:
    """Containers below the root that keep a leftover module whose signature the other side has not left."""
    return {g.parent for g in left if g.parent and other[g.signature] == 0}


def _foreign(g: Group, other: Group, foreign: set[str]) -> bool:
    """``g`` sits in a container the other side lacks, and ``other``'s name does not point there."""
    return g.parent in foreign and name_similarity(other.path, g.parent) == 0.0


def unconfirmed(ts: Sequence[Group], ss: Sequence[Group], outcome: Outcome) -> list[Abstain]:
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
        out += abstain_groups(
            [t],
            rivals,
            f"unconfirmed: module {shown(t.path)} ({describe(t.signature)}) has the signature of "
            f"{', '.join(shown(g.path) for g in rivals[:4])}{' ...' if len(rivals) > 4 else ''}, but no run of aligned "
            "neighbours, unique weight shape or name confirms a pairing",
        )
    return out


def unexplained(ctx: MatchContext, matches: Sequence[Match], abstentions: Sequence[Abstain]) -> list[Abstain]:
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


def related(
    ctx: MatchContext, matches: Sequence[Match], accepted: Sequence[Pair], ts: Sequence[Group], ss: Sequence[Group]
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
