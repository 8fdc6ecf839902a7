"""Make a :class:`Plan` from metadata: run the strategies in order, then decide each key.

Strategies run in this order, each on the keys still open:

1. ``explicit``  the user's exact ``key_map={target_key: source_key}``
2. ``rename``    the user's regex rules ``rename={pattern: replacement}``, then an exact match
3. ``exact``     same name
4. ``prefix``    a wrapper prefix stripped or added, per subtree
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
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from weightsurgery.errors import PlanError, ShapeMismatchError
from weightsurgery.match.base import Match, MatchContext, Strategy
from weightsurgery.match.layout import MismatchPolicy, flatten_order, transposed_layout
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


#: Built-in strategies by name, in the order they run. Optional ones are imported lazily.
STRATEGIES: tuple[str, ...] = (
    "explicit",
    "rename",
    "exact",
    "prefix",
    "wrappers",
    "fused",
    "recurrent",
    "suffix",
    "structure",
)

_OPTIONAL: dict[str, tuple[str, str]] = {
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
    decided: dict[str, PlanEntry] = {}
    reasons: dict[str, str] = {}
    deferred: dict[str, PlanEntry] = {}  # name matches whose shapes differ, kept only if nothing better comes
    mismatches: list[PlanEntry] = []
    decide = _Decider(source, target, options, metadata)
    excluded = _excluded(target, options.exclude)
    for key, pattern in excluded.items():
        decided[key] = PlanEntry(key, Action.INIT, evidence=f"excluded by rule {pattern!r}")
    decided.update(decide.ruled(t for t in ctx.open_targets if t not in decided))
    if decided:
        ctx.open_targets = [t for t in ctx.open_targets if t not in decided]

    # One set of each side's open keys for the whole run, updated as matches land:
    # each key costs O(1) per strategy that still sees it, never a scan of all keys.
    open_t, open_s = set(ctx.open_targets), set(ctx.open_sources)
    numbering: dict[str, object] = {}  # both sides' numbered containers, indexed once when first needed
    matched = {k: e.source for k, e in decided.items() if e.source and e.action in (Action.LOAD, Action.ADAPT)}
    ctx.matched = matched  # what earlier strategies loaded: evidence of corresponding containers
    for name, strategy in _strategy_list(options):
        if not open_t:
            break  # everything is explained: later strategies see nothing and cost nothing
        result = strategy(ctx)
        if name in NAME_STRATEGIES:
            result = refuse_shifted_numbering(result, ctx, numbering)
        logger.debug("%s: %d matches, %d abstentions", name, len(result.matches), len(result.abstentions))
        closed = len(open_t), len(open_s)
        for m in result.matches:
            if m.target not in open_t:
                continue  # a strategy may not claim a decided key
            if m.sources:
                if any(s not in source for s in m.sources):
                    continue  # ... or invent a source
            elif m.source not in source:
                continue
            if m.adapter is None and m.source not in open_s and not m.copy:
                continue
            entry = decide(m)
            if entry.action is Action.INIT and entry.source_shape is not None:
                if options.on_mismatch == "error":
                    mismatches.append(entry)
                elif sorted(entry.source_shape) != sorted(target.tensors[m.target].shape):
                    # a same-named tensor of another size pairs nothing: both stay open for later strategies
                    # (an old layout reusing names for other layers), and the key falls back to this entry.
                    # A permuted shape (GPT-2's transposed Conv1D) is the same tensor in another layout: decided.
                    deferred.setdefault(m.target, entry)
                    reasons.setdefault(m.target, entry.evidence)
                    continue
            decided[m.target] = entry
            if entry.source and entry.action in (Action.LOAD, Action.ADAPT):
                matched[m.target] = entry.source
            open_t.discard(m.target)
            if m.sources:
                open_s.difference_update(m.sources)
            else:
                open_s.discard(m.source)
        for a in result.abstentions:
            if a.target in open_t and not (a.fallback and a.target in reasons):
                reasons[a.target] = a.reason
                if a.final:  # a veto: no later strategy may fill this key
                    decided[a.target] = PlanEntry(a.target, Action.INIT, strategy=a.strategy, evidence=a.reason)
                    open_t.discard(a.target)
        if (len(open_t), len(open_s)) != closed:
            ctx.open_targets = [t for t in ctx.open_targets if t in open_t]
            ctx.open_sources = [s for s in ctx.open_sources if s in open_s]

    named = {**{k: e for k, e in deferred.items() if k not in decided}, **decided}
    decided.update(transposed_layout(named, target, options.on_mismatch))
    decided.update(flatten_order({**named, **decided}, target, {tuple(m.shape) for m in source.values()}))
    filled = sum(1 for e in decided.values() if e.action is Action.LOAD or e.action is Action.ADAPT)
    if filled + len(excluded) < len(target.tensors):  # a plan that fills every key is related by any measure
        named = {**{k: e for k, e in deferred.items() if k not in decided}, **decided}
        decided.update(veto_unrelated(
            named, source, target, exclude=excluded, opted_in=options.strategies is not None,
            evidence={**named, **deferred},  # a name refused for its size contradicts, whoever filled the key later
        ))
    if mismatches:
        from weightsurgery.report import IncorrectShape

        raise ShapeMismatchError(
            "shapes differ for matched keys (on_mismatch='error'); pass on_mismatch='init' to initialize them "
            "or on_mismatch='adapt' to reshape where an adapter applies:\n  "
            + "\n  ".join(e.evidence for e in mismatches),
            problems=[e.evidence for e in mismatches],
            incorrect_shapes=[
                IncorrectShape(e.target, target.tensors[e.target].shape, e.source_shape or ()) for e in mismatches
            ],
        )

    entries: dict[str, PlanEntry] = {}
    for key in target.tensors:
        entry = decided.get(key) or deferred.get(key)
        entries[key] = entry if entry is not None else PlanEntry(
            key, Action.INIT, evidence=reasons.get(key, "no candidate in the source")
        )
    for alias, canonical in target.aliases.items():
        entries[alias] = PlanEntry(alias, Action.TIED, alias_of=canonical, evidence=f"tied to {canonical}")
    return Plan(entries, plan_unused(entries, source, metadata), source_name)


def plan_unused(
    entries: Mapping[str, PlanEntry], source: Iterable[str], source_metadata: Mapping[str, Any] | None = None
) -> tuple[str, ...]:
    """The source keys no entry reads, in source order; a key sharing its tensor with a read one was used.

    Args:
        entries: the plan's entries.
        source: every source key (a ``Checkpoint``'s keys).
        source_metadata: the checkpoint's metadata; its ``"tied"`` groups name shared tensors.
    """
    read = (s for e in entries.values() if e.action in (Action.LOAD, Action.ADAPT) for s in e.source_keys)
    return unused_sources(read, source, (source_metadata or {}).get("tied", ()))


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


class _Decider:
    """Turns a strategy's match into a plan entry, applying the shape-mismatch policy."""

    def __init__(
        self,
        source: Mapping[str, TensorMeta],
        target: TargetSpec,
        options: PlanOptions,
        metadata: Mapping[str, Any],
    ) -> None:
        self.source, self.target, self.options, self.metadata = source, target, options, metadata
        self._adapt_ctx: Any = None
        self._rules: list[Any] | None = None

    def __call__(self, m: Match) -> PlanEntry:
        tshape = self.target.tensors[m.target].shape
        sshape = self.source[m.source].shape
        if m.adapter is None and sshape == tshape and not self.options.adapt and self.options.classes is None:
            # the common case, a plain same-shape copy: no rule or proposal can change it
            return PlanEntry(m.target, Action.LOAD, m.source, tuple(m.sources), m.strategy, m.evidence,
                             source_shape=sshape)
        base = dict(target=m.target, source=m.source, sources=tuple(m.sources), strategy=m.strategy)
        if m.adapter is not None:
            return PlanEntry(
                **base,
                action=Action.ADAPT,
                evidence=m.evidence,
                adapter=m.adapter,
                adapter_args=dict(m.adapter_args),
                source_shape=sshape,
            )
        rule = self._explicit_rule(m)
        if rule is not None:
            return rule
        if self.options.classes is not None and (sshape == tshape or self.options.on_mismatch != "adapt"):
            # classes= asks for the head adapter, also for a same-size reorder and without on_mismatch="adapt".
            proposal = self._propose(m)
            if isinstance(proposal, tuple) and proposal[0] == "head":
                return PlanEntry(
                    **base,
                    action=Action.ADAPT,
                    evidence=f"{m.evidence}; classes={list(self.options.classes)}",
                    adapter="head",
                    adapter_args=dict(proposal[1]),
                    source_shape=sshape,
                )
        if sshape == tshape:
            return PlanEntry(**base, action=Action.LOAD, evidence=m.evidence, source_shape=sshape)
        why = f"shape mismatch: {m.target} {_fmt(tshape)} vs source {m.source} {_fmt(sshape)}"
        if self.options.on_mismatch == "adapt":
            proposal = self._propose(m)
            if isinstance(proposal, tuple):
                name, args = proposal
                return PlanEntry(
                    **base,
                    action=Action.ADAPT,
                    evidence=f"{m.evidence}; {why}".strip("; "),
                    adapter=name,
                    adapter_args=dict(args),
                    source_shape=sshape,
                )
            why = f"{why}; no adapter applies: {proposal}"
        return PlanEntry(m.target, Action.INIT, source=m.source, strategy=m.strategy, evidence=why, source_shape=sshape)

    # --- adapters (weightsurgery.adapt), imported only when used ---------------------------------

    def _context(self) -> Any:
        if self._adapt_ctx is None:
            from weightsurgery.adapt import AdaptContext

            self._adapt_ctx = AdaptContext(
                target=self.target,
                source=self.source,
                source_metadata=self.metadata,
                classes=self.options.classes,
                source_labels=self.options.source_labels,
            )
        return self._adapt_ctx

    def _propose(self, m: Match) -> tuple[str, dict[str, Any]] | str:
        from weightsurgery.adapt import propose_adapter

        return propose_adapter(m.target, m.source, self._context())

    def ruled(self, targets: Iterable[str]) -> dict[str, PlanEntry]:
        """Entries for targets that an explicit adapter rule fills from sources it names itself."""
        sourced = [r for r in self.options.adapt if getattr(r, "sources", ())]
        if not sourced:
            return {}
        from weightsurgery.adapt import match_rule

        out: dict[str, PlanEntry] = {}
        for key in targets:
            hit = match_rule(sourced, key, None, self._context())
            if hit is None or not hit[2]:
                continue
            name, args, sources = hit
            out[key] = PlanEntry(
                target=key,
                action=Action.ADAPT,
                source=sources[0],
                sources=tuple(sources) if len(sources) > 1 else (),
                strategy="rule",
                evidence=f"adapt rule {name} on {', '.join(sources)}",
                adapter=name,
                adapter_args=dict(args),
                source_shape=self.source[sources[0]].shape,
            )
        return out

    def _explicit_rule(self, m: Match) -> PlanEntry | None:
        if not self.options.adapt:
            return None
        from weightsurgery.adapt import match_rule

        hit = match_rule(self.options.adapt, m.target, m.source, self._context())
        if hit is None:
            return None
        name, args, sources = hit
        return PlanEntry(
            target=m.target,
            action=Action.ADAPT,
            source=sources[0],
            sources=tuple(sources) if len(sources) > 1 else (),
            strategy=m.strategy,
            evidence=f"{m.evidence}; adapt rule {name}".strip("; "),
            adapter=name,
            adapter_args=dict(args),
            source_shape=self.source[sources[0]].shape,
        )


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"
