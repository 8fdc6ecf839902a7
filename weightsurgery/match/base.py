"""The contract between the planner and its matching strategies.

A strategy is a function ``(MatchContext) -> StrategyResult``. It looks only at
metadata (keys, shapes, dtypes, owning module types) and claims the pairs it is
sure of. It abstains, with a reason, where it sees several equally good
candidates. Keys it does not claim pass on to the next strategy.

A strategy that claims many plain copies at once (``exact`` and ``prefix``
on a 200k-key checkpoint) returns them as :class:`Matches`: runs of target
and source keys that share one strategy and one evidence string, with no
:class:`Match` object per pair unless one is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import NamedTuple, overload

from weightsurgery.match.plan import NO_ARGS
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta

__all__ = ["Abstain", "Match", "MatchContext", "MatchRun", "Matches", "Strategy", "StrategyResult"]


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
    adapter_args: Mapping[str, object] = NO_ARGS
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


class MatchRun(NamedTuple):
    """Plain copies of one strategy with one evidence string: ``targets[i]`` is filled from ``sources[i]``.

    ``target_shapes`` and ``source_shapes``, when given, are the shapes the
    strategy already read for each pair (from the context's metadata), so the
    planner compares them without reading 2 x 200k objects again.
    """

    targets: Sequence[str]
    sources: Sequence[str]
    strategy: str
    evidence: str = ""
    target_shapes: Sequence[tuple[int, ...]] | None = None
    source_shapes: Sequence[tuple[int, ...]] | None = None


class Matches(Sequence[Match]):
    """A strategy's matches, kept compact: runs of plain copies and single :class:`Match` objects, in order.

    It reads as a sequence of :class:`Match` (each one made when read); the
    planner reads :attr:`parts` and decides a run's pairs without making them.

    Example:
        >>> found = Matches()
        >>> found.add_run(["fc.weight", "fc.bias"], ["module.fc.weight", "module.fc.bias"], "prefix", "stripped")
        >>> found.append(Match("head.weight", "classifier.weight", "prefix", "stripped; rivals"))
        >>> len(found), found[1].source, [m.target for m in found]
        (3, 'module.fc.bias', ['fc.weight', 'fc.bias', 'head.weight'])
    """

    __slots__ = ("_len", "_listed", "_parts")

    def __init__(self) -> None:
        self._parts: list[MatchRun | list[Match]] = []
        self._len = 0
        self._listed: list[Match] | None = None

    @property
    def parts(self) -> Sequence[MatchRun | list[Match]]:
        """The runs and lists of single matches, in the order they were added."""
        return self._parts

    def add_run(
        self,
        targets: Sequence[str],
        sources: Sequence[str],
        strategy: str,
        evidence: str = "",
        *,
        target_shapes: Sequence[tuple[int, ...]] | None = None,
        source_shapes: Sequence[tuple[int, ...]] | None = None,
    ) -> None:
        """Add the plain copies ``targets[i] <- sources[i]`` (lists of one length; shapes as :class:`MatchRun`)."""
        lengths = {len(x) for x in (targets, sources, target_shapes, source_shapes) if x is not None}
        if len(lengths) > 1:
            raise ValueError(f"a run needs as many targets as sources (and shapes), got lengths {sorted(lengths)}")
        if targets:
            self._parts.append(MatchRun(targets, sources, strategy, evidence, target_shapes, source_shapes))
            self._len += len(targets)
            self._listed = None

    def append(self, match: Match) -> None:
        """Add one match."""
        last = self._parts[-1] if self._parts else None
        if isinstance(last, list):
            last.append(match)
        else:
            self._parts.append([match])
        self._len += 1
        self._listed = None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Match]:
        for part in self._parts:
            if isinstance(part, MatchRun):
                strategy, evidence = part.strategy, part.evidence
                yield from (Match(t, s, strategy, evidence) for t, s in zip(part.targets, part.sources))
            else:
                yield from part

    @overload
    def __getitem__(self, index: int) -> Match: ...

    @overload
    def __getitem__(self, index: slice) -> list[Match]: ...

    def __getitem__(self, index: int | slice) -> Match | list[Match]:
        if self._listed is None:
            self._listed = list(self)
        return self._listed[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Matches({list(self)!r})"


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
        open_target_set, open_source_set: the same open keys as sets, when the
            planner keeps them (read them through :meth:`open_sets`; never change them).
    """

    source: Mapping[str, TensorMeta]
    target: TargetSpec
    open_targets: list[str]
    open_sources: list[str]
    source_metadata: Mapping[str, object] = field(default_factory=dict)
    matched: Mapping[str, str] = field(default_factory=dict)
    open_target_set: AbstractSet[str] | None = field(default=None, repr=False)
    open_source_set: AbstractSet[str] | None = field(default=None, repr=False)

    def open_sets(self) -> tuple[AbstractSet[str], AbstractSet[str]]:
        """The open target and source keys as sets: the planner's own (no copy of 200k keys), else made here."""
        targets = self.open_target_set if self.open_target_set is not None else set(self.open_targets)
        sources = self.open_source_set if self.open_source_set is not None else set(self.open_sources)
        return targets, sources


Strategy = Callable[[MatchContext], StrategyResult]
