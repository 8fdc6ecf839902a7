"""The report as text: the grouped sections of ``str(report)`` and the CLI's table.

Keys that share a status, a strategy (or adapter, or init spec) and a note are
collapsed into brace patterns (weightsurgery/_grouping.py):
``layer{1..4}.{0,1}.bn{1,2}.{weight,bias}``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from weightsurgery._grouping import group_keys
from weightsurgery.init.engine import CONSTRUCTOR

if TYPE_CHECKING:
    from weightsurgery.report import KeyRecord, Report

__all__ = ["human", "percent", "render_text", "sections"]


def sections(report: Report) -> list[tuple[str, list[tuple[str, str, list[str]]]]]:
    """The table's content: ``[(title, [(label, note, grouped_keys)])]``; the CLI renders the same rows."""
    canon = [r for r in report.records.values() if r.status != "tied"]
    out: list[tuple[str, list[tuple[str, str, list[str]]]]] = []

    def rows(records: list[KeyRecord], label_of: Any, note_of: Any) -> list[tuple[str, str, list[str]]]:
        groups: dict[tuple[str, str], list[str]] = {}
        for r in records:
            groups.setdefault((label_of(r), note_of(r)), []).append(r.target)
        return [(label, note, group_keys(keys)) for (label, note), keys in groups.items()]

    loaded = [r for r in canon if r.status == "loaded"]
    if loaded:
        out.append((f"loaded ({len(loaded)})", rows(loaded, lambda r: r.strategy or "", _loaded_note)))
    adapted = [r for r in canon if r.status == "adapted"]
    if adapted:
        out.append((f"adapted ({len(adapted)})", rows(adapted, lambda r: r.adapter or "", _adapted_note)))
    init = [r for r in canon if r.status == "initialized"]
    if init:
        out.append((f"initialized ({len(init)})", rows(init, lambda r: r.init_spec or "(on apply)", _init_note)))
    kept = [r for r in canon if r.status == "kept"]
    if kept:
        out.append((f"kept ({len(kept)})", rows(kept, lambda r: r.init_spec or CONSTRUCTOR, _init_note)))
    tied = [r for r in report.records.values() if r.status == "tied"]
    if tied:
        out.append((f"tied ({len(tied)})", rows(tied, lambda r: "alias", lambda r: f"of {r.alias_of}")))
    if report.extra_state:
        extra = [(k, f"from {s}" if s else "missing: kept its own") for k, s in report.extra_state.items()]
        out.append((f"extra state ({len(extra)})", [("", note, [k]) for k, note in extra]))
    if report.unused:
        out.append((f"unused source keys ({len(report.unused)})", [("", "", group_keys(report.unused))]))
    return out


def render_text(report: Report) -> str:
    """``str(report)``: the summary line, the warnings and the grouped sections."""
    lines = [report.summary()]
    lines += [f"warning: {w}" for w in report.warnings]
    for title, rows in sections(report):
        lines.append("")
        lines.append(title)
        width = max((len(label) for label, _, _ in rows), default=0)
        for label, note, keys in rows:
            for i, k in enumerate(keys):
                head = (label.ljust(width) if i == 0 else " " * width) + "  " if width else ""
                tail = f"  ({note})" if note and i == 0 else ""
                lines.append(f"  {head}{k}{tail}".rstrip())
    return "\n".join(lines)


def _loaded_note(r: KeyRecord) -> str:
    notes = []
    if r.strategy == "prefix" and r.evidence:
        notes.append(r.evidence.split(" (")[0])
    if r.cast:
        notes.append(r.cast)
    return ", ".join(notes)


def _adapted_note(r: KeyRecord) -> str:
    args = ", ".join(f"{k}={v}" for k, v in r.adapter_args.items() if not isinstance(v, (list, tuple)) or len(v) <= 4)
    notes = [args] if args else []
    if r.loaded_numel is not None and r.numel:
        rows = r.target_shape[0] if r.target_shape else 1
        copied = r.loaded_numel * rows // r.numel
        notes.append(f"{copied} of {rows} rows from the source" + (f", new rows {r.init_spec}" if r.init_spec else ""))
    if r.cast:
        notes.append(r.cast)
    return "; ".join(notes)


def _init_note(r: KeyRecord) -> str:
    reason = r.evidence.split(":")[0] if r.evidence else ""
    return f"{reason}; rule {r.init_rule}" if r.init_rule and r.init_rule != "default" else reason


def percent(fraction: float) -> str:
    """Rounded down, so anything short of everything never reads as 100.0%.

    Example:
        >>> percent(0.99996), human(11_190_000)
        ('99.9%', '11.19M')
    """
    return f"{math.floor(fraction * 1000) / 10:.1f}%"


def human(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)
