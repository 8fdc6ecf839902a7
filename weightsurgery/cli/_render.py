"""Rich renderings shared by the commands: grouped tensor tables and the report's sections."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text

from weightsurgery._grouping import expand_group, group_keys
from weightsurgery.cli._ui import add_row, shape_text
from weightsurgery.report import Report
from weightsurgery.sources.checkpoint import TensorMeta

__all__ = ["TensorRow", "report_table", "tensor_rows", "tensor_table"]

_STATUS_STYLE = {
    "loaded": "green", "adapted": "cyan", "initialized": "yellow", "kept": "bright_black", "tied": "blue", "unused": "magenta",
}


@dataclass(frozen=True)
class TensorRow:
    """Keys that share one shape and dtype, collapsed into a brace pattern.

    Attributes:
        pattern: the keys, as ``layer{1..4}.{0,1}.bn1.{weight,bias}``.
        shape: their common shape.
        dtype: their common dtype (``"float32"``).
        count: how many keys the pattern stands for.
    """

    pattern: str
    shape: tuple[int, ...]
    dtype: str
    count: int


def tensor_rows(metas: Mapping[str, TensorMeta]) -> list[TensorRow]:
    """Group keys of equal shape and dtype into patterns, in the order the keys first appear.

    Example:
        >>> import torch
        >>> metas = {f"blocks.{i}.{n}": TensorMeta((8,), torch.float32) for i in range(3) for n in ("weight", "bias")}
        >>> [(r.pattern, r.count) for r in tensor_rows(metas)]
        [('blocks.{0..2}.{weight,bias}', 6)]
    """
    buckets: dict[tuple[tuple[int, ...], str], list[str]] = {}
    for key, meta in metas.items():
        buckets.setdefault((meta.shape, str(meta.dtype).removeprefix("torch.")), []).append(key)
    rows: list[tuple[int, TensorRow]] = []
    position = {key: i for i, key in enumerate(metas)}
    for (shape, dtype), keys in buckets.items():
        for pattern in group_keys(keys):
            owned = _members(pattern, position)
            first = min(position.get(k, len(position)) for k in owned)
            rows.append((first, TensorRow(pattern, shape, dtype, len(owned))))
    return [row for _, row in sorted(rows, key=lambda item: item[0])]


def _members(pattern: str, known: Mapping[str, int]) -> list[str]:
    """The keys a pattern stands for; a key with literal braces stands for itself."""
    if pattern in known:
        return [pattern]
    return [k for k in expand_group(pattern) if k in known] or [pattern]


def tensor_table(rows: list[TensorRow], *, title: str | None = None) -> Table:
    """A table of :class:`TensorRow`: keys, count, shape, dtype."""
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("keys", overflow="fold", ratio=1)
    table.add_column("n", justify="right")
    table.add_column("shape", no_wrap=True)
    table.add_column("dtype", no_wrap=True)
    for row in rows:
        add_row(table, row.pattern, str(row.count), shape_text(row.shape), row.dtype)
    return table


def report_table(report: Report) -> Table:
    """The report's grouped sections (loaded, adapted, initialized, kept, tied, unused, ambiguous) as one table.

    A group's note (why it was initialized, the rule, a dtype cast) follows its
    first key, dimmed, so that only the keys column ever folds.
    """
    table = Table(show_edge=False, pad_edge=False, show_header=True)
    table.add_column("status", no_wrap=True)
    table.add_column("how", no_wrap=True, max_width=24)
    table.add_column("keys (note)", overflow="fold", ratio=1)
    for title, rows in report.sections():
        status = title.split(" (")[0].split()[0]
        style = _STATUS_STYLE.get(status, "")
        for i, (label, note, keys) in enumerate(rows):
            for j, key in enumerate(keys):
                add_row(
                    table,
                    Text(title, style=style) if i == 0 and j == 0 else "",
                    label if j == 0 else "",
                    _with_note(key, note if j == 0 else ""),
                )
        table.add_section()
    ambiguous = report.ambiguous
    for i, key in enumerate(ambiguous):
        title = Text(f"ambiguous ({len(ambiguous)})", style="red") if i == 0 else ""
        add_row(table, title, "left to init", _with_note(key, report.records[key].evidence))
    return table


def _with_note(key: str, note: str) -> Text:
    text = Text(key)
    if note:
        text.append(f"  ({note})", style="dim")
    return text
