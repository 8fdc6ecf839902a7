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
from weightsurgery.match.base import MatchContext, Strategy
from weightsurgery.match.claims import READS, Claims
from weightsurgery.match.decide import Decider
from weightsurgery.match.layout import MismatchPolicy, check_layout
from weightsurgery.match.names import compile_rename, explicit_strategy, match_exact, rename_strategy
from weightsurgery.match.options import PlanOptions, check_key_forms
from weightsurgery.match.numbering import NAME_STRATEGIES, refuse_shifted_numbering
from weightsurgery.match.plan import Action, Plan, PlanEntry
from weightsurgery.match.prefix import match_prefix
from weightsurgery.match.related import veto_unrelated
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta
from weightsurgery.sources.shared import unused_sources

__all__ = ["STRATEGIES", "MismatchPolicy", "PlanOptions", "make_plan", "plan_unused"]

logger = logging.getLogger(__name__)

_ACTION = operator.attrgetter("action")
_SOURCE, _SOURCES = operator.attrgetter("source"), operator.attrgetter("sources")


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
    claims = Claims(source, target, options, Decider(source, target, options, metadata))
    excluded = _excluded(target, options.exclude)
    for key, pattern in excluded.items():
        claims.decided[key] = PlanEntry(key, Action.INIT, evidence=f"excluded by rule {pattern!r}")
    claims.decided.update(claims.decide.ruled(t for t in ctx.open_targets if t not in claims.decided))
    if claims.decided:
        ctx.open_targets = [t for t in ctx.open_targets if t not in claims.decided]
        claims.open_t.difference_update(claims.decided)
        claims.reshaped += claims.decided  # an adapter rule's source may have another shape
    claims.filled = sum(1 for e in claims.decided.values() if e.action in READS)
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
    filled = claims.filled + sum((e.action in READS) - (k in decided and decided[k].action in READS) for k, e in relaid.items())
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
    reading = list(itertools.compress(values, map(READS.__contains__, map(_ACTION, values))))
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
