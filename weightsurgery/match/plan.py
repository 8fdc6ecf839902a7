"""The plan: one decision per target key, computed from metadata alone.

A :class:`Plan` is a reusable mapping artifact. It prints, saves to JSON,
loads back, and re-applies without matching again; :meth:`Plan.inverted`
gives the mapping the other way round, to write a target's weights back in the
source's naming.
"""

from __future__ import annotations

import enum
import json
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from itertools import repeat
from pathlib import Path
from typing import Any

from weightsurgery.errors import PlanError

__all__ = ["NO_ARGS", "Action", "Plan", "PlanEntry"]

PLAN_FORMAT = "weightsurgery.plan/1"


class _NoArgs(Mapping[str, Any]):
    """An empty mapping that cannot change: the ``adapter_args`` of every entry without an adapter.

    One shared object instead of one dict per entry: a 200k-key plan would
    otherwise allocate (and the garbage collector walk) 200k empty dicts.
    """

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and not other

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "{}"


#: The empty ``adapter_args`` shared by entries and matches without an adapter (``NO_ARGS == {}``).
NO_ARGS: Mapping[str, Any] = _NoArgs()


class Action(str, enum.Enum):
    """What apply does with a target key."""

    LOAD = "load"  # copy the source tensor (cast if dtypes differ)
    ADAPT = "adapt"  # run an adapter on the source tensor(s), then copy
    INIT = "init"  # fallback init
    TIED = "tied"  # an alias of another target key; filled through it


@dataclass(frozen=True, slots=True)
class PlanEntry:
    """The decision for one target key.

    Attributes:
        target: the target key.
        action: what apply does.
        source: the source key (``LOAD``/``ADAPT``; the first one for multi-source adapters);
            for ``INIT``, the name match that was considered and refused (a shape mismatch).
        sources: every source key an adapter reads, in order (``ADAPT``).
        strategy: the matching strategy that chose ``source``.
        evidence: why it matched, or why it falls back to init.
        adapter: the adapter's registered name (``ADAPT``).
        adapter_args: the adapter's keyword arguments (JSON-serialisable).
        alias_of: the canonical key this tied alias follows (``TIED``).
        source_shape: the source tensor's shape, when a source was considered.
    """

    target: str
    action: Action
    source: str | None = None
    sources: tuple[str, ...] = ()
    strategy: str | None = None
    evidence: str = ""
    adapter: str | None = None
    adapter_args: Mapping[str, Any] = NO_ARGS
    alias_of: str | None = None
    source_shape: tuple[int, ...] | None = None

    @classmethod
    def loads(
        cls,
        targets: Sequence[str],
        sources: Sequence[str],
        strategy: str,
        evidence: str,
        source_shapes: Sequence[tuple[int, ...]],
    ) -> list[PlanEntry]:
        """Plain copies ``targets[i] <- sources[i]`` in bulk, as ``PlanEntry(t, Action.LOAD, s, ...)`` makes one.

        The entries are built one field at a time over all of them, each field
        set in C as the dataclass's own ``__init__`` sets it: a 200k-key plan
        spends a fraction of the time one call per entry takes.

        Example:
            >>> e = PlanEntry.loads(["fc.weight"], ["module.fc.weight"], "prefix", "stripped", [(3, 2)])[0]
            >>> e == PlanEntry("fc.weight", Action.LOAD, "module.fc.weight", strategy="prefix",
            ...                evidence="stripped", source_shape=(3, 2))
            True
        """
        entries = list(map(object.__new__, repeat(cls, len(targets))))
        columns = (targets, repeat(Action.LOAD), sources, repeat(()), repeat(strategy), repeat(evidence),
                   repeat(None), repeat(NO_ARGS), repeat(None), source_shapes)
        for name, column in zip(_FIELDS, columns):
            deque(map(getattr(cls, name).__set__, entries, column), maxlen=0)
        return entries

    @property
    def source_keys(self) -> tuple[str, ...]:
        if self.sources:
            return self.sources
        return (self.source,) if self.source is not None else ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "action": self.action.value}
        if self.source is not None:
            out["source"] = self.source
        if self.sources:
            out["sources"] = list(self.sources)
        if self.strategy:
            out["strategy"] = self.strategy
        if self.evidence:
            out["evidence"] = self.evidence
        if self.adapter:
            out["adapter"] = self.adapter
            out["adapter_args"] = dict(self.adapter_args)
        if self.alias_of:
            out["alias_of"] = self.alias_of
        if self.source_shape is not None:
            out["source_shape"] = list(self.source_shape)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanEntry:
        try:
            action = Action(data["action"])
            target = str(data["target"])
        except (KeyError, ValueError) as exc:
            valid = ", ".join(a.value for a in Action)
            raise PlanError(f"plan entry {dict(data)!r} needs 'target' and an 'action' among {valid}") from exc
        shape = data.get("source_shape")
        return cls(
            target=target,
            action=action,
            source=data.get("source"),
            sources=tuple(data.get("sources", ())),
            strategy=data.get("strategy"),
            evidence=data.get("evidence", ""),
            adapter=data.get("adapter"),
            adapter_args=dict(data.get("adapter_args", {})),
            alias_of=data.get("alias_of"),
            source_shape=tuple(shape) if shape is not None else None,
        )


_FIELDS = tuple(f.name for f in fields(PlanEntry))


@dataclass(frozen=True)
class Plan:
    """One :class:`PlanEntry` per target key, plus the source keys nothing uses.

    Attributes:
        entries: target key -> decision, in the target's module order.
        unused: source keys no entry reads, in source order.
        source: a description of the source the plan was made from.

    Example:
        >>> plan = Plan({"fc.weight": PlanEntry("fc.weight", Action.LOAD, source="head.weight")}, ())
        >>> plan.mapping
        {'fc.weight': 'head.weight'}
        >>> Plan.from_json(plan.to_json()) == plan
        True
    """

    entries: Mapping[str, PlanEntry]
    unused: tuple[str, ...] = ()
    source: str = ""

    @property
    def mapping(self) -> dict[str, str]:
        """Target key -> source key for every target filled from the source."""
        return {
            k: e.source
            for k, e in self.entries.items()
            if e.action in (Action.LOAD, Action.ADAPT) and e.source is not None
        }

    def by_action(self, action: Action) -> list[PlanEntry]:
        return [e for e in self.entries.values() if e.action is action]

    def with_entries(self, updates: Mapping[str, PlanEntry]) -> Plan:
        """A copy with some entries replaced (the way to edit a plan by code)."""
        entries = dict(self.entries)
        entries.update(updates)
        used = {s for e in entries.values() if e.action in (Action.LOAD, Action.ADAPT) for s in e.source_keys}
        all_sources = list(dict.fromkeys([*self.unused, *(s for e in self.entries.values() for s in e.source_keys)]))
        return replace(self, entries=entries, unused=tuple(s for s in all_sources if s not in used))

    def inverted(self) -> dict[str, str]:
        """Source key -> target key for every plain copy, to write weights back in the source's naming.

        Adapted entries are left out: an adapter is not generally invertible.
        Tied aliases are left out: the canonical key carries the tensor.
        """
        return {e.source: k for k, e in self.entries.items() if e.action is Action.LOAD and e.source is not None}

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "source": self.source,
            "entries": [e.to_dict() for e in self.entries.values()],
            "unused": list(self.unused),
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        if data.get("format") != PLAN_FORMAT:
            raise PlanError(f"not a weightsurgery plan (format {data.get('format')!r}, expected {PLAN_FORMAT!r})")
        entries = [PlanEntry.from_dict(e) for e in data.get("entries", [])]
        return cls({e.target: e for e in entries}, tuple(data.get("unused", ())), str(data.get("source", "")))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan as JSON, atomically."""
        from weightsurgery._io import atomic_write_text

        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            from weightsurgery.errors import SourceNotFoundError

            raise SourceNotFoundError(f"plan file {p} does not exist", source=p) from exc
        except UnicodeDecodeError as exc:
            raise PlanError(f"plan file {p} is not JSON text ({exc.reason} at byte {exc.start})") from exc
        try:
            return cls.from_json(text)
        except PlanError as exc:
            raise PlanError(f"plan file {p}: {exc}") from exc
        except (RecursionError, TypeError, AttributeError, KeyError, ValueError) as exc:  # a hand-edited or hostile file
            raise PlanError(
                f"plan file {p} is not a weightsurgery plan ({type(exc).__name__}: {exc}); "
                "write one with report.plan.save() or --save-mapping"
            ) from exc
