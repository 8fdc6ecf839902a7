"""The report: what was loaded from where and how, adapted, initialized, kept, left unused.

A :class:`Report` is built from one :class:`KeyRecord` per target key. It still
answers torch's ``missing_keys`` / ``unexpected_keys`` (and unpacks like
torch's ``_IncompatibleKeys``), so code written for ``load_state_dict`` keeps
working. ``str(report)`` is a grouped table and ``to_dict()`` is JSON-ready.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import FrozenInstanceError, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from weightsurgery.match.plan import Action, Plan, PlanEntry
from weightsurgery.report_text import human, percent, render_text, sections
from weightsurgery.sources.checkpoint import Origin

__all__ = ["IncorrectShape", "KeyRecord", "Report", "Status", "entry_loaded_numel"]

#: Report attributes held as read-only mappings.
_READ_ONLY = ("records", "extra_state")

Status = Literal["loaded", "adapted", "initialized", "kept", "tied"]


class IncorrectShape(NamedTuple):
    """A target key that a name match paired with a source tensor of another shape.

    The entries of ``Report.incorrect_shapes`` and ``ShapeMismatchError.incorrect_shapes``,
    as fvcore's checkpointer reports them: ``(key, target_shape, source_shape)``.
    """

    key: str
    target_shape: tuple[int, ...]
    source_shape: tuple[int, ...]


@dataclass(frozen=True)
class KeyRecord:
    """Everything known about one target key after a transfer.

    Attributes:
        target: the target key.
        status: ``"loaded"``, ``"adapted"``, ``"initialized"``, ``"kept"`` (not
            loaded; it holds the values its constructor gave it) or ``"tied"``.
        source: the source key it came from (loaded/adapted).
        sources: every source key an adapter read.
        strategy: the matching strategy (``"exact"``, ``"prefix"``, ``"structure"``...).
        evidence: why it matched, or why it was initialized.
        target_shape: the target tensor's shape.
        target_dtype: the target tensor's dtype (``"float32"``).
        source_shape: the source tensor's shape, where a source was considered.
        source_dtype: the source tensor's dtype, where one was read.
        adapter: the adapter applied, with ``adapter_args``.
        adapter_args: the adapter's arguments.
        init_spec: the init spec used (``"trunc_normal(std=0.02)"``; ``"constructor"`` for a kept
            key); for an adapted key that gained rows (a grown head or vocabulary), the spec
            that filled the new rows.
        init_rule: the rule that chose the spec (``"head.*"``, ``"default"``).
        alias_of: for a tied key, the key it shares its tensor with.
        numel: the number of elements.
        loaded_numel: for an adapted key, how many elements hold source values
            when that is fewer than ``numel`` (the new rows of a grown head do not).
    """

    target: str
    status: Status
    target_shape: tuple[int, ...]
    target_dtype: str
    numel: int
    source: str | None = None
    sources: tuple[str, ...] = ()
    strategy: str | None = None
    evidence: str = ""
    source_shape: tuple[int, ...] | None = None
    source_dtype: str | None = None
    adapter: str | None = None
    adapter_args: Mapping[str, Any] = field(default_factory=dict)
    init_spec: str | None = None
    init_rule: str | None = None
    alias_of: str | None = None
    loaded_numel: int | None = None

    @property
    def num_loaded(self) -> int:
        """The elements filled from the source: all of a loaded key, the copied rows of a grown one, 0 otherwise."""
        if self.status not in ("loaded", "adapted"):
            return 0
        return self.numel if self.loaded_numel is None else self.loaded_numel

    @property
    def cast(self) -> str | None:
        """``"float16→float32"`` when the dtype changed on the way in."""
        if self.source_dtype and self.source_dtype != self.target_dtype and self.status in ("loaded", "adapted"):
            return f"{self.source_dtype}→{self.target_dtype}"
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "status": self.status}
        for name in ("source", "strategy", "adapter", "init_spec", "init_rule", "alias_of"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.sources:
            out["sources"] = list(self.sources)
        if self.evidence:
            out["evidence"] = self.evidence
        if self.adapter:
            out["adapter_args"] = dict(self.adapter_args)
        out["target_shape"] = list(self.target_shape)
        out["target_dtype"] = self.target_dtype
        if self.loaded_numel is not None:
            out["loaded_numel"] = self.loaded_numel
        if self.source_shape is not None:
            out["source_shape"] = list(self.source_shape)
        if self.source_dtype is not None:
            out["source_dtype"] = self.source_dtype
        if self.cast:
            out["cast"] = self.cast
        return out


class Report:
    """The outcome of a transfer (or, with ``dry_run=True``, of its plan). Immutable once built.

    Attributes:
        records: target key -> :class:`KeyRecord`, in the target's module order.
        origin: what the source was resolved from.
        plan: the plan that was applied; save it with ``report.plan.save(path)``.
        applied: ``False`` for a dry run.
        unused: source keys that nothing used.
        frozen: parameter keys set to ``requires_grad=False``.
        warnings: notes worth a user's attention (low coverage...).
        model: the target module (built by the transfer when ``dst`` was a factory);
            the report holds a reference to it, and only the module itself changes.
        extra_state: target ``<module>._extra_state`` -> the source extra-state key it
            took, or ``None`` (missing: the module keeps its own), as torch's
            ``get_extra_state``/``set_extra_state`` protocol names them.
        unused_extra_state: source extra-state keys no target module took.
        ranks: for a sharded (DTensor) target, one dict per rank, in rank order:
            ``rank``, ``bytes_read`` (from the file readers' own counters; rank 0
            counts a pickle's tensors, which it reads whole), ``bytes_received``
            (its regions sent by rank 0) and ``seconds``; every
            rank gets the same report. ``()`` on one process.

    Assigning an attribute raises :class:`dataclasses.FrozenInstanceError`, and
    ``records`` and ``extra_state`` are read-only mappings.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from weightsurgery import transfer
        >>> src = nn.Linear(2, 3)
        >>> report = transfer({"module.weight": src.weight.detach()}, nn.Linear(2, 3), seed=0)
        >>> report.mapping
        {'weight': 'module.weight'}
        >>> report.missing_keys
        ['bias']
        >>> missing, unexpected = report
    """

    def __init__(
        self,
        records: Mapping[str, KeyRecord],
        *,
        origin: Origin,
        plan: Plan,
        applied: bool,
        unused: Sequence[str],
        frozen: Sequence[str] = (),
        warnings: Sequence[str] = (),
        model: Any = None,
        extra_state: Mapping[str, str | None] | None = None,
        unused_extra_state: Sequence[str] = (),
        ranks: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.records: Mapping[str, KeyRecord] = MappingProxyType(dict(records))
        self.origin = origin
        self.plan = plan
        self.applied = applied
        self.unused: tuple[str, ...] = tuple(unused)
        self.frozen: tuple[str, ...] = tuple(frozen)
        self.warnings: tuple[str, ...] = tuple(warnings)
        self.model = model
        self.extra_state: Mapping[str, str | None] = MappingProxyType(dict(extra_state or {}))
        self.unused_extra_state: tuple[str, ...] = tuple(unused_extra_state)
        self.ranks: tuple[Mapping[str, Any], ...] = tuple(MappingProxyType(dict(r)) for r in ranks)
        self.__dict__["_sealed"] = True

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_sealed"):
            raise FrozenInstanceError(f"cannot assign to {name!r}: a Report is immutable")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete {name!r}: a Report is immutable")

    def __getstate__(self) -> dict[str, Any]:  # pickle and copy: a read-only view cannot be pickled itself
        return {k: dict(v) if isinstance(v, MappingProxyType) else v for k, v in self.__dict__.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({k: MappingProxyType(v) if k in _READ_ONLY else v for k, v in state.items()})

    # --- the public contract -------------------------------------------------------------------

    @property
    def mapping(self) -> dict[str, str]:
        """Target key -> source key, for every target tensor filled from the source."""
        return {k: r.source for k, r in self.records.items() if r.status in ("loaded", "adapted") and r.source}

    @property
    def initialized(self) -> list[str]:
        """Target keys filled by the fallback init."""
        return [k for k, r in self.records.items() if r.status == "initialized"]

    @property
    def kept(self) -> list[str]:
        """Target keys not loaded that hold the values their constructor gave them (no ``init=`` rule named them)."""
        return [k for k, r in self.records.items() if r.status == "kept"]

    @property
    def loaded(self) -> list[str]:
        return [k for k, r in self.records.items() if r.status == "loaded"]

    @property
    def adapted(self) -> list[str]:
        return [k for k, r in self.records.items() if r.status == "adapted"]

    @property
    def missing_keys(self) -> list[str]:
        """torch's meaning: target keys the source did not fill (tied aliases of a loaded key are not missing)."""
        init = set(self.initialized) | set(self.kept)
        missing = [k for k, r in self.records.items() if k in init or (r.status == "tied" and r.alias_of in init)]
        return missing + [k for k, source in self.extra_state.items() if source is None]

    @property
    def incorrect_shapes(self) -> list[IncorrectShape]:
        """``(key, target_shape, source_shape)`` for each key a name match found in another shape and did not load.

        As in fvcore's checkpointer. Keys that an adapter reshaped are ``adapted``, not listed here.
        """
        filled = ("loaded", "adapted", "tied")
        return [
            IncorrectShape(k, r.target_shape, r.source_shape)
            for k, r in self.records.items()
            if r.status not in filled and r.source_shape is not None and r.source_shape != r.target_shape
        ]

    @property
    def unexpected_keys(self) -> list[str]:
        """torch's meaning: source keys that went unused (extra state included)."""
        return [*self.unused, *self.unused_extra_state]

    def __iter__(self) -> Iterator[list[str]]:
        """Unpack like torch's ``_IncompatibleKeys``: ``missing, unexpected = report``."""
        return iter((self.missing_keys, self.unexpected_keys))

    # --- figures ---------------------------------------------------------------------------------

    def _canonical(self) -> list[KeyRecord]:
        return [r for r in self.records.values() if r.status != "tied"]

    @property
    def num_params(self) -> int:
        return sum(r.numel for r in self._canonical())

    @property
    def num_loaded_params(self) -> int:
        return sum(r.num_loaded for r in self._canonical())

    @property
    def coverage(self) -> float:
        """The fraction of target elements filled from the source (0..1)."""
        total = self.num_params
        return self.num_loaded_params / total if total else 1.0

    @property
    def ambiguous(self) -> list[str]:
        """Keys left unloaded (initialized or kept) because a strategy refused to guess for them."""
        return [k for k, r in self.records.items() if r.status in ("initialized", "kept") and "ambiguous" in r.evidence]

    def summary(self) -> str:
        """One line: ``loaded 120, adapted 0, initialized 0, kept 2, unused 2; coverage 99.9%``."""
        canon = self._canonical()
        n = {s: sum(1 for r in canon if r.status == s) for s in ("loaded", "adapted", "initialized", "kept")}
        verb = "" if self.applied else " (dry run)"
        return (
            f"{self.origin.describe()}{verb}: loaded {n['loaded']}, adapted {n['adapted']}, "
            f"initialized {n['initialized']}, kept {n['kept']}, unused {len(self.unused)}; "
            f"coverage {percent(self.coverage)} of {human(self.num_params)} parameters"
        )

    # --- rendering -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict with ``mapping``, ``initialized``, ``unused`` and every record."""
        return {
            "source": self.origin.to_dict(),
            "applied": self.applied,
            "coverage": self.coverage,
            "num_params": self.num_params,
            "num_loaded_params": self.num_loaded_params,
            "mapping": self.mapping,
            "initialized": self.initialized,
            "kept": self.kept,
            "unused": list(self.unused),
            "missing_keys": self.missing_keys,
            "unexpected_keys": self.unexpected_keys,
            "incorrect_shapes": [[k, list(t), list(s)] for k, t, s in self.incorrect_shapes],
            "frozen": list(self.frozen),
            "extra_state": dict(self.extra_state),
            "warnings": list(self.warnings),
            "records": [r.to_dict() for r in self.records.values()],
            **({"ranks": [dict(r) for r in self.ranks]} if self.ranks else {}),
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_html(self, path: str | os.PathLike[str], *, target: str | None = None) -> Path:
        """Write the report as one self-contained HTML page (weightsurgery/report_html); returns the path."""
        from weightsurgery.report_html import write_html

        return write_html(self, path, target=target)

    def sections(self) -> list[tuple[str, list[tuple[str, str, list[str]]]]]:
        """The table's content: ``[(title, [(label, note, grouped_keys)])]``; the CLI renders the same rows."""
        return sections(self)

    def __str__(self) -> str:
        return render_text(self)

    def __repr__(self) -> str:
        return f"<Report {self.summary()}>"


def entry_loaded_numel(entry: PlanEntry, target_shape: tuple[int, ...], source_shape: tuple[int, ...] | None) -> int:
    """How many target elements a plan entry fills from the source: 0 for init, only the copied rows of a grown head.

    Example:
        >>> from weightsurgery.match.plan import Action, PlanEntry
        >>> e = PlanEntry("fc.weight", Action.ADAPT, source="fc.weight", adapter="head", adapter_args={"rows": [3, -1]})
        >>> entry_loaded_numel(e, (2, 8), (10, 8)), entry_loaded_numel(PlanEntry("b", Action.LOAD, source="b"), (4,), (4,))
        (8, 4)
    """
    numel = math.prod(target_shape)
    if entry.action is Action.LOAD:
        return numel
    if entry.action is not Action.ADAPT:
        return 0
    from weightsurgery.adapt import get_adapter

    return get_adapter(entry.adapter or "").loaded_numel(entry.adapter_args, source_shape or target_shape, target_shape)
