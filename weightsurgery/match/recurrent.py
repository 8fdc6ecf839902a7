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
  (``cells.1.weight_ih``); a cell has one direction and no projection.

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
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from weightsurgery.match.base import Abstain, Match, MatchContext, StrategyResult
from weightsurgery.match.target import TargetSpec
from weightsurgery.match.tokens import split_tokens

__all__ = ["GATES", "gates_of", "match_recurrent"]

logger = logging.getLogger(__name__)

STRATEGY = "recurrent"

#: Recurrent module classes -> how many gates their input/hidden weights stack.
GATES: Mapping[type, int] = {
    nn.LSTM: 4,
    nn.LSTMCell: 4,
    nn.GRU: 3,
    nn.GRUCell: 3,
    nn.RNN: 1,
    nn.RNNCell: 1,
}
_KIND = {4: "LSTM", 3: "GRU", 1: "RNN"}
_LAYERED = re.compile(r"^(weight|bias)_(ih|hh|hr)_l(\d+)(_reverse)?$")
_CELL = re.compile(r"^(weight|bias)_(ih|hh)$")

_FORWARD = frozenset({"forward", "forwards", "fwd", "fw"})
_BACKWARD = {"backward": "forward", "backwards": "forwards", "bwd": "fwd", "bw": "fw"}

Unit = tuple[int, bool]  # (layer, reverse)


def gates_of(module_type: type) -> int | None:
    """How many gates a recurrent module type stacks in its weights, or ``None``.

    Example:
        >>> from torch import nn
        >>> gates_of(nn.LSTM), gates_of(nn.GRUCell), gates_of(nn.Linear)
        (4, 3, None)
    """
    for cls in type.mro(module_type):
        if cls in GATES:
            return GATES[cls]
    return None


@dataclass(frozen=True)
class _Stack:
    """A stack of recurrent layers on one side: unit -> role -> key, plus the shapes."""

    path: str  # the module (multi) or the template with '*' for the layer index
    layout: str  # multi | layers | cells
    units: Mapping[Unit, Mapping[str, str]]
    shapes: Mapping[str, tuple[int, ...]]
    gates: int | None  # from the module type (target) or the shapes (source)

    def summary(self) -> dict[str, object]:
        first = self.units[(0, False)]
        hh, hr = self.shapes[first["weight_hh"]], first.get("weight_hr")
        hidden = self.shapes[hr][1] if hr else hh[1]
        return {
            "kind": _KIND.get(self.gates or 0, "unknown"),
            "layers": 1 + max(k for k, _ in self.units),
            "directions": 2 if any(r for _, r in self.units) else 1,
            "hidden size": hidden,
            "projection": self.shapes[hr][0] if hr else 0,
            "input size": self.shapes[first["weight_ih"]][1],
            "bias": "bias_ih" in first,
        }

    def signature(self) -> tuple[object, ...]:
        per_unit = tuple(
            (unit, tuple(sorted((role, self.shapes[key]) for role, key in roles.items())))
            for unit, roles in sorted(self.units.items())
        )
        return self.gates, per_unit

    def describe(self) -> str:
        s = self.summary()
        dirs = ", bidirectional" if s["directions"] == 2 else ""
        return f"{self.path!r} ({self.layout}, {s['kind']}, {s['layers']} layers{dirs}, hidden {s['hidden size']})"

    @property
    def anchor(self) -> str:
        """The module that holds the stack: the multi module's parent, or the list's parent."""
        head = self.path.split(".*", 1)[0] if self.layout != "multi" else self.path
        return head.rpartition(".")[0]

    def keys(self) -> list[str]:
        return [k for roles in self.units.values() for k in roles.values()]


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
    targets = _target_stacks(ctx.open_targets, ctx.target)
    if not targets:
        return StrategyResult()
    sources = _source_stacks(ctx.open_sources, ctx.source)
    if not sources:
        return StrategyResult()
    pairs, abstentions = _pair(targets, sources)
    matches: list[Match] = []
    for t, s in pairs:
        s_kind = _KIND.get(t.gates or 0, "?")
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


def _pair(targets: list[_Stack], sources: list[_Stack]) -> tuple[list[tuple[_Stack, _Stack]], list[Abstain]]:
    sigs_t = [t.signature() for t in targets]
    sigs_s = [s.signature() for s in sources]
    pairs: list[tuple[_Stack, _Stack]] = []
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
            abstentions += _abstain(t, f"ambiguous: several recurrent stacks fit {t.describe()}: {names}", fits, sources)
            continue
        j = fits[0]
        rivals = [u for u, sig in enumerate(sigs_t) if u != i and sig == sigs_s[j]]
        if rivals and [u for u in (i, *rivals) if _aligned(sources[j].anchor, targets[u].anchor)] != [i]:
            others = ", ".join(targets[u].describe() for u in (i, *rivals))
            abstentions += _abstain(t, f"ambiguous: {sources[j].describe()} fits several target stacks: {others}", [j], sources)
            continue
        if sources[j].layout != t.layout:  # same layout: names differ only by path; suffix decides
            pairs.append((t, sources[j]))
    return pairs, abstentions


def _disagree(t: _Stack, sources: Sequence[_Stack], *, final: bool) -> list[Abstain]:
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
    t: _Stack, reason: str, which: Iterable[int], sources: Sequence[_Stack], *, final: bool = False
) -> list[Abstain]:
    candidates = tuple(k for j in which for k in sources[j].keys())
    return [Abstain(k, reason, candidates, STRATEGY, final) for k in t.keys()]


def _aligned(a: str, b: str) -> bool:
    """Parent paths equal, or equal after a wrapper prefix on one side (``module.encoder``, ``encoder``)."""
    return a == b or a.endswith("." + b) or b.endswith("." + a)


# --- parsing both sides into stacks ----------------------------------------------------------------


def _target_stacks(keys: Iterable[str], spec: TargetSpec) -> list[_Stack]:
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    gates: dict[str, int] = {}
    for key in keys:
        if "_ih" not in key and "_hh" not in key and "_hr" not in key:
            continue
        t = spec.tensors[key]
        g = gates_of(t.module_type)
        if g is not None:
            found[t.module].append((t.name, key))
            gates[t.module] = g
    shapes = {k: spec.tensors[k].shape for entries in found.values() for _, k in entries}
    return _stacks(found, shapes, gates.get)


def _source_stacks(keys: Iterable[str], metas: Mapping[str, object]) -> list[_Stack]:
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in keys:
        if "_ih" not in key and "_hh" not in key and "_hr" not in key:
            continue
        module, _, leaf = key.rpartition(".")
        if _LAYERED.match(leaf) or _CELL.match(leaf):
            found[module].append((leaf, key))
    shapes = {k: tuple(metas[k].shape) for entries in found.values() for _, k in entries}  # type: ignore[attr-defined]
    return _stacks(found, shapes, None)


def _stacks(
    found: Mapping[str, list[tuple[str, str]]],
    shapes: Mapping[str, tuple[int, ...]],
    gates: Callable[[str], int | None] | None,
) -> list[_Stack]:
    """Group recurrent modules into stacks; ``gates`` is the target's lookup, ``None`` on the source."""
    singles: dict[tuple[str, str], dict[int, tuple[str, dict[Unit, dict[str, str]]]]] = defaultdict(dict)
    stacks: list[_Stack | None] = []
    for module, entries in found.items():
        units = _units(entries)
        if units is None:
            continue
        layout, layers = units
        n = 1 + max(k for k, _ in layers)
        index = _last_index(module)
        if (layout == "cells" or n == 1) and index is not None:
            template = ".".join("*" if i == index[0] else c for i, c in enumerate(module.split(".")))
            singles[(template, layout)][index[1]] = (module, layers)
        elif layout == "multi":
            stacks.append(_make(module, "multi", layers, shapes, gates, [module]))
    for (template, layout), members in singles.items():
        if sorted(members) != list(range(len(members))):
            continue  # not a list from 0: not a stack this strategy can be sure of
        merged: dict[Unit, dict[str, str]] = {}
        for k, (_, layers) in sorted(members.items()):
            for (_, reverse), roles in layers.items():
                merged[(k, reverse)] = roles
        kind = "cells" if layout == "cells" else "layers"
        stacks.append(_make(template, kind, merged, shapes, gates, [m for m, _ in members.values()]))
    return _merge_directions([s for s in stacks if s is not None and _complete(s)])


def _merge_directions(stacks: list[_Stack]) -> list[_Stack]:
    """Two one-direction stacks named as a pair (``fwd_cells``, ``bwd_cells``) are one bidirectional stack."""
    groups: dict[tuple[object, ...], tuple[list[_Stack], list[_Stack]]] = defaultdict(lambda: ([], []))
    for s in stacks:
        found = _direction(s) if s.layout != "multi" and (0, True) not in s.units else None
        if found is not None:
            name, backward = found
            groups[(name, s.layout, s.gates)][backward].append(s)
    merged: dict[int, _Stack] = {}
    for forwards, backwards in groups.values():
        if len(forwards) != 1 or len(backwards) != 1 or len(forwards[0].units) != len(backwards[0].units):
            continue  # no pair, or several stacks of one direction: nothing tells which two belong together
        fwd, bwd = forwards[0], backwards[0]
        units = {**fwd.units, **{(k, True): roles for (k, _), roles in bwd.units.items()}}
        both = _Stack(f"{fwd.path}+{bwd.path}", fwd.layout, units, {**fwd.shapes, **bwd.shapes}, fwd.gates)
        merged[id(fwd)], merged[id(bwd)] = both, both
    out: dict[int, _Stack] = {}
    for s in stacks:
        stack = merged.get(id(s), s)
        out.setdefault(id(stack), stack)
    return list(out.values())


def _direction(s: _Stack) -> tuple[tuple[str, ...], bool] | None:
    """The stack's path tokens with its one direction word blanked, and whether that word is backward."""
    tokens = split_tokens(s.path)
    hits = [i for i, t in enumerate(tokens) if t in _FORWARD or t in _BACKWARD]
    if len(hits) != 1:
        return None
    i = hits[0]
    word = tokens[i]
    pair = word if word in _FORWARD else _BACKWARD[word]
    return (*tokens[:i], f"<{pair}>", *tokens[i + 1 :]), word in _BACKWARD


def _make(
    path: str,
    layout: str,
    units: dict[Unit, dict[str, str]],
    shapes: Mapping[str, tuple[int, ...]],
    gates: Callable[[str], int | None] | None,
    modules: list[str],
) -> _Stack | None:
    if gates is not None:
        kinds = {gates(m) for m in modules}
        if len(kinds) != 1:
            return None  # an LSTM beside a GRU in one list: not one stack
        g = kinds.pop()
    else:
        g = _inferred_gates(units, shapes)
    return _Stack(path, layout, units, {k: shapes[k] for r in units.values() for k in r.values()}, g)


def _units(entries: list[tuple[str, str]]) -> tuple[str, dict[Unit, dict[str, str]]] | None:
    """A module's keys by (layer, reverse) and role, and its layout; ``None`` if they mix layouts."""
    units: dict[Unit, dict[str, str]] = defaultdict(dict)
    layouts = set()
    for leaf, key in entries:
        m = _LAYERED.match(leaf)
        if m:
            units[(int(m.group(3)), bool(m.group(4)))][f"{m.group(1)}_{m.group(2)}"] = key
            layouts.add("multi")
            continue
        c = _CELL.match(leaf)
        if c:
            units[(0, False)][leaf] = key
            layouts.add("cells")
    if len(layouts) != 1:
        return None
    return layouts.pop(), dict(units)


def _last_index(module: str) -> tuple[int, int] | None:
    """(component position, index) of the last numeric component of a module path."""
    parts = module.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return i, int(parts[i])
    return None


def _complete(s: _Stack) -> bool:
    """Every layer 0..n-1 in every direction, each with both weights and one set of optional tensors."""
    if s.gates is None:
        return False
    layers = 1 + max(k for k, _ in s.units)
    directions = {r for _, r in s.units}
    if set(s.units) != {(k, r) for k in range(layers) for r in directions} or False not in directions:
        return False
    role_sets = {frozenset(roles) for roles in s.units.values()}
    if len(role_sets) != 1:
        return False
    roles = next(iter(role_sets))
    return {"weight_ih", "weight_hh"} <= roles and ("bias_ih" in roles) == ("bias_hh" in roles)


def _inferred_gates(units: Mapping[Unit, Mapping[str, str]], shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """Gates from the source's shapes: ``weight_hh`` is ``(gates * hidden, hidden or proj)``."""
    found = set()
    for roles in units.values():
        if "weight_hh" not in roles or "weight_ih" not in roles:
            return None
        hh, ih = shapes[roles["weight_hh"]], shapes[roles["weight_ih"]]
        hidden = shapes[roles["weight_hr"]][1] if "weight_hr" in roles else (hh[1] if len(hh) == 2 else 0)
        if len(hh) != 2 or len(ih) != 2 or not hidden or hh[0] % hidden or ih[0] != hh[0]:
            return None
        found.add(hh[0] // hidden)
    g = found.pop() if len(found) == 1 else None
    return g if g in _KIND else None
