"""The planner's bookkeeping while strategies run: which keys are decided, deferred, still open.

:func:`~weightsurgery.match.planner.make_plan` runs the strategies in order
and hands each result to :meth:`Claims.take`, which decides its matches
through the :class:`~weightsurgery.match.decide.Decider` and closes the keys
they fill: a strategy may not claim a decided key or invent a source. A name
match of another size is deferred, kept only if no later strategy fills the key.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Mapping, Sequence

from weightsurgery.match.base import Match, Matches, MatchRun, StrategyResult
from weightsurgery.match.decide import Decider
from weightsurgery.match.options import PlanOptions
from weightsurgery.match.plan import Action, PlanEntry
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta

__all__ = ["READS", "Claims"]

_SHAPE = operator.attrgetter("shape")
#: The actions that read a source tensor.
READS = frozenset({Action.LOAD, Action.ADAPT})
#: Strategies whose pair is the two sides' names meaning the same tensor (the user's, or a trusted wrapper prefix).
_NAMING = frozenset({"explicit", "rename", "exact", "prefix", "wrappers"})


class Claims:
    """The planner's state while strategies run: what is decided, deferred and still open on each side.

    One set of each side's open keys for the whole run, updated as matches
    land: a key costs O(1) per strategy that still sees it, never a scan of
    all keys. A run of plain copies (:class:`~weightsurgery.match.base.MatchRun`)
    is decided pair by pair without a :class:`Match` for each.
    """

    def __init__(self, source: Mapping[str, TensorMeta], target: TargetSpec, options: PlanOptions, decide: Decider):
        self.source, self.target, self.options, self.decide = source, target, options, decide
        self.open_t, self.open_s = set(target.tensors), set(source)
        self.decided: dict[str, PlanEntry] = {}
        self.reasons: dict[str, str] = {}
        self.deferred: dict[str, PlanEntry] = {}  # name matches whose shapes differ, kept only if nothing better comes
        self.mismatches: list[PlanEntry] = []
        self._matched: dict[str, str] = {}  # target -> source of every loaded pair
        self._runs: list[tuple[Sequence[str], Sequence[str]]] = []  # loaded runs not yet in _matched
        self.filled = 0  # decided entries that read a source
        self.reshaped: list[str] = []  # keys whose entry may have a source shape other than the target's
        self.every_source_read = True  # False once a decided entry closes a source it does not read

    def matched(self) -> dict[str, str]:
        """Target -> source of every loaded pair (a run's pairs are added when a later strategy asks)."""
        for targets, sources in self._runs:
            self._matched.update(zip(targets, sources))
        self._runs.clear()
        return self._matched

    def take(self, result: StrategyResult) -> bool:
        """Decide ``result``'s matches and record its abstentions; whether any key closed."""
        closed = len(self.open_t), len(self.open_s)
        for part in result.matches.parts if isinstance(result.matches, Matches) else (result.matches,):
            if not isinstance(part, MatchRun):
                for m in part:
                    self._one(m)
            elif self.decide.plain:
                self._run(part)
            else:  # adapter rules or classes= may turn any pair into an adapted entry
                for t, s in zip(part.targets, part.sources):
                    self._one(Match(t, s, part.strategy, part.evidence))
        open_t, reasons = self.open_t, self.reasons
        for a in result.abstentions:
            if a.target in open_t and not (a.fallback and a.target in reasons):
                reasons[a.target] = a.reason
                if a.final:  # a veto: no later strategy may fill this key
                    self.decided[a.target] = PlanEntry(a.target, Action.INIT, strategy=a.strategy, evidence=a.reason)
                    open_t.discard(a.target)
        return (len(self.open_t), len(self.open_s)) != closed

    def revoke_moved_names(self) -> None:
        """Unload a source key refused by name for one key and loaded into another while its own key stays empty.

        A name strategy's pair refused for its shape says which key the
        source *is*. A later strategy may move it to another key only where
        the layout reuses names (an old layout's ``conv.3`` is the new
        ``conv.1.0``): then the name's own key is filled from another source.
        Where that key stays empty, nothing explains the move: the source is
        that key's counterpart, and the other key is kept (issue 9: never
        silently wrong). Runs need nothing here: they decide into
        :attr:`decided` like single matches.
        """
        decided = self.decided
        counterpart = {
            e.source: key for key, e in self.deferred.items()
            if e.strategy in _NAMING and e.source and not (key in decided and decided[key].action in READS)
        }
        if not counterpart:
            return
        spec = self.target.tensors
        moved: dict[tuple[str | None, str, str], str] = {}  # (strategy, target module, source module) -> the name
        for key, e in decided.items():
            if e.action in READS:
                named = next((counterpart[s] for s in (e.sources or (e.source,)) if s in counterpart and counterpart[s] != key), None)
                if named is not None:
                    moved[e.strategy, spec[key].module, (e.source or "").rpartition(".")[0]] = named
        if not moved:
            return
        for key, e in list(decided.items()):  # the module pair goes with its tensor: its alignment rested on it
            named = moved.get((e.strategy, spec[key].module, (e.source or "").rpartition(".")[0]))
            if named is None or e.action not in READS:
                continue
            decided[key] = PlanEntry(key, Action.INIT, strategy=e.strategy, evidence=(
                f"not loaded: {e.strategy} paired its module with {e.source.rpartition('.')[0]}, but that holds the "
                f"name counterpart of {named}, refused for its shape ({self.deferred[named].evidence}), and nothing "
                f"else fills {named}; map it explicitly with key_map= if it is right"
            ))
            self.filled -= 1
            self.every_source_read = False

    def _run(self, run: MatchRun) -> None:
        """Plain copies in bulk: same-shaped pairs of open keys load; any other pair takes the general path.

        Each step is one C-level pass over the run (set and dict operations,
        ``map``), not a Python step per pair.
        """
        targets, sources, strategy, evidence = run.targets, run.sources, run.strategy, run.evidence
        shapes, target_shapes = run.source_shapes, run.target_shapes
        open_t, open_s = self.open_t, self.open_s
        if not self._all_open(targets, sources):
            shapes = target_shapes = None  # read again for the pairs that stand
            pairs = [(t, s) for t, s in zip(targets, sources) if t in open_t and s in open_s]
            if len({t for t, _ in pairs}) < len(pairs) or len({s for _, s in pairs}) < len(pairs):
                for t, s in pairs:  # a key twice in one run: the first claim wins, one pair at a time
                    self._one(Match(t, s, strategy, evidence))
                return
            targets, sources = [t for t, _ in pairs], [s for _, s in pairs]
            open_t.difference_update(targets)
            open_s.difference_update(sources)
        if shapes is None:
            shapes = list(map(_SHAPE, map(self.source.__getitem__, sources)))
        if target_shapes is None:
            target_shapes = list(map(_SHAPE, map(self.target.tensors.__getitem__, targets)))
        same = list(map(operator.eq, shapes, target_shapes))
        others = []
        if not all(same):  # a pair of other shapes goes through the mismatch policy, one at a time
            others = [Match(t, s, strategy, evidence) for t, s, ok in zip(targets, sources, same) if not ok]
            open_t.update(m.target for m in others)
            open_s.update(m.source for m in others)
            targets, sources, shapes = (list(itertools.compress(c, same)) for c in (targets, sources, shapes))
        self.decided.update(zip(targets, PlanEntry.loads(targets, sources, strategy, evidence, shapes)))
        self._runs.append((targets, sources))
        self.filled += len(targets)
        for m in others:
            self._one(m)

    def _all_open(self, targets: Sequence[str], sources: Sequence[str]) -> bool:
        """Close every key of the run if each is open and named once (the usual case); else change nothing."""
        open_t, open_s = self.open_t, self.open_s
        if not (open_t.issuperset(targets) and open_s.issuperset(sources)):
            return False
        n_t, n_s = len(open_t), len(open_s)
        open_t.difference_update(targets)
        open_s.difference_update(sources)
        if n_t - len(open_t) == len(targets) and n_s - len(open_s) == len(sources):
            return True
        open_t.update(targets)  # a key named twice: put every key back, for the pair-by-pair path
        open_s.update(sources)
        return False

    def _one(self, m: Match) -> None:
        if m.target not in self.open_t:
            return  # a strategy may not claim a decided key
        if m.sources:
            if any(s not in self.source for s in m.sources):
                return  # ... or invent a source
        elif m.source not in self.source:
            return
        if m.adapter is None and m.source not in self.open_s and not m.copy:
            return
        entry = self.decide(m)
        if entry.source_shape is not None and entry.source_shape != self.target.tensors[m.target].shape:
            self.reshaped.append(m.target)
        if entry.action is Action.INIT and entry.source_shape is not None:
            if self.options.on_mismatch == "error":
                self.mismatches.append(entry)
            elif sorted(entry.source_shape) != sorted(self.target.tensors[m.target].shape):
                # a same-named tensor of another size pairs nothing: both stay open for later strategies
                # (an old layout reusing names for other layers), and the key falls back to this entry.
                # A permuted shape (GPT-2's transposed Conv1D) is the same tensor in another layout: decided.
                self.deferred.setdefault(m.target, entry)
                self.reasons.setdefault(m.target, entry.evidence)
                return
        self.decided[m.target] = entry
        if entry.source and entry.action in READS:
            self._matched[m.target] = entry.source
            self.filled += 1
        else:
            self.every_source_read = False
        self.open_t.discard(m.target)
        if m.sources:
            self.open_s.difference_update(m.sources)
        else:
            self.open_s.discard(m.source)
