"""Name strategies: explicit map, user rename rules, exact names, wrapper prefixes.

Each is a :data:`~weightsurgery.match.base.Strategy`: it sees metadata only and
claims the pairs it is sure of. Shapes are not checked here. A pair these
strategies name is a name match, and the planner applies the shape-mismatch
policy to it.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from weightsurgery.errors import PlanError
from weightsurgery.match.base import Abstain, Match, MatchContext, Strategy, StrategyResult

__all__ = [
    "RenameRule",
    "compile_rename",
    "explicit_strategy",
    "match_exact",
    "match_prefix",
    "prefix_splits",
    "rename_strategy",
]

RenameRule = tuple["re.Pattern[str]", str]

#: Wrapper prefixes that training code adds (DDP, torch.compile, Lightning, detectors...).
KNOWN_WRAPPERS = ("module.", "_orig_mod.", "model.", "net.", "backbone.", "encoder.", "base_model.", "ema.")


def compile_rename(rules: Sequence[tuple[str, str]] | None) -> list[RenameRule]:
    """Compile ``[(regex, replacement), ...]``; a bad regex names itself.

    Example:
        >>> [p.pattern for p, _ in compile_rename([(r"^net\\.", "")])]
        ['^net\\\\.']
    """
    compiled: list[RenameRule] = []
    for i, rule in enumerate(rules or ()):
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and all(isinstance(x, str) for x in rule)):
            raise PlanError(
                f"rename rule #{i} is {rule!r}; each rule is a (regex, replacement) pair of strings, "
                "and an exact {target_key: source_key} map goes to key_map="
            )
        try:
            compiled.append((re.compile(rule[0]), rule[1]))
        except re.error as exc:
            raise PlanError(f"rename rule #{i}: {rule[0]!r} is not a valid regex ({exc})") from exc
    return compiled


def explicit_strategy(mapping: Mapping[str, str]) -> Strategy:
    """A strategy for a user's exact ``{target_key: source_key}`` map.

    Every key named must exist on its side; all problems are raised at once.
    """

    def match_explicit(ctx: MatchContext) -> StrategyResult:
        problems = []
        for t, s in mapping.items():
            canonical = ctx.target.canonical(t)
            if canonical not in ctx.target.tensors:
                problems.append(f"target key {t!r} (in the explicit map) is not in the target model")
            if s not in ctx.source:
                problems.append(f"source key {s!r} (mapped to {t!r}) is not in the source")
        if problems:
            raise PlanError("explicit key map does not fit:\n  " + "\n  ".join(problems), problems=problems)
        matches = [Match(ctx.target.canonical(t), s, "explicit", "user key map") for t, s in mapping.items()]
        return StrategyResult(matches=matches)

    return match_explicit


def rename_strategy(rules: Sequence[RenameRule]) -> Strategy:
    """A strategy that rewrites source keys with regex rules (in order) and matches the results exactly."""

    def match_rename(ctx: MatchContext) -> StrategyResult:
        open_targets = set(ctx.open_targets)
        claims: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for src in ctx.open_sources:
            new, applied = src, []
            for pattern, repl in rules:
                out = pattern.sub(repl, new)
                if out != new:
                    applied.append(f"{pattern.pattern!r}→{repl!r}")
                    new = out
            if applied and new in open_targets:
                claims[new].append((src, ", ".join(applied)))
        return _unique_claims(claims, "rename")

    return match_rename


def match_exact(ctx: MatchContext) -> StrategyResult:
    """Claim every open target key that the source holds under the same name."""
    open_sources = set(ctx.open_sources)
    return StrategyResult(matches=[Match(t, t, "exact") for t in ctx.open_targets if t in open_sources])


def match_prefix(ctx: MatchContext) -> StrategyResult:
    """Match keys that differ by a wrapper prefix of whole components, on either side.

    A source key ``P + k`` fills target ``k`` (prefix stripped), and a source key
    ``k`` fills target ``P + k`` (prefix added). Prefixes are detected per
    subtree: a checkpoint may wrap only some of its modules. A prefix never
    holds a numeric component (stripping ``layers.1.`` would shift indices).

    Each candidate is scored by how many keys its prefix explains *with equal
    shapes* (a wrapper explains shapes; a second model in the same checkpoint,
    such as a distillation teacher, only shares names), then by how many names
    it explains, then by whether the prefix is a known wrapper, then by brevity. Pairs are
    assigned best score first; where two candidates with the same score compete
    for one key, that key abstains and the reason names both.
    """
    open_targets = set(ctx.open_targets)
    open_sources = set(ctx.open_sources)
    candidates: list[tuple[str, str, str, str]] = []  # (target, source, kind, prefix)
    for src in ctx.open_sources:
        for prefix, rest in prefix_splits(src):
            if rest in open_targets:
                candidates.append((rest, src, "stripped", prefix))
    for tgt in ctx.open_targets:
        for prefix, rest in prefix_splits(tgt):
            if rest in open_sources:
                candidates.append((tgt, rest, "added", prefix))
    if not candidates:
        return StrategyResult()
    support = Counter((kind, prefix) for _, _, kind, prefix in candidates)
    fits = Counter(  # pairs whose shapes agree: a wrapper explains shapes, a second model only names
        (kind, prefix) for t, s, kind, prefix in candidates if ctx.target.tensors[t].shape == ctx.source[s].shape
    )

    def score(c: tuple[str, str, str, str]) -> tuple[int, int, int, int]:
        _, _, kind, prefix = c
        return (fits[(kind, prefix)], support[(kind, prefix)], int(prefix in KNOWN_WRAPPERS), -prefix.count("."))

    candidates.sort(key=score, reverse=True)
    taken_t: set[str] = set()
    taken_s: set[str] = set()
    blocked: dict[str, Abstain] = {}
    matches: list[Match] = []
    i = 0
    while i < len(candidates):
        j = i
        while j < len(candidates) and score(candidates[j]) == score(candidates[i]):
            j += 1
        tier = [c for c in candidates[i:j] if c[0] not in taken_t and c[1] not in taken_s and c[0] not in blocked]
        per_t = Counter(c[0] for c in tier)
        per_s = Counter(c[1] for c in tier)
        for tgt, src, kind, prefix in tier:
            if per_t[tgt] > 1 or per_s[src] > 1:
                rivals = sorted({c[1] for c in tier if c[0] == tgt} | {c[0] for c in tier if c[1] == src} - {tgt})
                blocked[tgt] = Abstain(tgt, f"ambiguous prefix match: {', '.join(rivals)}", tuple(rivals), "prefix")
                continue
            evidence = f"{kind} {prefix!r} ({fits[(kind, prefix)]} of {support[(kind, prefix)]} keys fit in shape)"
            rivals = sorted({p for t, _, k, p in candidates if t == tgt and p != prefix and fits[(k, p)] == fits[(kind, prefix)]})
            if rivals:  # e.g. 'model.' and 'model_ema.' fit equally: say which was taken and how to take the other
                evidence += f"; {', '.join(map(repr, rivals))} fit as well: pass key= to choose"
            matches.append(Match(tgt, src, "prefix", evidence))
            taken_t.add(tgt)
            taken_s.add(src)
        i = j
    return StrategyResult(matches, [a for t, a in blocked.items() if t not in taken_t])


def prefix_splits(key: str) -> list[tuple[str, str]]:
    """``"a.b.c.weight"`` -> ``[("a.", "b.c.weight"), ("a.b.", "c.weight"), ...]``, stopping at a number."""
    parts = key.split(".")
    out = []
    for i in range(1, len(parts)):
        if parts[i - 1].isdigit():
            break
        out.append((".".join(parts[:i]) + ".", ".".join(parts[i:])))
    return out


def _unique_claims(
    claims: Mapping[str, list[tuple[str, str]]], strategy: str, *, by_source: bool = True
) -> StrategyResult:
    """Turn target -> [(source, evidence)] into matches; any key claimed twice abstains."""
    matches: list[Match] = []
    abstentions: list[Abstain] = []
    source_owners: dict[str, list[str]] = defaultdict(list)
    for tgt, lst in claims.items():
        if len(lst) == 1:
            source_owners[lst[0][0]].append(tgt)
    for tgt, lst in claims.items():
        if len(lst) > 1:
            names = ", ".join(s for s, _ in lst)
            abstentions.append(Abstain(tgt, f"ambiguous {strategy}: {names}", tuple(s for s, _ in lst), strategy))
            continue
        src, evidence = lst[0]
        if by_source and len(source_owners[src]) > 1:
            others = ", ".join(t for t in source_owners[src] if t != tgt)
            abstentions.append(Abstain(tgt, f"ambiguous {strategy}: {src} also fits {others}", (src,), strategy))
            continue
        matches.append(Match(tgt, src, strategy, evidence))
    return StrategyResult(matches, abstentions)
