"""Matching strategy ``recurrent``: one multi-layer RNN to and from one module per layer or per cell.

``torch.nn.LSTM``, ``GRU`` and ``RNN`` keep every layer in one module, named by
layer index and direction: ``weight_ih_l{k}``, ``weight_hh_l{k}``,
``bias_ih_l{k}``, ``bias_hh_l{k}``, ``weight_hr_l{k}`` (``proj_size``), each
with a ``_reverse`` twin when bidirectional. Models that step layers
themselves hold the same tensors in other names. This strategy knows three
*layouts* of a *stack* of recurrent layers:

* ``multi``: one module with layers ``l0 .. l{n-1}`` (``lstm.weight_ih_l1``);
* ``layers``: one single-layer module per layer, the layer index being the
  last numeric component of its path (``layers.1.weight_ih_l0``);
* ``cells``: one ``LSTMCell`` / ``GRUCell`` / ``RNNCell`` per layer
  (``cells.1.weight_ih``), or one cell alone (``lstm_cell.weight_ih``, a
  stack of one layer); a cell has one direction and no projection.

Two one-direction ``layers`` or ``cells`` stacks whose paths differ only by a
direction word (``fwd_cells`` / ``bwd_cells``, ``forward`` / ``backward``,
``fw`` / ``bw``) are one bidirectional stack: the backward one holds the
``_reverse`` tensors.

Layer ``k`` in direction ``d`` of one layout is layer ``k`` in direction ``d``
of the other, and a tensor keeps its role (``weight_ih`` ...). A source stack
and a target stack of *different* layouts pair when:

1. the target's module types say which recurrent kind it is (``nn.LSTM`` and
   ``nn.LSTMCell`` stack 4 gates, ``nn.GRU`` / ``nn.GRUCell`` 3, ``nn.RNN`` /
   ``nn.RNNCell`` 1), and the source's gate-stacked shapes agree: its
   ``weight_hh`` is ``(gates * hidden, hidden)`` (``(gates * hidden, proj)``
   with ``weight_hr`` of ``(proj, hidden)``);
2. layer count, directions, hidden size, projection, input size, bias and
   every single tensor shape are equal (the *signature*);
3. the pair is one-to-one: no other open source stack has the target's
   signature and no other target stack the source's; where several do, the
   stacks whose parent modules line up (equal, or equal after a wrapper
   prefix) decide, else the strategy abstains naming them.

A stack whose signature fits nothing abstains with the disagreement
(``"2 layers vs 3"``); when it is the only recurrent stack on each side, the
abstention is final, so that no name-based strategy loads part of it. Two
stacks of the *same* layout are left to ``suffix`` and ``structure``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from weightsurgery.match.base import Abstain, Match, MatchContext, StrategyResult
from weightsurgery.match.recurrent_stacks import GATES, KIND, Stack, gates_of, source_stacks, target_stacks

__all__ = ["GATES", "gates_of", "match_recurrent"]

logger = logging.getLogger(__name__)

STRATEGY = "recurrent"

def match_recurrent(ctx: MatchContext) -> StrategyResult:
    """Pair a multi-layer ``LSTM``/``GRU``/``RNN`` with one module or cell per layer, both ways.

    Args:
        ctx: the open keys and both sides' shapes; the target's module types.

    Returns:
        One plain-copy match per tensor of each paired stack, and abstentions
        naming the disagreement for stacks that fit nothing or several.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from weightsurgery.match.target import TargetSpec
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> target = TargetSpec.from_module(nn.ModuleDict({"layers": nn.ModuleList([nn.GRU(3, 4), nn.GRU(4, 4)])}))
        >>> src = {k: TensorMeta(tuple(v.shape), torch.float32) for k, v in nn.GRU(3, 4, 2).state_dict().items()}
        >>> ctx = MatchContext({"rnn." + k: m for k, m in src.items()}, target, list(target.tensors),
        ...                    ["rnn." + k for k in src])
        >>> [(m.target, m.source) for m in match_recurrent(ctx).matches][4:6]
        [('layers.1.weight_ih_l0', 'rnn.weight_ih_l1'), ('layers.1.weight_hh_l0', 'rnn.weight_hh_l1')]
    """
    targets = target_stacks(ctx.open_targets, ctx.target)
    if not targets:
        return StrategyResult()
    sources = source_stacks(ctx.open_sources, ctx.source)
    if not sources:
        return StrategyResult()
    pairs, abstentions = _pair(targets, sources)
    matches: list[Match] = []
    for t, s in pairs:
        s_kind = KIND.get(t.gates or 0, "?")
        for unit, roles in t.units.items():
            layer, reverse = unit
            for role, t_key in roles.items():
                where = f"layer {layer}{' reverse' if reverse else ''}"
                evidence = (
                    f"{where} {role} of {s.layout} {s.path!r} -> {t.layout} {t.path!r}; "
                    f"{s_kind} gates ({t.gates}H), every layer shape equal, the only stack that fits"
                )
                matches.append(Match(t_key, s.units[unit][role], STRATEGY, evidence))
    logger.debug("recurrent: %d stacks paired, %d keys abstained", len(pairs), len(abstentions))
    rank = {k: i for i, k in enumerate(ctx.open_targets)}
    matches.sort(key=lambda m: rank[m.target])
    return StrategyResult(matches=matches, abstentions=abstentions)


def _pair(targets: list[Stack], sources: list[Stack]) -> tuple[list[tuple[Stack, Stack]], list[Abstain]]:
    sigs_t = [t.signature() for t in targets]
    sigs_s = [s.signature() for s in sources]
    pairs: list[tuple[Stack, Stack]] = []
    abstentions: list[Abstain] = []
    sole = len(targets) == 1 and len(sources) == 1
    for i, t in enumerate(targets):
        fits = [j for j, sig in enumerate(sigs_s) if sig == sigs_t[i]]
        if len(fits) > 1:
            fits = [j for j in fits if _aligned(sources[j].anchor, t.anchor)] or fits
        if not fits:
            if any(s.layout != t.layout for s in sources):
                abstentions += _disagree(t, sources, final=sole and sources[0].layout != t.layout)
            continue
        if len(fits) > 1:
            names = ", ".join(sources[j].describe() for j in fits)
            why = f"ambiguous: several recurrent stacks fit {t.describe()}: {names}"
            abstentions += _abstain(t, why, fits, sources)
            continue
        j = fits[0]
        rivals = [u for u, sig in enumerate(sigs_t) if u != i and sig == sigs_s[j]]
        if rivals and [u for u in (i, *rivals) if _aligned(sources[j].anchor, targets[u].anchor)] != [i]:
            others = ", ".join(targets[u].describe() for u in (i, *rivals))
            why = f"ambiguous: {sources[j].describe()} fits several target stacks: {others}"
            abstentions += _abstain(t, why, [j], sources)
            continue
        if sources[j].layout != t.layout:  # same layout: names differ only by path; suffix decides
            pairs.append((t, sources[j]))
    return pairs, abstentions


def _disagree(t: Stack, sources: Sequence[Stack], *, final: bool) -> list[Abstain]:
    mine = t.summary()
    parts, heads = [], []
    for s in sources:
        theirs = s.summary()
        diffs = ", ".join(f"{k} {theirs[k]} vs {mine[k]}" for k in mine if theirs[k] != mine[k]) or "a layer's shape"
        heads.append(f"{s.path!r} ({diffs})")
        parts.append(f"source {s.describe()}")
    head = heads[0] if len(heads) == 1 else f"any of {len(heads)} stacks"
    reason = f"recurrent stack disagrees with {head}: " + "; ".join(parts) + f" vs target {t.describe()}"
    return _abstain(t, reason, range(len(sources)), sources, final=final)


def _abstain(
    t: Stack, reason: str, which: Iterable[int], sources: Sequence[Stack], *, final: bool = False
) -> list[Abstain]:
    candidates = tuple(k for j in which for k in sources[j].keys())
    return [Abstain(k, reason, candidates, STRATEGY, final) for k in t.keys()]


def _aligned(a: str, b: str) -> bool:
    """Parent paths equal, or equal after a wrapper prefix on one side (``module.encoder``, ``encoder``)."""
    return a == b or a.endswith("." + b) or b.endswith("." + a)
