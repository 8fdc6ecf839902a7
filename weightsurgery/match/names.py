"""Name strategies: explicit map, user rename rules, exact names.

Each is a :data:`~weightsurgery.match.base.Strategy`: it sees metadata only and
claims the pairs it is sure of. Shapes are not checked here. A pair these
strategies name is a name match, and the planner applies the shape-mismatch
policy to it. The ``prefix`` strategy lives in :mod:`weightsurgery.match.prefix`;
:func:`match_prefix` and :func:`prefix_splits` are re-exported here.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

from weightsurgery.errors import PlanError
from weightsurgery.match.base import Abstain, Match, MatchContext, Matches, Strategy, StrategyResult
from weightsurgery.match.prefix import match_prefix as match_prefix
from weightsurgery.match.prefix import prefix_splits as prefix_splits

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
    One source named for several targets is a copy into each, recorded for
    each (never one of them dropped). Two tied target keys are one tensor:
    naming them with different sources is an error.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from weightsurgery.match.target import TargetSpec
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> target = TargetSpec.from_module(nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)}))
        >>> src = {"w": TensorMeta((2, 2), torch.float32)}
        >>> ctx = MatchContext(src, target, list(target.tensors), list(src))
        >>> [(m.target, m.source, m.copy) for m in explicit_strategy({"a.weight": "w", "b.weight": "w"})(ctx).matches]
        [('a.weight', 'w', True), ('b.weight', 'w', True)]
    """

    def match_explicit(ctx: MatchContext) -> StrategyResult:
        problems = []
        chosen: dict[str, tuple[str, str]] = {}  # canonical target -> (the key the user wrote, source)
        for t, s in mapping.items():
            canonical = ctx.target.canonical(t)
            if canonical not in ctx.target.tensors:
                problems.append(f"target key {t!r} (in the explicit map) is not in the target model")
            if s not in ctx.source:
                problems.append(f"source key {s!r} (mapped to {t!r}) is not in the source")
            earlier = chosen.setdefault(canonical, (t, s))
            if earlier[1] != s:
                problems.append(
                    f"target keys {earlier[0]!r} and {t!r} are one tied tensor, mapped to two sources "
                    f"{earlier[1]!r} and {s!r}; map only one of them"
                )
        if problems:
            raise PlanError("explicit key map does not fit:\n  " + "\n  ".join(problems), problems=problems)
        fills: dict[str, list[str]] = defaultdict(list)
        for canonical, (_, s) in chosen.items():
            fills[s].append(canonical)
        matches = []
        for canonical, (_, s) in chosen.items():
            others = [t for t in fills[s] if t != canonical]
            evidence = "user key map" + (f"; {s} is also copied to {', '.join(others)}" if others else "")
            matches.append(Match(canonical, s, "explicit", evidence, copy=bool(others)))
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
    """Claim every open target key that the source holds under the same name (one run of plain copies)."""
    _, open_sources = ctx.open_sets()
    same = [t for t in ctx.open_targets if t in open_sources]
    found = Matches()
    found.add_run(same, same, "exact")
    return StrategyResult(matches=found)


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
