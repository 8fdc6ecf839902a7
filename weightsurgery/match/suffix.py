"""Suffix matching: the longest common suffix of whole dotted components.

``encoder.layer.0.attention.self.query.weight`` in the target and
``bert.encoder.layer.0.attention.self.query.weight`` in the source share every
component but the first; ``layer1.0.conv1.weight`` sits at the end of
``backbone.body.layer1.0.conv1.weight``. For each open target key this strategy
finds the open source keys that share the longest run of trailing components,
and claims the pair only when it is sure:

* the suffix is meaningful: the leaf plus at least one named (non-numeric)
  module, so ``weight`` or ``0.weight`` alone never match;
* the numeric components of both keys agree (``blocks.3`` never meets
  ``layers.5``; flat and nested numbering is left to structural alignment);
* exactly one candidate of the target's shape sits at the longest suffix, and
  no other target claims that source with a suffix as long.

A tie is an :class:`~weightsurgery.match.base.Abstain` naming the candidates.
A lone longest candidate of another shape is not claimed either; the
abstention says so, and the key stays open for later strategies.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

from weightsurgery.match.base import Abstain, Match, MatchContext, StrategyResult
from weightsurgery.match.tokens import numeric_components

__all__ = ["match_suffix"]

logger = logging.getLogger(__name__)

STRATEGY = "suffix"


@dataclass(frozen=True)
class _Claim:
    target: str
    source: str
    length: int  # components in the common suffix


def _meaningful(suffix: tuple[str, ...]) -> bool:
    """The leaf plus at least one named module: ``conv1.weight`` yes, ``0.weight`` no."""
    return len(suffix) >= 2 and any(not c.isdigit() for c in suffix[:-1])


def _suffix_index(keys: list[str]) -> dict[tuple[str, ...], list[str]]:
    """Every meaningful trailing run of components -> the keys that end with it."""
    index: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for key in keys:
        parts = tuple(key.split("."))
        for k in range(2, len(parts) + 1):
            suffix = parts[-k:]
            if _meaningful(suffix):
                index[suffix].append(key)
    return index


def match_suffix(ctx: MatchContext) -> StrategyResult:
    """Claim open target keys whose longest common component suffix with a source key is unique.

    Args:
        ctx: the keys still open, with their shapes.

    Returns:
        Matches (strategy ``"suffix"``) for unique equal-shape pairs, and
        abstentions naming the candidates of every tie or shape mismatch.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from weightsurgery.match.base import MatchContext
        >>> from weightsurgery.match.target import TargetSpec
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> target = TargetSpec.from_module(nn.ModuleDict({"conv1": nn.Conv2d(3, 8, 3, bias=False)}))
        >>> source = {"backbone.body.conv1.weight": TensorMeta((8, 3, 3, 3), torch.float32)}
        >>> ctx = MatchContext(source, target, list(target.tensors), list(source))
        >>> [(m.target, m.source) for m in match_suffix(ctx).matches]
        [('conv1.weight', 'backbone.body.conv1.weight')]
    """
    index = _suffix_index(ctx.open_sources)
    claims: dict[str, list[_Claim]] = defaultdict(list)  # source -> targets claiming it
    abstentions: list[Abstain] = []
    for target in ctx.open_targets:
        tt = ctx.target.tensors[target]
        parts = tuple(target.split("."))
        numbers = numeric_components(target)
        for k in range(len(parts), 1, -1):
            candidates = [s for s in index.get(parts[-k:], ()) if numeric_components(s) == numbers]
            if candidates:
                break
        else:
            continue
        fitting = [s for s in candidates if ctx.source[s].shape == tt.shape]
        if len(fitting) == 1:
            claims[fitting[0]].append(_Claim(target, fitting[0], k))
        elif len(fitting) > 1:
            abstentions.append(
                Abstain(
                    target,
                    f"ambiguous: {', '.join(fitting)} all end with '{'.'.join(parts[-k:])}' and have shape "
                    f"{tt.shape}; map {target} explicitly with rename=",
                    tuple(fitting),
                    STRATEGY,
                )
            )
        else:
            shapes = ", ".join(f"{s} {ctx.source[s].shape}" for s in candidates)
            abstentions.append(
                Abstain(
                    target,
                    f"suffix candidates differ in shape from {target} {tt.shape}: {shapes}",
                    tuple(candidates),
                    STRATEGY,
                )
            )

    matches: list[Match] = []
    for source, rivals in claims.items():
        longest = max(c.length for c in rivals)
        best = [c for c in rivals if c.length == longest]
        if len(best) == 1:
            c = best[0]
            matches.append(
                Match(
                    c.target,
                    source,
                    STRATEGY,
                    f"longest common suffix '{_tail(source, c.length)}' ({c.length} components)",
                )
            )
        losers = rivals if len(best) > 1 else [c for c in rivals if c is not best[0]]
        others = [c.target for c in rivals]
        for c in losers:
            abstentions.append(
                Abstain(
                    c.target,
                    f"ambiguous: source {source} fits {', '.join(others)} equally or better; "
                    f"map {c.target} explicitly with rename=",
                    (source,),
                    STRATEGY,
                )
            )
    order = {t: i for i, t in enumerate(ctx.open_targets)}
    matches.sort(key=lambda m: order[m.target])
    logger.debug("suffix: %d matches, %d abstentions", len(matches), len(abstentions))
    return StrategyResult(matches, abstentions)


def _tail(key: str, n: int) -> str:
    return ".".join(key.split(".")[-n:])
