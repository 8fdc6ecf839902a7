"""Make a :class:`Plan` from metadata: run the strategies in order, then decide each key.

Strategies run in this order, each on the keys still open:

1. ``explicit``  the user's exact ``key_map={target_key: source_key}``
2. ``rename``    the user's regex rules ``rename={pattern: replacement}``, then an exact match
3. ``exact``     same name
4. ``prefix``    a wrapper prefix stripped or added, per subtree
   ``aliases``   the names other libraries give a source's tensors (a GGUF file's ``gguf`` tensor map)
5. ``wrappers``  wrapper components at any depth (``_orig_mod``, ``_checkpoint_wrapped_module``, PEFT's ``base_layer``)
6. ``fused``     separate ``q,k,v`` to and from a fused ``qkv`` (and gate/up)
7. ``recurrent`` a multi-layer ``LSTM``/``GRU``/``RNN`` to and from one module or cell per layer
8. ``suffix``    the longest common suffix of whole components
9. ``structure`` module-tree alignment, for checkpoints from another library

The planner then decides each target key: a same-shaped match loads; a shape
mismatch follows ``on_mismatch``; an unmatched key is initialized, with the
reason (no candidate, ambiguous, shape mismatch).
"""

from __future__ import annotations

import fnmatch
import importlib
import itertools
import logging
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from weightsurgery.errors import PlanError, ShapeMismatchError
from weightsurgery.match.base import Match, MatchContext, Matches, MatchRun, Strategy, StrategyResult
from weightsurgery.match.decide import Decider
from weightsurgery.match.layout import MismatchPolicy, check_layout
from weightsurgery.match.names import compile_rename, explicit_strategy, match_exact, match_prefix, rename_strategy
from weightsurgery.match.options import PlanOptions, check_key_forms
from weightsurgery.match.numbering import NAME_STRATEGIES, refuse_shifted_numbering
from weightsurgery.match.plan import Action, Plan, PlanEntry
from weightsurgery.match.related import veto_unrelated
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta
from weightsurgery.sources.shared import unused_sources

__all__ = ["STRATEGIES", "MismatchPolicy", "PlanOptions", "make_plan", "plan_unused"]

logger = logging.getLogger(__name__)

_SHAPE, _ACTION = operator.attrgetter("shape"), operator.attrgetter("action")
_SOURCE, _SOURCES = operator.attrgetter("source"), operator.attrgetter("sources")
_READS = frozenset({Action.LOAD, Action.ADAPT})  # the actions that read a source tensor
#: Strategies whose pair is the two sides' names meaning the same tensor (the user's, or a trusted wrapper prefix).
_NAMING = frozenset({"explicit", "rename", "exact", "prefix", "wrappers"})


#: Built-in strategies by name, in the order they run. Optional ones are imported lazily.
STRATEGIES: tuple[str, ...] = (
    "explicit",
    "rename",
    "exact",
    "prefix",
    "aliases",
    "wrappers",
    "fused",
    "recurrent",
    "suffix",
    "structure",
)

_OPTIONAL: dict[str, tuple[str, str]] = {
    "aliases": ("weightsurgery.match.aliases", "match_aliases"),
    "wrappers": ("weightsurgery.match.wrappers", "match_wrappers"),
    "fused": ("weightsurgery.match.fused", "match_fused"),
    "recurrent": ("weightsurgery.match.recurrent", "match_recurrent"),
    "suffix": ("weightsurgery.match.suffix", "match_suffix"),
    "structure": ("weightsurgery.match.structure", "match_structure"),
}


def _strategy_list(options: PlanOptions) -> list[tuple[str, Strategy]]:
    names = list(options.strategies) if options.strategies is not None else list(STRATEGIES)
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise PlanError(f"unknown strategies {unknown}; valid strategies are: {', '.join(STRATEGIES)}")
    out: list[tuple[str, Strategy]] = []
    for name in STRATEGIES:
        if name not in names:
            continue
        if name == "explicit" and options.key_map:
            out.append((name, explicit_strategy(options.key_map)))
        elif name == "rename" and options.rename:
            out.append((name, rename_strategy(compile_rename(options.rename))))
        elif name == "exact":
            out.append((name, match_exact))
        elif name == "prefix":
            out.append((name, match_prefix))
        elif name in _OPTIONAL:
            module, attr = _OPTIONAL[name]
            try:  # imported when used, and part of every install: a failure is a broken install
                out.append((name, getattr(importlib.import_module(module), attr)))
            except (ImportError, AttributeError) as exc:
                raise ImportError(
                    f"built-in matching strategy {name!r} cannot be loaded from {module}.{attr} ({exc}); "
                    "the weightsurgery install is broken: reinstall it, or pass strategies= without it"
                ) from exc
    out += [(getattr(s, "__name__", "custom"), s) for s in options.extra_strategies]
    return out


def make_plan(
    source: Mapping[str, TensorMeta],
    target: TargetSpec,
    options: PlanOptions | None = None,
    *,
    source_metadata: Mapping[str, Any] | None = None,
    source_name: str = "",
) -> Plan:
    """Match ``source`` keys to ``target`` keys and decide each target key.

    Args:
        source: source key -> shape/dtype (a ``Checkpoint.metas``).
        target: the target description.
        options: strategies, rename rules, key map, mismatch policy, adapters.
        source_metadata: the checkpoint's metadata (label names, classifier...).
        source_name: a description of the source, kept on the plan.

    Returns:
        A :class:`Plan` with one entry per target key, aliases included.

    Raises:
        PlanError: bad options, a rename or key map in the other's form, or a
            key map naming keys that do not exist.
        ShapeMismatchError: ``on_mismatch="error"`` and a name match differs in shape;
            every such key is listed.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from weightsurgery.match.target import TargetSpec
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> src = {"module.0.weight": TensorMeta((3, 2), torch.float32), "module.0.bias": TensorMeta((3,), torch.float32)}
        >>> plan = make_plan(src, TargetSpec.from_module(nn.Sequential(nn.Linear(2, 3))))
        >>> plan.mapping
        {'0.weight': 'module.0.weight', '0.bias': 'module.0.bias'}
    """
    options = options or PlanOptions()
    check_key_forms(options, source, target.tensors)
    metadata = dict(source_metadata or {})
    ctx = MatchContext(
        source=source,
        target=target,
        open_targets=list(target.tensors),
        open_sources=list(source),
        source_metadata=metadata,
    )
    claims = _Claims(source, target, options, Decider(source, target, options, metadata))
    excluded = _excluded(target, options.exclude)
    for key, pattern in excluded.items():
        claims.decided[key] = PlanEntry(key, Action.INIT, evidence=f"excluded by rule {pattern!r}")
    claims.decided.update(claims.decide.ruled(t for t in ctx.open_targets if t not in claims.decided))
    if claims.decided:
        ctx.open_targets = [t for t in ctx.open_targets if t not in claims.decided]
        claims.open_t.difference_update(claims.decided)
        claims.reshaped += claims.decided  # an adapter rule's source may have another shape
    claims.filled = sum(1 for e in claims.decided.values() if e.action in _READS)
    ctx.open_target_set, ctx.open_source_set = claims.open_t, claims.open_s  # kept in step with the lists
    numbering: dict[str, object] = {}  # both sides' numbered containers, indexed once when first needed
    for name, strategy in _strategy_list(options):
        if not claims.open_t:
            break  # everything is explained: later strategies see nothing and cost nothing
        ctx.matched = claims.matched()  # what earlier strategies loaded: evidence of corresponding containers
        result = strategy(ctx)
        if name in NAME_STRATEGIES:
            result = refuse_shifted_numbering(result, ctx, numbering)
        logger.debug("%s: %d matches, %d abstentions", name, len(result.matches), len(result.abstentions))
        if claims.take(result):
            open_t, open_s = claims.open_t, claims.open_s
            ctx.open_targets = [t for t in ctx.open_targets if t in open_t] if open_t else []
            ctx.open_sources = [s for s in ctx.open_sources if s in open_s] if open_s else []

    if claims.deferred:
        claims.revoke_moved_names()
    decided, deferred = claims.decided, claims.deferred
    named = {**{k: e for k, e in deferred.items() if k not in decided}, **decided} if deferred else decided
    relaid = check_layout(named, target, options.on_mismatch, (m.shape for m in source.values()), reshaped=claims.reshaped)
    filled = claims.filled + sum((e.action in _READS) - (k in decided and decided[k].action in _READS) for k, e in relaid.items())
    decided.update(relaid)
    every_source_read = claims.every_source_read and not claims.open_s and not relaid
    if filled + len(excluded) < len(target.tensors):  # a plan that fills every key is related by any measure
        every_source_read = False
        named = {**{k: e for k, e in deferred.items() if k not in decided}, **decided}
        decided.update(veto_unrelated(
            named, source, target, exclude=excluded, opted_in=options.strategies is not None,
            evidence={**named, **deferred},  # a name refused for its size contradicts, whoever filled the key later
        ))
    if metadata.get("framework"):  # another framework's checkpoint: undecided layouts are never copied
        from weightsurgery.match.frameworks import framework_layouts

        relaid = framework_layouts({k: decided.get(k) or deferred.get(k) or PlanEntry(
            k, Action.INIT, evidence=claims.reasons.get(k, "no candidate in the source")) for k in target.tensors}, metadata)
        every_source_read = every_source_read and not any(e.action is Action.INIT for e in relaid.values())
        decided.update(relaid)
    if claims.mismatches:
        from weightsurgery.report import IncorrectShape

        mismatches = claims.mismatches
        raise ShapeMismatchError(
            "shapes differ for matched keys (on_mismatch='error'); pass on_mismatch='init' to initialize them "
            "or on_mismatch='adapt' to reshape where an adapter applies:\n  "
            + "\n  ".join(e.evidence for e in mismatches),
            problems=[e.evidence for e in mismatches],
            incorrect_shapes=[
                IncorrectShape(e.target, target.tensors[e.target].shape, e.source_shape or ()) for e in mismatches
            ],
        )

    if len(decided) < len(target.tensors):  # every decided key is a target key
        reasons = claims.reasons
        for key in [k for k in target.tensors if k not in decided]:
            decided[key] = deferred.get(key) or PlanEntry(
                key, Action.INIT, evidence=reasons.get(key, "no candidate in the source")
            )
    entries = dict(zip(target.tensors, map(decided.__getitem__, target.tensors)))
    for alias, canonical in target.aliases.items():
        entries[alias] = PlanEntry(alias, Action.TIED, alias_of=canonical, evidence=f"tied to {canonical}")
    return Plan(entries, () if every_source_read else plan_unused(entries, source, metadata), source_name)


class _Claims:
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
            if e.strategy in _NAMING and e.source and not (key in decided and decided[key].action in _READS)
        }
        if not counterpart:
            return
        spec = self.target.tensors
        moved: dict[tuple[str | None, str, str], str] = {}  # (strategy, target module, source module) -> the name
        for key, e in decided.items():
            if e.action in _READS:
                named = next((counterpart[s] for s in (e.sources or (e.source,)) if s in counterpart and counterpart[s] != key), None)
                if named is not None:
                    moved[e.strategy, spec[key].module, (e.source or "").rpartition(".")[0]] = named
        if not moved:
            return
        for key, e in list(decided.items()):  # the module pair goes with its tensor: its alignment rested on it
            named = moved.get((e.strategy, spec[key].module, (e.source or "").rpartition(".")[0]))
            if named is None or e.action not in _READS:
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
        if entry.source and entry.action in _READS:
            self._matched[m.target] = entry.source
            self.filled += 1
        else:
            self.every_source_read = False
        self.open_t.discard(m.target)
        if m.sources:
            self.open_s.difference_update(m.sources)
        else:
            self.open_s.discard(m.source)


def plan_unused(
    entries: Mapping[str, PlanEntry], source: Iterable[str], source_metadata: Mapping[str, Any] | None = None
) -> tuple[str, ...]:
    """The source keys no entry reads, in source order; a key sharing its tensor with a read one was used.

    Args:
        entries: the plan's entries.
        source: every source key (a ``Checkpoint``'s keys).
        source_metadata: the checkpoint's metadata; its ``"tied"`` groups name shared tensors.
    """
    values = entries.values()
    reading = list(itertools.compress(values, map(_READS.__contains__, map(_ACTION, values))))
    read = set(map(_SOURCE, reading))  # a multi-source entry's source is its first
    read.update(s for e in filter(_SOURCES, reading) for s in e.sources)
    groups = (source_metadata or {}).get("tied", ())
    if not groups and isinstance(source, Mapping) and len(read) == len(source) and all(map(source.__contains__, read)):
        return ()  # every source key is read
    return unused_sources(read, source, groups)


def _excluded(target: TargetSpec, patterns: Sequence[str]) -> dict[str, str]:
    """Target key -> the first exclude pattern that selects it."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        return {}
    compiled = []
    for p in patterns:
        try:
            compiled.append((p, re.compile(p[3:]) if p.startswith("re:") else None))
        except re.error as exc:
            raise PlanError(f"exclude pattern {p!r} is not a valid regex ({exc})") from exc
    out: dict[str, str] = {}
    for key in target.tensors:
        for p, rx in compiled:
            if rx.search(key) if rx else fnmatch.fnmatchcase(key, p):
                out[key] = p
                break
    return out
