"""Numbered containers whose numbers name different layers on the two sides.

A name match inside a numbered container (``features.16.bias``) is evidence
only while the container's numbering means the same layers on both sides.
Inserting a BatchNorm after every conv (``vgg11`` -> ``vgg11_bn``) shifts the
numbering: the same name then names another layer, sometimes of the very same
shape (``features.18.weight`` is the 8th conv in one and the 6th in the other).

The check compares, for every index present on both sides of a container pair,
the tensors that module holds directly. One index whose module is of another
kind, told by a shared leaf of another rank (a conv's 4-d ``weight`` against a
BatchNorm's 1-d one), shows the numbering is not shared, and every name match
inside that container is refused, with the index that shows it. A leaf that one
side lacks is no evidence: checkpoints drop keys, and convs drop their bias. The keys stay open for the structural matcher, which
aligns the two sequences by signature instead of by number.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from weightsurgery.match.base import Match, MatchContext, StrategyResult
    >>> from weightsurgery.match.target import TargetSpec
    >>> from weightsurgery.sources.checkpoint import TensorMeta
    >>> src = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3))
    >>> dst = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3))
    >>> metas = {k: TensorMeta(tuple(v.shape), v.dtype) for k, v in src.state_dict().items()}
    >>> target = TargetSpec.from_module(dst)
    >>> ctx = MatchContext(source=metas, target=target, open_targets=list(target.tensors),
    ...                    open_sources=list(metas), source_metadata={})
    >>> claims = StrategyResult([Match("1.bias", "1.bias", "exact")])  # a conv's bias into a BatchNorm's
    >>> kept = refuse_shifted_numbering(claims, ctx)
    >>> list(kept.matches), kept.abstentions[0].reason[:60]
    ([], "exact match 1.bias refused: numbering of '<root>' differs fr")
"""

from __future__ import annotations

import itertools
import operator
from collections import defaultdict
from collections.abc import Iterable, Mapping

from weightsurgery.match.base import Abstain, Match, MatchContext, Matches, MatchRun, StrategyResult

__all__ = ["NAME_STRATEGIES", "refuse_shifted_numbering"]

#: Strategies whose claims rest on the two sides' names (numbers included) meaning the same layer.
NAME_STRATEGIES = frozenset({"exact", "prefix", "wrappers", "suffix"})

#: Leaves that one side may hold and the other not, with no change of layer kind.
_OPTIONAL_LEAVES = frozenset({"num_batches_tracked"})

_MODULE, _FIRST, _LAST = operator.attrgetter("module"), operator.itemgetter(0), operator.itemgetter(2)

Leaves = dict[str, int]  # leaf name -> rank


def _numbered_children(keys: Iterable[str], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, dict[str, Leaves]]:
    """container path -> {index: the leaves (and ranks) that module ``container.index`` holds directly}."""
    out: dict[str, dict[str, Leaves]] = defaultdict(lambda: defaultdict(dict))
    for key in keys:
        module, _, leaf = key.rpartition(".")
        container, _, index = module.rpartition(".")
        if index.isdigit() and leaf not in _OPTIONAL_LEAVES:
            out[container][index][leaf] = len(shapes[key])
    return out


def _containers(target_key: str, source_key: str) -> tuple[str, str, str] | None:
    """``(target container, source container, index)`` when both keys' owners are the same numbered child."""
    t_module, s_module = target_key.rpartition(".")[0], source_key.rpartition(".")[0]
    t_container, _, t_index = t_module.rpartition(".")
    s_container, _, s_index = s_module.rpartition(".")
    if t_index.isdigit() and t_index == s_index:
        return t_container, s_container, t_index
    return None


def _describe(leaves: Leaves) -> str:
    return "{" + ", ".join(f"{leaf} ({rank}-d)" for leaf, rank in sorted(leaves.items())) + "}"


class _Numbering:
    """Both sides' numbered containers, built once per plan, and a verdict per container pair."""

    def __init__(self, ctx: MatchContext) -> None:
        self.target = _numbered_children(ctx.target.tensors, {k: t.shape for k, t in ctx.target.tensors.items()})
        self.source = _numbered_children(ctx.source, {k: m.shape for k, m in ctx.source.items()})
        self._verdicts: dict[tuple[str, str], str | None] = {}

    def contradiction(self, t_container: str, s_container: str) -> str | None:
        """Why the two containers' numbers name different layers, or ``None`` when nothing says so."""
        pair = (t_container, s_container)
        if pair not in self._verdicts:
            self._verdicts[pair] = self._compare(t_container, s_container)
        return self._verdicts[pair]

    def _compare(self, t_container: str, s_container: str) -> str | None:
        t_kids, s_kids = self.target.get(t_container, {}), self.source.get(s_container, {})
        for index in sorted(t_kids.keys() & s_kids.keys(), key=int):
            t_leaves, s_leaves = t_kids[index], s_kids[index]
            # a leaf the other side lacks is no evidence (a key missing from a checkpoint, bias=False);
            # a shared leaf of another rank is: a conv's 4-d weight against a BatchNorm's 1-d one
            if any(rank != s_leaves.get(leaf, rank) for leaf, rank in t_leaves.items()):
                where = f"{t_container}.{index}" if t_container else index
                return (
                    f"numbering of '{t_container or '<root>'}' differs from the source's: {where} holds "
                    f"{_describe(t_leaves)} in the target but {_describe(s_leaves)} in the source, so equal "
                    "numbers name different layers here"
                )
        return None


def refuse_shifted_numbering(result: StrategyResult, ctx: MatchContext, cache: dict[str, object] | None = None) -> StrategyResult:
    """Drop the name matches that sit in a numbered container whose numbering the two sides do not share.

    Only a claim whose target tensor sits directly on a numbered module
    (``features.16.bias``) is checked; a target with no such module costs one
    pass over its module paths, once per plan.

    Args:
        result: a name strategy's claims.
        ctx: the planner's context (both sides' full key sets are read).
        cache: a dict kept across the calls of one plan, so both sides are indexed once.

    Returns:
        The claims that stand (a claim of another shape always stands: the
        planner's shape-mismatch policy decides it), plus a non-final abstention for each refused one,
        naming the index that shows the shift; later strategies may still fill
        those keys by structure.
    """
    cache = {} if cache is None else cache
    owners = cache.get("owners")
    if owners is None:  # the target modules that are numbered children, which hold a tensor
        modules = set(map(_MODULE, ctx.target.tensors.values()))  # in C, no Python step per key
        last = map(_LAST, map(str.rpartition, modules, itertools.repeat(".")))
        owners = cache["owners"] = set(itertools.compress(modules, map(str.isdigit, last)))
    if not owners or not result.matches:
        return result
    tensors = ctx.target.tensors
    kept = Matches()
    refused: list[Abstain] = []
    for part in result.matches.parts if isinstance(result.matches, Matches) else [result.matches]:
        if isinstance(part, MatchRun):
            bad = _refused_in_run(part, ctx, owners, cache, refused)
            if bad:
                kept_pairs = [(t, s) for t, s in zip(part.targets, part.sources) if t not in bad]
                part = MatchRun([t for t, _ in kept_pairs], [s for _, s in kept_pairs], part.strategy, part.evidence)
            kept.add_run(
                part.targets, part.sources, part.strategy, part.evidence,
                target_shapes=part.target_shapes, source_shapes=part.source_shapes,
            )
            continue
        for m in part:
            if tensors[m.target].module not in owners or not _refuse(m, ctx, cache, refused):  # type: ignore[arg-type]
                kept.append(m)
    if not refused:
        return result
    return StrategyResult(kept, [*result.abstentions, *refused])


def _refused_in_run(
    run: MatchRun, ctx: MatchContext, owners: set[str], cache: dict[str, object], refused: list[Abstain]
) -> set[str]:
    """The targets of ``run`` refused for a shifted numbering; their abstentions go to ``refused``.

    A verdict depends only on the pair of modules that hold the two tensors,
    so each distinct pair is judged once. A 200k-key MoE run has a few
    thousand module pairs: the per-key work is C-level passes (``map``,
    ``zip``, a set), with no Python step or :class:`Match` per key unless a
    pair is refused.
    """
    tensors = ctx.target.tensors
    t_modules = list(map(_MODULE, map(tensors.__getitem__, run.targets)))
    suspect = list(map(owners.__contains__, t_modules))
    if not any(suspect):
        return set()
    targets = list(itertools.compress(run.targets, suspect))
    sources = list(itertools.compress(run.sources, suspect))
    dots = itertools.repeat(".")
    # the owners as _containers reads them, from the keys (a parametrized tensor's key runs deeper than its module)
    pairs = list(zip(map(_FIRST, map(str.rpartition, targets, dots)), map(_FIRST, map(str.rpartition, sources, dots))))
    shifted = {pair for pair in set(pairs) if _shifted(pair, cache, ctx)}
    if not shifted:
        return set()
    bad: set[str] = set()
    for t, s, pair in zip(targets, sources, pairs):
        if pair in shifted and _refuse(Match(t, s, run.strategy, run.evidence), ctx, cache, refused):
            bad.add(t)
    return bad


def _shifted(modules: tuple[str, str], cache: dict[str, object], ctx: MatchContext) -> bool:
    """Whether the numbered containers of a ``(target module, source module)`` pair disagree (same index)."""
    (t_container, _, t_index), (s_container, _, s_index) = modules[0].rpartition("."), modules[1].rpartition(".")
    if not t_index.isdigit() or t_index != s_index:
        return False
    numbering = cache.get("numbering")
    if numbering is None:
        numbering = cache["numbering"] = _Numbering(ctx)
    return numbering.contradiction(t_container, s_container) is not None  # type: ignore[attr-defined]


def _refuse(m: Match, ctx: MatchContext, cache: dict[str, object], refused: list[Abstain]) -> bool:
    """Whether ``m`` sits in a container pair whose numbering differs; if so its abstention goes to ``refused``."""
    # only a claim that would load plainly needs the check: one of another shape goes to the
    # planner's shape-mismatch policy, which reports it as such
    if m.sources or m.adapter is not None or ctx.target.tensors[m.target].shape != ctx.source[m.source].shape:
        return False
    where = _containers(m.target, m.source)
    if where is None:
        return False
    numbering = cache.get("numbering")
    if numbering is None:
        numbering = cache["numbering"] = _Numbering(ctx)
    why = numbering.contradiction(where[0], where[1])  # type: ignore[attr-defined]
    if why is None:
        return False
    refused.append(Abstain(m.target, f"{m.strategy} match {m.source} refused: {why}", (m.source,), m.strategy))
    return True
