"""Init rules: which spec fills which leftover tensor.

Rules are checked in the order given and the first match wins. A rule
selects by:

* a glob on the target key (:func:`fnmatch.fnmatchcase`, so ``*`` also
  crosses dots): ``"head.*"``, ``"*.bias"``;
* a regular expression, found anywhere in the key (:func:`re.search`): a
  compiled :class:`re.Pattern`, or a string prefixed ``re:`` such as
  ``r"re:blocks\\.\\d+\\.mlp"``;
* a module type, with ``isinstance`` semantics on the owning module:
  ``nn.Conv2d``.

``"*"`` is the fallback wherever it appears: it applies after every other
rule. Passing a single spec instead of a mapping means ``{"*": spec}``. A
tensor no rule selects gets ``keep``: the values its constructor gave it.

Buffers (batch-norm running statistics and the like) are not weights: the
fallback and module-type rules pass them by, so an unloaded buffer keeps its
constructor's values unless a glob or regex rule names it
(``{"*.running_*": "reset"}``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from torch import nn

from weightsurgery.errors import InitSpecError, InitSpecMismatchError
from weightsurgery.init.parse import SpecLike, parse_spec_brief, valid_specs
from weightsurgery.init.specs import InitSpec, Keep
from weightsurgery.match.target import TargetTensor

__all__ = ["InitRule", "InitRules", "RuleKey"]

RuleKey = str | re.Pattern[str] | type[nn.Module]
"""What a rule may select by: a glob, ``"re:..."``, a compiled regex, or a module type."""

DEFAULT_LABEL = "default"
_FALLBACK = "*"


@dataclass(frozen=True)
class InitRule:
    """One rule: a selector and the spec it chooses.

    Attributes:
        label: how reports name the rule (``"head.*"``, ``"re:mlp"``, ``"Conv2d"``, ``"*"``).
        spec: the spec it chooses.
        kind: ``"glob"``, ``"regex"``, ``"type"`` or ``"fallback"``.
        selector: the glob string, compiled regex or module type (``None`` for the fallback).
    """

    label: str
    spec: InitSpec
    kind: Literal["glob", "regex", "type", "fallback"]
    selector: str | re.Pattern[str] | type[nn.Module] | None = None

    def matches(self, key: str, module_type: type, *, is_buffer: bool = False) -> bool:
        """Whether this rule selects ``key``, owned by a ``module_type`` module."""
        selector = self.selector
        if isinstance(selector, str):
            return fnmatch.fnmatchcase(key, selector)
        if isinstance(selector, re.Pattern):
            return selector.search(key) is not None
        if is_buffer:
            return False
        if isinstance(selector, type):
            return issubclass(module_type, selector)
        return True


@dataclass(frozen=True)
class InitRules:
    """An ordered list of :class:`InitRule`; the first match wins, then the fallback.

    Attributes:
        rules: the rules, in order, with the fallback (if any) last.

    Example:
        >>> from torch import nn
        >>> rules = InitRules.from_user({"*.bias": "zeros", nn.Linear: "trunc_normal(std=0.02)"})
        >>> spec, label = rules.select("head.bias", nn.Linear)
        >>> spec.describe(), label
        ('zeros', '*.bias')
        >>> rules.select("conv.weight", nn.Conv2d)[1]
        'default'
    """

    rules: tuple[InitRule, ...] = ()

    @classmethod
    def from_user(cls, init: InitRules | SpecLike | Mapping[RuleKey, SpecLike] | None) -> InitRules:
        """Build rules from what a user passes as ``init=``.

        Args:
            init: ``None`` (keep the constructor's values), one spec (a spec
                string, an :class:`InitSpec` or a callable), or a mapping
                ``{glob | "re:regex" | re.Pattern | module type: spec}``.

        Returns:
            The rules, every spec parsed.

        Raises:
            InitSpecError: one error listing every bad rule (an unknown spec,
                a bad argument, an invalid regex, a selector of the wrong type).

        Example:
            >>> [r.label for r in InitRules.from_user({"*": "zeros", "head.*": "ones"}).rules]
            ['head.*', '*']
        """
        if init is None:
            return cls()
        if isinstance(init, InitRules):
            return init
        if not isinstance(init, Mapping):
            try:
                return cls((InitRule(_FALLBACK, parse_spec_brief(init), "fallback"),))
            except InitSpecError as exc:
                raise InitSpecError(f"init={init!r}: {exc}\nValid init specs:\n{valid_specs()}") from None
        rules: list[InitRule] = []
        fallback: list[InitRule] = []
        problems: list[str] = []
        for selector, value in init.items():
            try:
                rule = _make_rule(selector, value)
            except InitSpecError as exc:
                problems.append(f"  rule {_label_of(selector)!r}: {exc}")
                continue
            (fallback if rule.kind == "fallback" else rules).append(rule)
        if problems:
            raise InitSpecError(
                f"{len(problems)} bad init rule(s):\n" + "\n".join(problems) + f"\nValid init specs:\n{valid_specs()}"
            )
        return cls(tuple(rules + fallback))

    def select(self, key: str, module_type: type, *, is_buffer: bool = False) -> tuple[InitSpec, str]:
        """The spec for ``key`` and the label of the rule that chose it.

        Args:
            key: the canonical target key.
            module_type: the class of the module that owns the tensor.
            is_buffer: the tensor is a buffer (the fallback and type rules skip buffers).

        Returns:
            ``(spec, label)``; ``(Keep(), "default")`` when no rule matches.
        """
        for rule in self.rules:
            if rule.matches(key, module_type, is_buffer=is_buffer):
                return rule.spec, rule.label
        return Keep(), DEFAULT_LABEL

    def check(self, tensors: Mapping[str, TargetTensor] | Iterable[TargetTensor]) -> dict[str, tuple[InitSpec, str]]:
        """Select a spec for every tensor and verify it fits, raising once for all problems.

        Args:
            tensors: the target tensors to initialize (a ``{key: TargetTensor}``
                mapping or the tensors themselves).

        Returns:
            key -> ``(spec, label)``, in the order given.

        Raises:
            InitSpecMismatchError: a spec that cannot fill its tensor (a fan-based
                spec on a 1-D tensor, a random spec on an integer tensor); one
                line per key.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> t = TargetTensor("fc.bias", (3,), torch.float32, "fc", nn.Linear, "bias")
            >>> InitRules.from_user({"*.bias": "zeros", "*": "xavier_uniform"}).check([t])["fc.bias"][1]
            '*.bias'
        """
        items = tensors.values() if isinstance(tensors, Mapping) else tensors
        chosen: dict[str, tuple[InitSpec, str]] = {}
        problems: list[str] = []
        for t in items:
            spec, label = self.select(t.key, t.module_type, is_buffer=t.is_buffer)
            try:
                spec.check(t.shape, key=t.key, dtype=t.dtype)
            except InitSpecError as exc:
                problems.append(f"  (rule {label!r}) {exc}")
            chosen[t.key] = (spec, label)
        if problems:
            raise InitSpecMismatchError(
                f"{len(problems)} tensor(s) cannot take the init spec their rule chose:\n" + "\n".join(problems),
                problems=problems,
            )
        return chosen

    def describe(self) -> list[str]:
        """One ``"label: spec"`` line per rule, for reports and logs.

        Example:
            >>> InitRules.from_user("zeros").describe()
            ['*: zeros']
        """
        return [f"{r.label}: {r.spec.describe()}" for r in self.rules]


def _make_rule(selector: object, value: SpecLike) -> InitRule:
    spec = parse_spec_brief(value)
    if isinstance(selector, re.Pattern):
        return InitRule(f"re:{selector.pattern}", spec, "regex", selector)
    if isinstance(selector, type):
        if not issubclass(selector, nn.Module):
            raise InitSpecError(f"{selector.__name__} is not an nn.Module subclass; a type rule needs a module class")
        return InitRule(selector.__name__, spec, "type", selector)
    if isinstance(selector, str):
        if selector == _FALLBACK:
            return InitRule(_FALLBACK, spec, "fallback")
        if selector.startswith("re:"):
            try:
                return InitRule(selector, spec, "regex", re.compile(selector[3:]))
            except re.error as exc:
                raise InitSpecError(f"invalid regular expression {selector[3:]!r}: {exc}") from None
        return InitRule(selector, spec, "glob", selector)
    raise InitSpecError(
        f"a rule selector has type {type(selector).__name__}; use a glob string, 're:regex', "
        f"a compiled re.Pattern or an nn.Module subclass"
    )


def _label_of(selector: object) -> str:
    if isinstance(selector, re.Pattern):
        return f"re:{selector.pattern}"
    if isinstance(selector, type):
        return selector.__name__
    return str(selector)
