"""The contract between the planner and its matching strategies.

A strategy is a function ``(MatchContext) -> StrategyResult``. It looks only at
metadata (keys, shapes, dtypes, owning module types) and claims the pairs it is
sure of. It abstains, with a reason, where it sees several equally good
candidates. Keys it does not claim pass on to the next strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta

__all__ = ["Abstain", "Match", "MatchContext", "Strategy", "StrategyResult"]


@dataclass(frozen=True, slots=True)
class Match:
    """A strategy's claim that ``source`` fills ``target``.

    Attributes:
        target: canonical target key.
        source: source key.
        strategy: the strategy's name (``"exact"``, ``"prefix"``, ``"suffix"``...).
        evidence: why, in words (``"stripped 'module.'"``).
        sources: every source key read, for multi-source adapters (``q,k,v`` -> ``qkv``);
            empty means just ``source``.
        adapter: the adapter the match needs (a name registered in ``weightsurgery.adapt``),
            or ``None`` for a plain copy. A match that names an adapter may read a
            source key another match already read (a fused ``qkv`` split three ways).
        adapter_args: the adapter's keyword arguments (JSON-serialisable).
        copy: ``source`` may fill other targets too, each with its own copy (a user's
            explicit map naming one source for two targets); otherwise a source
            fills one target only.
    """

    target: str
    source: str
    strategy: str
    evidence: str = ""
    sources: tuple[str, ...] = ()
    adapter: str | None = None
    adapter_args: Mapping[str, object] = field(default_factory=dict)
    copy: bool = False


@dataclass(frozen=True, slots=True)
class Abstain:
    """A strategy's refusal to choose for ``target``; the key stays open.

    Attributes:
        target: canonical target key.
        reason: why, naming the candidates (``"ambiguous: a.weight, b.weight"``).
        candidates: the source keys it could not tell apart.
        strategy: who abstained.
        final: the strategy knows the key has no counterpart in the source (its
            siblings loaded under a rename that the source lacks for this key),
            so later strategies must not fill it: the planner closes the key.
        fallback: a reason to show only where no other strategy gave one.
    """

    target: str
    reason: str
    candidates: tuple[str, ...] = ()
    strategy: str = ""
    final: bool = False
    fallback: bool = False


@dataclass(frozen=True)
class StrategyResult:
    matches: Sequence[Match] = ()
    abstentions: Sequence[Abstain] = ()


@dataclass
class MatchContext:
    """What a strategy sees.

    Attributes:
        source: every source key -> shape/dtype, in source order.
        target: the target description.
        open_targets: canonical target keys not yet matched, in module order.
        open_sources: source keys not yet used, in source order.
        source_metadata: the checkpoint's metadata (label names, classifier...).
        matched: target key -> source key of the pairs earlier strategies loaded
            (evidence of which containers correspond, for structural alignment).
    """

    source: Mapping[str, TensorMeta]
    target: TargetSpec
    open_targets: list[str]
    open_sources: list[str]
    source_metadata: Mapping[str, object] = field(default_factory=dict)
    matched: Mapping[str, str] = field(default_factory=dict)


Strategy = Callable[[MatchContext], StrategyResult]
