"""Explicit adapter rules: "run adapter X on target keys like P".

A rule's ``pattern`` matches the whole target key: a glob (``blocks.*.attn.qkv.weight``)
or, with a ``re:`` prefix, a regular expression (``re:blocks\\.(\\d+)\\.attn\\.qkv\\.weight``).

How a rule's ``sources`` are resolved:

* empty (the default): the rule adapts the source key the matching strategies
  paired with the target, as an auto-proposal would.
* otherwise each entry is a template expanded with :meth:`re.Match.expand`
  against the target key's match, naming a source key exactly as the
  checkpoint stores it (before any rename rule). In a ``re:`` pattern use its
  groups (``\\1``, ``\\g<name>``); in a glob each ``*``, ``?`` and ``[...]`` is a
  group, numbered left to right. So ``AdaptRule("blocks.*.attn.qkv.weight",
  "fuse", sources=("blocks.\\1.attn.q.weight", "blocks.\\1.attn.k.weight",
  "blocks.\\1.attn.v.weight"))`` fuses each block's q, k, v.

The first rule whose pattern matches wins. Options the rule leaves out are
taken from the automatic proposal when it picks the same adapter, so
``AdaptRule("pos_embed", "pos_embed", {"interpolation": "bilinear"})`` keeps
the inferred grids.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from weightsurgery.adapt.propose import AdaptContext, propose_adapter
from weightsurgery.adapt.registry import get_adapter
from weightsurgery.errors import AdapterError

__all__ = ["AdaptRule", "match_rule"]

REGEX_PREFIX = "re:"


@dataclass(frozen=True)
class AdaptRule:
    """Run ``adapter`` with ``args`` on every target key matching ``pattern``.

    Attributes:
        pattern: a glob, or ``re:`` + a regex, matched against the whole target key.
        adapter: a registered adapter name.
        args: the adapter's options (JSON-serialisable).
        sources: source-key templates (see the module docstring); empty means
            the source key the matchers found.

    Example:
        >>> rule = AdaptRule("blocks.*.attn.qkv.weight", "fuse",
        ...                  sources=(r"blocks.\\1.attn.q.weight", r"blocks.\\1.attn.k.weight"))
        >>> rule.source_keys("blocks.3.attn.qkv.weight")
        ('blocks.3.attn.q.weight', 'blocks.3.attn.k.weight')
    """

    pattern: str
    adapter: str
    args: Mapping[str, Any] = field(default_factory=dict, hash=False)
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise AdapterError(f"AdaptRule pattern must be a non-empty string, got {self.pattern!r}")
        get_adapter(self.adapter)  # unknown names fail here, listing the registered ones
        if not isinstance(self.args, Mapping):
            raise AdapterError(f"AdaptRule {self.pattern!r}: args must be a mapping, got {type(self.args).__name__}")
        object.__setattr__(self, "args", dict(self.args))
        if isinstance(self.sources, str):
            object.__setattr__(self, "sources", (self.sources,))
        object.__setattr__(self, "sources", tuple(str(s) for s in self.sources))
        try:
            object.__setattr__(self, "_regex", _compile(self.pattern))
        except re.error as exc:
            raise AdapterError(f"AdaptRule pattern {self.pattern!r} is not a valid regex: {exc}") from exc

    def match(self, target_key: str) -> re.Match[str] | None:
        """The pattern's full match on ``target_key``, or ``None``."""
        regex: re.Pattern[str] = self.__dict__["_regex"]
        return regex.fullmatch(target_key)

    def source_keys(self, target_key: str, default: str | None = None) -> tuple[str, ...]:
        """The source keys this rule reads for ``target_key``.

        Args:
            target_key: a key the pattern matches.
            default: the matched source key, used when ``sources`` is empty.

        Raises:
            AdapterError: the pattern does not match, a template refers to a
                group the pattern lacks, or there is no source at all.
        """
        m = self.match(target_key)
        if m is None:
            raise AdapterError(f"AdaptRule {self.pattern!r} does not match target key {target_key!r}")
        if not self.sources:
            if default is None:
                raise AdapterError(
                    f"AdaptRule {self.pattern!r} has no sources and {target_key!r} has no matched source key; "
                    "give sources=(...)"
                )
            return (default,)
        try:
            return tuple(m.expand(t) for t in self.sources)
        except (re.error, IndexError) as exc:
            raise AdapterError(
                f"AdaptRule {self.pattern!r}: a source template in {list(self.sources)} refers to a missing "
                f"group ({exc}); the pattern has {len(m.groups())} group(s)"
            ) from exc

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pattern": self.pattern, "adapter": self.adapter}
        if self.args:
            out["args"] = dict(self.args)
        if self.sources:
            out["sources"] = list(self.sources)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdaptRule:
        """Build a rule from ``{"pattern", "adapter", "args"?, "sources"?}``.

        Raises:
            AdapterError: a missing or unknown field (named in the message).
        """
        if not isinstance(data, Mapping):
            raise AdapterError(f"an adapt rule must be a mapping with 'pattern' and 'adapter', got {data!r}")
        unknown = sorted(set(data) - {"pattern", "adapter", "args", "sources"})
        if unknown:
            raise AdapterError(
                f"adapt rule {dict(data)!r}: unknown field(s) {unknown}; use pattern, adapter, args, sources"
            )
        missing = [k for k in ("pattern", "adapter") if k not in data]
        if missing:
            raise AdapterError(f"adapt rule {dict(data)!r}: missing field(s) {missing}")
        return cls(
            str(data["pattern"]), str(data["adapter"]), dict(data.get("args") or {}), tuple(data.get("sources") or ())
        )


def match_rule(
    rules: Sequence[AdaptRule], target_key: str, source_key: str | None, ctx: AdaptContext
) -> tuple[str, dict[str, Any], tuple[str, ...]] | None:
    """The first rule matching ``target_key``, resolved: ``(adapter, args, source_keys)``.

    Args:
        rules: the rules, in priority order.
        target_key: the target key.
        source_key: the source key the matchers paired with it (or ``None``).
        ctx: both sides' metadata; source keys are checked against ``ctx.source``.

    Returns:
        The adapter name, its options (the rule's over the auto-proposal's for
        the same adapter), and the source keys, or ``None`` when no rule matches.

    Raises:
        AdapterError: a rule names a source key the checkpoint lacks (closest keys given).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from weightsurgery.match.target import TargetSpec
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> ctx = AdaptContext(TargetSpec.from_module(nn.Linear(3, 2)), {"w": TensorMeta((3, 2), torch.float32)})
        >>> match_rule([AdaptRule("weight", "transpose")], "weight", "w", ctx)
        ('transpose', {}, ('w',))
    """
    for rule in rules:
        if rule.match(target_key) is None:
            continue
        sources = rule.source_keys(target_key, source_key)
        missing = [s for s in sources if s not in ctx.source]
        if missing:
            close = difflib.get_close_matches(missing[0], list(ctx.source), n=3)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise AdapterError(
                f"AdaptRule {rule.pattern!r} for {target_key!r} reads source key(s) {missing} "
                f"that the checkpoint does not have{hint}"
            )
        args = dict(rule.args)
        if source_key is not None and len(sources) == 1:
            auto = propose_adapter(target_key, sources[0], ctx)
            if isinstance(auto, tuple) and auto[0] == rule.adapter:
                args = {**auto[1], **args}
        return rule.adapter, args, sources
    return None


def _compile(pattern: str) -> re.Pattern[str]:
    if pattern.startswith(REGEX_PREFIX):
        return re.compile(pattern[len(REGEX_PREFIX) :])
    return re.compile(_glob_to_regex(pattern))


def _glob_to_regex(glob: str) -> str:
    """fnmatch syntax, with every wildcard a numbered group."""
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append("(.*)")
        elif c == "?":
            out.append("(.)")
        elif c == "[" and (j := glob.find("]", i + 2)) != -1:
            body = glob[i + 1 : j]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("([" + body.replace("\\", "\\\\") + "])")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)
