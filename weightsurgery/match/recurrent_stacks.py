"""Read recurrent layers out of key names: the stacks :mod:`weightsurgery.match.recurrent` pairs.

A :class:`Stack` is a stack of recurrent layers on one side, in one of three
layouts (``multi``, ``layers``, ``cells``; see the strategy's docstring),
indexed by ``(layer, reverse)`` and tensor role (``weight_ih`` ...). The
target's stacks take their gate count from the owning module types, the
source's from their gate-stacked shapes.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from torch import nn

from weightsurgery.match.target import TargetSpec
from weightsurgery.match.tokens import split_tokens
from weightsurgery.sources.checkpoint import TensorMeta

__all__ = ["GATES", "KIND", "Stack", "Unit", "gates_of", "source_stacks", "target_stacks"]

#: Recurrent module classes -> how many gates their input/hidden weights stack.
GATES: Mapping[type, int] = {
    nn.LSTM: 4,
    nn.LSTMCell: 4,
    nn.GRU: 3,
    nn.GRUCell: 3,
    nn.RNN: 1,
    nn.RNNCell: 1,
}
#: Gate count -> the recurrent kind's name.
KIND: Mapping[int, str] = {4: "LSTM", 3: "GRU", 1: "RNN"}
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
class Stack:
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
            "kind": KIND.get(self.gates or 0, "unknown"),
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




def target_stacks(keys: Iterable[str], spec: TargetSpec) -> list[Stack]:
    """The target's stacks among ``keys``: modules whose type is recurrent (:data:`GATES`)."""
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


def source_stacks(keys: Iterable[str], metas: Mapping[str, TensorMeta]) -> list[Stack]:
    """The source's stacks, named by their keys alone; gates come from the shapes."""
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in keys:
        if "_ih" not in key and "_hh" not in key and "_hr" not in key:
            continue
        module, _, leaf = key.rpartition(".")
        if _LAYERED.match(leaf) or _CELL.match(leaf):
            found[module].append((leaf, key))
    shapes = {k: tuple(metas[k].shape) for entries in found.values() for _, k in entries}
    return _stacks(found, shapes, None)


def _stacks(
    found: Mapping[str, list[tuple[str, str]]],
    shapes: Mapping[str, tuple[int, ...]],
    gates: Callable[[str], int | None] | None,
) -> list[Stack]:
    """Group recurrent modules into stacks; ``gates`` is the target's lookup, ``None`` on the source."""
    singles: dict[tuple[str, str], dict[int, tuple[str, dict[Unit, dict[str, str]]]]] = defaultdict(dict)
    stacks: list[Stack | None] = []
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
        else:  # a multi-layer module, or a lone cell outside any list: a stack of one layer
            stacks.append(_make(module, layout, layers, shapes, gates, [module]))
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


def _merge_directions(stacks: list[Stack]) -> list[Stack]:
    """Two one-direction stacks named as a pair (``fwd_cells``, ``bwd_cells``) are one bidirectional stack."""
    groups: dict[tuple[object, ...], tuple[list[Stack], list[Stack]]] = defaultdict(lambda: ([], []))
    for s in stacks:
        found = _direction(s) if s.layout != "multi" and (0, True) not in s.units else None
        if found is not None:
            name, backward = found
            groups[(name, s.layout, s.gates)][backward].append(s)
    merged: dict[int, Stack] = {}
    for forwards, backwards in groups.values():
        if len(forwards) != 1 or len(backwards) != 1 or len(forwards[0].units) != len(backwards[0].units):
            continue  # no pair, or several stacks of one direction: nothing tells which two belong together
        fwd, bwd = forwards[0], backwards[0]
        units = {**fwd.units, **{(k, True): roles for (k, _), roles in bwd.units.items()}}
        both = Stack(f"{fwd.path}+{bwd.path}", fwd.layout, units, {**fwd.shapes, **bwd.shapes}, fwd.gates)
        merged[id(fwd)], merged[id(bwd)] = both, both
    out: dict[int, Stack] = {}
    for s in stacks:
        stack = merged.get(id(s), s)
        out.setdefault(id(stack), stack)
    return list(out.values())


def _direction(s: Stack) -> tuple[tuple[str, ...], bool] | None:
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
) -> Stack | None:
    if gates is not None:
        kinds = {gates(m) for m in modules}
        if len(kinds) != 1:
            return None  # an LSTM beside a GRU in one list: not one stack
        g = kinds.pop()
    else:
        g = _inferred_gates(units, shapes)
    return Stack(path, layout, units, {k: shapes[k] for r in units.values() for k in r.values()}, g)


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


def _complete(s: Stack) -> bool:
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
    return g if g in KIND else None
