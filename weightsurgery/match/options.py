""":class:`PlanOptions`: what the planner takes besides the two sides, normalised in one place.

Every option that takes "one string or several" goes through :func:`as_strings`,
so ``exclude="fc.*"`` means ``("fc.*",)`` everywhere, never the characters of the
string. Key renaming has two parameters, one per form:

- ``rename``: regex rules on source keys, ``{pattern: replacement}`` or
  ``[(pattern, replacement), ...]``, applied in order with :func:`re.sub`
  (transformers' ``key_mapping`` form);
- ``key_map``: an exact ``{target_key: source_key}`` map, the direction of
  ``report.mapping``, so ``key_map=report.mapping`` re-applies a transfer.

A value in the wrong form raises :class:`~weightsurgery.errors.PlanError`
naming the parameter that was meant.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from weightsurgery.errors import PlanError
from weightsurgery.match.base import Strategy
from weightsurgery.match.layout import MismatchPolicy

__all__ = ["MatchingOptions", "PlanOptions", "as_key_map", "as_rename_rules", "as_strings", "check_key_forms"]

RenameRules = Mapping[str, str] | Sequence[tuple[str, str]]

#: Regex syntax that no ordinary state-dict key contains (``.`` is in every key, so it does not count).
_REGEX_SYNTAX = re.compile(r"[\^$*+?()\[\]{}|\\]")


@dataclass(frozen=True)
class PlanOptions:
    """Everything the planner takes besides the two sides.

    The constructor normalises every field (a single string becomes a 1-tuple,
    a rename dict becomes ordered pairs) and rejects a value of the wrong form.

    Attributes:
        rename: regex rules on source keys, ``{pattern: replacement}`` or
            ``[(pattern, replacement), ...]``, applied in order with :func:`re.sub`;
            a source key whose rewritten name is a target key fills it.
        key_map: an exact ``{target_key: source_key}`` map (the direction of
            ``report.mapping``); it runs before everything else.
        strategies: the strategy names to run (default: all), in the fixed order.
            Naming them also loads what they match when source and target look
            unrelated (:mod:`weightsurgery.match.related`); by default nothing loads then.
        on_mismatch: what a name match of different shape does: ``"init"``,
            ``"adapt"`` (run an adapter whose conditions hold, else init), ``"error"``.
        adapt: explicit adapter rules (``weightsurgery.adapt.AdaptRule``).
        classes: a class subset/reorder for the classifier head (indices or label names).
        source_labels: the source's class names, when its metadata lacks them.
        exclude: target-key patterns (globs, or regexes prefixed ``re:``) that are
            never loaded: they go to the fallback init, with the rule as the reason.
        extra_strategies: strategy callables run after the built-in ones.

    Example:
        >>> PlanOptions(exclude="fc.*", rename={r"^module\\.": ""}).exclude
        ('fc.*',)
        >>> PlanOptions(rename={r"^module\\.": ""}).rename
        (('^module\\\\.', ''),)
    """

    rename: RenameRules | None = ()
    key_map: Mapping[str, str] | None = field(default_factory=dict, hash=False)
    strategies: Sequence[str] | str | None = None
    on_mismatch: MismatchPolicy = "init"
    adapt: Sequence[Any] | Any = ()
    classes: Sequence[int | str] | str | None = None
    source_labels: Sequence[str] | str | None = None
    exclude: Sequence[str] | str | None = ()
    extra_strategies: Sequence[Strategy] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        fix = object.__setattr__
        fix(self, "rename", as_rename_rules(self.rename))
        fix(self, "key_map", as_key_map(self.key_map))
        fix(self, "exclude", as_strings(self.exclude, "exclude"))
        if self.strategies is not None:
            fix(self, "strategies", as_strings(self.strategies, "strategies"))
        if self.source_labels is not None:
            fix(self, "source_labels", as_strings(self.source_labels, "source_labels"))
        if self.classes is not None:
            fix(self, "classes", _as_classes(self.classes))
        fix(self, "adapt", _as_tuple(self.adapt))
        fix(self, "extra_strategies", _as_tuple(self.extra_strategies))
        if self.on_mismatch not in ("init", "adapt", "error"):
            raise PlanError(f"on_mismatch={self.on_mismatch!r}; valid values are 'init', 'adapt', 'error'")


class MatchingOptions(TypedDict, total=False):
    """The fields of :class:`PlanOptions` as keywords of ``transfer()`` (for type checkers)."""

    rename: RenameRules | None
    key_map: Mapping[str, str] | None
    strategies: Sequence[str] | str | None
    on_mismatch: MismatchPolicy
    adapt: Sequence[Any] | Any
    classes: Sequence[int | str] | str | None
    source_labels: Sequence[str] | str | None
    exclude: Sequence[str] | str | None
    extra_strategies: Sequence[Strategy]


def as_strings(value: str | Iterable[str] | None, name: str) -> tuple[str, ...]:
    """One string or several -> a tuple of strings (``None`` -> ``()``).

    Raises:
        PlanError: a mapping, bytes, or an item that is not a string; the message names ``name``.

    Example:
        >>> as_strings("fc.*", "exclude"), as_strings(["fc.*", "head.*"], "exclude")
        (('fc.*',), ('fc.*', 'head.*'))
    """
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, Iterable):
        raise PlanError(f"{name}={value!r}: give one string or a list of strings, e.g. {name}=['fc.*']")
    out = tuple(value)
    bad = [v for v in out if not isinstance(v, str)]
    if bad:
        raise PlanError(f"{name} holds {bad[0]!r}, which is not a string; give one string or a list of strings")
    return out


def as_rename_rules(value: RenameRules | None) -> tuple[tuple[str, str], ...]:
    """``{pattern: replacement}`` or ``[(pattern, replacement), ...]`` -> ordered pairs, each regex compiled once.

    Raises:
        PlanError: another form (an exact map belongs in ``key_map=``), a pair that
            is not two strings, or a bad regex.
    """
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, (Mapping, Iterable)):
        raise PlanError(
            f"rename={value!r}: rename takes regex rules {{pattern: replacement}} or [(pattern, replacement), ...] "
            "applied to source keys, e.g. rename={'^module\\\\.': ''}; "
            "for an exact {target_key: source_key} map use key_map="
        )
    items = list(value.items()) if isinstance(value, Mapping) else list(value)
    out = []
    for i, rule in enumerate(items):
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and all(isinstance(x, str) for x in rule)):
            raise PlanError(
                f"rename rule #{i} is {rule!r}; each rule is a (pattern, replacement) pair of strings, "
                "e.g. rename=[('^module\\\\.', '')]; for an exact {target_key: source_key} map use key_map="
            )
        try:
            re.compile(rule[0])
        except re.error as exc:
            raise PlanError(f"rename rule #{i}: {rule[0]!r} is not a valid regex ({exc})") from exc
        out.append((rule[0], rule[1]))
    return tuple(out)


def as_key_map(value: Mapping[str, str] | None) -> dict[str, str]:
    """An exact ``{target_key: source_key}`` map, checked for form.

    Raises:
        PlanError: not a mapping of strings to strings (regex rules belong in ``rename=``).
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PlanError(
            f"key_map={value!r}: key_map takes an exact mapping {{target_key: source_key}}; "
            "for regex rules [(pattern, replacement), ...] on source keys use rename="
        )
    bad = [(t, s) for t, s in value.items() if not (isinstance(t, str) and isinstance(s, str))]
    if bad:
        raise PlanError(f"key_map entry {bad[0]!r}: both the target key and the source key must be strings")
    return dict(value)


def check_key_forms(options: PlanOptions, source: Iterable[str], target: Iterable[str]) -> None:
    """Refuse a ``rename`` that reads as an exact map, or a ``key_map`` that reads as regex rules.

    A rename rule that turns no source key into a target key, while its pattern
    is a target key and its replacement a source key, is the exact map
    ``{target_key: source_key}`` given to the wrong parameter. A ``key_map`` key
    that is not a target key and holds regex syntax is a rule given to the
    wrong parameter. Both would otherwise load nothing, silently.

    Raises:
        PlanError: naming the entries and the parameter meant.
    """
    if not options.rename and not options.key_map:
        return  # nothing to check: no set of either side's keys
    source_keys, target_keys = set(source), set(target)
    suspects = [(p, r) for p, r in options.rename if p in target_keys and r in source_keys]
    reversed_rules = [rule for rule in suspects if rule not in _live_rules(options.rename, source_keys, target_keys)]
    if reversed_rules:
        listed = ", ".join(f"{p!r}: {r!r}" for p, r in reversed_rules)
        raise PlanError(
            f"rename={{{listed}}} renames no source key to a target key and reads as an exact "
            "{target_key: source_key} map; "
            f"pass it as key_map={{{listed}}} (rename takes regex rules {{source_pattern: replacement}})",
            problems=[f"{p} <- {r}" for p, r in reversed_rules],
        )
    regexes = [t for t in options.key_map if t not in target_keys and _REGEX_SYNTAX.search(t)]
    if regexes:
        raise PlanError(
            f"key_map keys {regexes} are not target keys and read as regex patterns; key_map maps exact keys "
            "{target_key: source_key}: pass regex rules as rename={pattern: replacement}",
            problems=regexes,
        )


def _live_rules(
    rules: Sequence[tuple[str, str]], source: Iterable[str], target: set[str]
) -> set[tuple[str, str]]:
    """The rules that rewrite some source key, chained as the rename strategy does, into another, target key.

    A chain that comes back to the key it started from renames nothing: ``{a: b, b: a}``
    turns ``a`` into ``b`` and back, so its first rule is not live.
    """
    compiled = [(re.compile(p), r, (p, r)) for p, r in rules]
    live: set[tuple[str, str]] = set()
    for original in source:
        key, fired = original, []
        for pattern, repl, rule in compiled:
            new = pattern.sub(repl, key)
            if new != key:
                fired.append(rule)
                key = new
        if key != original and key in target:
            live.update(fired)
    return live


def _as_classes(value: Any) -> tuple[int | str, ...]:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        if isinstance(value, int):
            raise PlanError(
                f"classes={value} names one class index; pass classes=[{value}] to keep that class, "
                f"or target_kwargs={{'num_classes': {value}}} for a head of {value} classes"
            )
        return (value,)
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, Iterable):
        raise PlanError(f"classes={value!r}: give a list of class indices or label names")
    out = tuple(value)
    bad = [v for v in out if isinstance(v, bool) or not isinstance(v, (int, str))]
    if bad:
        raise PlanError(f"classes holds {bad[0]!r}; each class is an index or a label name")
    return out


def _as_tuple(value: Any) -> tuple[Any, ...]:
    """One rule or several -> a tuple."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        return (value,)
    return tuple(value)
