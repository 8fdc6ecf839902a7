"""The ``prefix`` strategy: keys that differ by a wrapper prefix of whole components, on either side.

``module.`` (DataParallel), ``model.``, ``backbone.``: a source key ``P + k``
fills target ``k``, and a source key ``k`` fills target ``P + k``, detected per
subtree. :func:`match_prefix` collects the candidates of every prefix, scores
each prefix by the shapes and names it explains and assigns them best first; a
key that two equally good prefixes compete for abstains. It sees every open key
of every plan: ``benchmarks/bench_matching_scale.py`` measures it at 200k keys.
:mod:`weightsurgery.match.names` re-exports :func:`match_prefix` and :func:`prefix_splits`.
"""

from __future__ import annotations

import itertools
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet

from weightsurgery.match.base import Abstain, Match, MatchContext, Matches, StrategyResult

__all__ = ["match_prefix", "prefix_splits"]


def match_prefix(ctx: MatchContext) -> StrategyResult:
    """Match keys that differ by a wrapper prefix of whole components, on either side.

    A source key ``P + k`` fills target ``k`` (prefix stripped), and a source key
    ``k`` fills target ``P + k`` (prefix added). Prefixes are detected per
    subtree: a checkpoint may wrap only some of its modules. A prefix never
    holds a numeric component (stripping ``layers.1.`` would shift indices).

    Each candidate is scored by how many keys its prefix explains *with equal
    shapes* (a wrapper explains shapes; a second model in the same checkpoint,
    such as a distillation teacher, only shares names), then by how many names
    it explains, then by brevity. Pairs are assigned best score first; where
    two candidates with the same score compete for one key (``encoder.`` and
    ``decoder.`` explain the same keys equally well), that key abstains and the
    reason names both: no fixed list of wrapper names breaks the tie.
    """
    open_targets, open_sources = ctx.open_sets()
    found = _Candidates()
    heads: set[str] = set()  # the open source keys' first components
    tensors = ctx.target.tensors
    found.add("stripped", _collect(ctx.open_sources, open_targets, True, heads, lambda k: tensors[k].key))
    found.add("added", _collect(_holding(ctx.open_targets, heads), open_sources, False))
    return found.assign(ctx)


def _collect(
    keys: Iterable[str],
    other: AbstractSet[str],
    stripped: bool,
    heads: set[str] | None = None,
    canonical: Callable[[str], str] | None = None,
) -> dict[str, _Group]:
    """prefix -> the candidates ``key = prefix + rest`` with ``rest`` in ``other``, in key order.

    ``heads``, when given, receives each key's first component. ``canonical``,
    when given, maps a ``rest`` found in ``other`` to the key object ``other``
    holds. The candidates then keep that object, not the slice just made. Every
    later set and dict step on it is then a pointer comparison. The slices die
    at once, so on 200k keys memory holds one slice, not 200k (about 15 MB
    fewer strings that every lookup would otherwise touch).
    """
    found: dict[str, _Group] = {}
    keep = canonical if canonical is not None else _same
    for key in keys:
        dot = key.find(".")
        if dot < 0:
            if heads is not None:
                heads.add(key)
            continue
        component = key[:dot]
        if heads is not None:
            heads.add(component)
        while not component.isdigit():  # a prefix never holds a number
            start = dot + 1
            rest = key[start:]
            if rest in other:
                group = found.get(key[:start])
                if group is None:
                    group = found[key[:start]] = _Group()
                rest = keep(rest)
                group.targets.append(rest if stripped else key)
                group.sources.append(key if stripped else rest)
            dot = key.find(".", start)
            if dot < 0:
                break
            component = key[start:dot]
    return found


def _same(key: str) -> str:
    return key


def _holding(keys: Sequence[str], heads: AbstractSet[str]) -> Sequence[str]:
    """The keys that can end in a key whose first component is among ``heads``, in order.

    ``key = prefix + rest`` with ``rest`` starting with head ``h`` needs ``.h.``
    inside ``key`` or ``.h`` at its end: a substring test in C per head, which
    spares the walk over every component of the keys that cannot match (a
    ``module.``-prefixed checkpoint has one head). With many heads every key is kept.
    """
    if len(heads) > 4:
        return keys
    mask = list(map(str.endswith, keys, itertools.repeat(tuple(f".{h}" for h in heads))))
    for h in heads:
        mask = list(map(operator.or_, mask, map(str.__contains__, keys, itertools.repeat(f".{h}."))))
    return list(itertools.compress(keys, mask))


class _Group:
    """The candidates of one ``(kind, prefix)``: parallel lists, so a key costs no tuple of its own."""

    __slots__ = ("sources", "targets")

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.sources: list[str] = []

    def __len__(self) -> int:
        return len(self.targets)


class _Candidates:
    """Prefix candidates, grouped by ``(kind, prefix)``, assigned best score first.

    Within one ``(kind, prefix)`` every target and every source appears at
    most once (the prefix determines the other side), so only candidates of
    two prefixes with the same score can compete for a key.
    """

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], _Group] = {}

    def add(self, kind: str, by_prefix: Mapping[str, _Group]) -> None:
        self.groups.update(((kind, p), g) for p, g in by_prefix.items())

    def assign(self, ctx: MatchContext) -> StrategyResult:
        groups = self.groups
        if not groups:
            return StrategyResult()
        tensors, source, shape = ctx.target.tensors.__getitem__, ctx.source.__getitem__, operator.attrgetter("shape")
        shapes = {  # in C, not a Python step per key; kept for the planner, which would read them again
            kp: (list(map(shape, map(tensors, g.targets))), list(map(shape, map(source, g.sources))))
            for kp, g in groups.items()
        }
        fits = {kp: sum(map(operator.eq, *shapes[kp])) for kp in groups}
        rivals: dict[str, list[tuple[str, str]]] = {}  # target -> the (kind, prefix) of each candidate, if several
        if len(groups) > 1:
            by_target: dict[str, list[tuple[str, str]]] = defaultdict(list)
            for kp, g in groups.items():
                for t in g.targets:
                    by_target[t].append(kp)
            rivals = {t: kps for t, kps in by_target.items() if len(kps) > 1}

        def score(kp: tuple[str, str]) -> tuple[int, int, int]:
            """Shape fits, then names explained, then brevity."""
            return (fits[kp], len(groups[kp]), -kp[1].count("."))

        taken_t: set[str] = set()
        taken_s: set[str] = set()
        blocked: dict[str, Abstain] = {}
        matches = Matches()
        tiers = [list(kps) for _, kps in itertools.groupby(sorted(groups, key=score, reverse=True), key=score)]
        for n, kps in enumerate(tiers, 1):
            evidence = {kp: f"{kp[0]} {kp[1]!r} ({fits[kp]} of {len(groups[kp])} keys fit in shape)" for kp in kps}
            if len(kps) == 1:  # no key twice in one group: its lists are the run, less what earlier tiers took
                targets, sources = groups[kps[0]].targets, groups[kps[0]].sources
                known = shapes[kps[0]]  # the shapes of exactly these pairs, while nothing is filtered out
                if taken_t or taken_s or blocked:
                    free = [t not in taken_t and s not in taken_s and t not in blocked for t, s in zip(targets, sources)]
                    targets, sources = list(itertools.compress(targets, free)), list(itertools.compress(sources, free))
                    known = None
                by_kp = {kps[0]: (targets, sources)}
            else:
                by_kp, known = self._tier(kps, taken_t, taken_s, blocked, ctx), None
            for kp, (targets, sources) in by_kp.items():
                singles: list[Match] = []
                if rivals:
                    targets, sources, singles = _rivalled(kp, targets, sources, rivals, fits, evidence[kp])
                    known = None
                t_shapes, s_shapes = known if known is not None else (None, None)
                matches.add_run(targets, sources, "prefix", evidence[kp], target_shapes=t_shapes, source_shapes=s_shapes)
                for m in singles:
                    matches.append(m)
                if n < len(tiers):  # what this tier took, for the next one to skip
                    taken_t.update(targets, (m.target for m in singles))
                    taken_s.update(sources, (m.source for m in singles))
        # a blocked key was never taken: a tier skips what earlier tiers took, and blocks a key in all its pairs
        return StrategyResult(matches, list(blocked.values()))

    def _tier(
        self,
        kps: list[tuple[str, str]],
        taken_t: set[str],
        taken_s: set[str],
        blocked: dict[str, Abstain],
        ctx: MatchContext,
    ) -> dict[tuple[str, str], tuple[list[str], list[str]]]:
        """The pairs of prefixes of one score that stand, by prefix; a key two of them compete for is blocked.

        Candidates are taken in key order: stripped ones by source key, then added ones by target key.
        """
        groups = self.groups
        at_s = {k: i for i, k in enumerate(ctx.open_sources)}
        at_t = {k: len(at_s) + i for i, k in enumerate(ctx.open_targets)}

        def triples(kp: tuple[str, str]) -> Iterator[tuple[int, str, str]]:
            g = groups[kp]
            ranks = map(at_s.__getitem__, g.sources) if kp[0] == "stripped" else map(at_t.__getitem__, g.targets)
            return zip(ranks, g.targets, g.sources)

        kp_of = {(t, s): kp for kp in kps for _, t, s in triples(kp)}
        members = sorted(c for kp in kps for c in triples(kp))
        tier = [c for c in members if c[1] not in taken_t and c[2] not in taken_s and c[1] not in blocked]
        per_t: dict[str, list[str]] = {}  # target -> sources competing for it in this tier
        per_s: dict[str, list[str]] = {}  # source -> targets competing for it in this tier
        for _, tgt, src in tier:
            per_t.setdefault(tgt, []).append(src)
            per_s.setdefault(src, []).append(tgt)
        out: dict[tuple[str, str], tuple[list[str], list[str]]] = {kp: ([], []) for kp in kps}
        for _, tgt, src in tier:
            if tgt in blocked:
                continue
            if len(per_t[tgt]) > 1 or len(per_s[src]) > 1:
                blocked[tgt] = _tie(tgt, per_t, per_s)
                continue
            run_t, run_s = out[kp_of[(tgt, src)]]
            run_t.append(tgt)
            run_s.append(src)
        return out


def _rivalled(
    kp: tuple[str, str],
    targets: list[str],
    sources: list[str],
    rivals: Mapping[str, list[tuple[str, str]]],
    fits: Mapping[tuple[str, str], int],
    evidence: str,
) -> tuple[list[str], list[str], list[Match]]:
    """The run less the pairs whose target another prefix fits as well, and those pairs as matches that say so."""
    run_t, run_s, singles = [], [], []
    for tgt, src in zip(targets, sources):
        others = sorted({p for k, p in rivals.get(tgt, ()) if p != kp[1] and fits[(k, p)] == fits[kp]})
        if others:  # e.g. 'model.' and 'model_ema.' fit equally: say which was taken
            why = f"{evidence}; {', '.join(map(repr, others))} fit as well: pass key= to choose"
            singles.append(Match(tgt, src, "prefix", why))
        else:
            run_t.append(tgt)
            run_s.append(src)
    return run_t, run_s, singles


def _tie(tgt: str, per_t: Mapping[str, list[str]], per_s: Mapping[str, list[str]]) -> Abstain:
    """The abstention for ``tgt`` when prefixes of one score compete for it or for its sources."""
    sources = sorted(set(per_t[tgt]))
    why = []
    if len(sources) > 1:
        why.append(f"{', '.join(sources)} fit {tgt} equally")
    for src in sources:
        rivals = sorted(set(per_s[src]) - {tgt})
        if rivals:
            why.append(f"{src} fits {', '.join([tgt, *rivals])} equally")
    reason = f"ambiguous prefix match: {'; '.join(why)}; pass key= or key_map= to choose"
    return Abstain(tgt, reason, tuple(sources), "prefix")


def prefix_splits(key: str) -> list[tuple[str, str]]:
    """``"a.b.c.weight"`` -> ``[("a.", "b.c.weight"), ("a.b.", "c.weight"), ...]``, stopping at a number.

    Example:
        >>> prefix_splits("model.blocks.3.attn.weight")
        [('model.', 'blocks.3.attn.weight'), ('model.blocks.', '3.attn.weight')]
    """
    return list(_splits(key))


def _splits(key: str) -> Iterator[tuple[str, str]]:
    start = 0
    while True:
        dot = key.find(".", start)
        if dot < 0 or key[start:dot].isdigit():
            return
        yield key[: dot + 1], key[dot + 1 :]
        start = dot + 1
