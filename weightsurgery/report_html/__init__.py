"""The report as one self-contained HTML page: both module trees side by side, every tensor's decision.

:func:`write_html` (``Report.to_html(path)``, the CLI's ``--html FILE``) writes a
single ``.html`` file with its CSS, script and data inline. It fetches nothing:
no CDN, no fonts, and a Content-Security-Policy that forbids any request, so it
works offline and attached to a bug report. The page shows

- the source, the target, coverage bars (parameters and tensors) and the warnings;
- the target's module tree, collapsible, each module coloured by status (loaded,
  adapted, initialized, kept, ambiguous, tied) with its parameters per status,
  and beside it the source's tree with unused keys marked; numbered siblings are
  grouped as the text report groups them (``layer{1..4}``);
- a table of tensors: target key, source key, shapes, dtypes, strategy, evidence,
  adapter and arguments, init spec and rule; clicking a module shows its tensors;
- a search box and status filters; the page reads them from its URL too
  (``report.html#status=kept,ambiguous&q=layer1&select=layer1.0``);
- for each ambiguous key, the candidates and the ``rename=`` line to paste.

The data travels as JSON inside ``<script type="application/json">``, with
``<``, ``>`` and ``&`` escaped, so no key or message can close the script.
"""

from __future__ import annotations

import html
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightsurgery._io import atomic_write_text
from weightsurgery.report_html._tree import build_tree

if TYPE_CHECKING:
    from weightsurgery.report import KeyRecord, Report

__all__ = ["STATUSES", "ambiguous_candidates", "page_data", "render_html", "write_html"]

#: The statuses the page colours, in the order its filters list them.
STATUSES = ("loaded", "adapted", "initialized", "kept", "ambiguous", "tied")

_TOKEN = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def write_html(report: Report, path: str | os.PathLike[str], *, target: str | None = None) -> Path:
    """Write ``report`` as one self-contained HTML page, atomically.

    Args:
        report: the report of a transfer or a dry run.
        path: the ``.html`` file to write; it is the old file or the complete new one, never a half-written one.
        target: how to name the target in the header; default: the model's class.

    Returns:
        The path written.

    Example:
        >>> import tempfile, pathlib
        >>> from torch import nn
        >>> from weightsurgery import transfer
        >>> report = transfer(nn.Linear(2, 3), nn.Linear(2, 3), dry_run=True)
        >>> out = write_html(report, pathlib.Path(tempfile.mkdtemp()) / "report.html")
        >>> out.read_text().startswith("<!DOCTYPE html>")
        True
    """
    out = Path(path)
    atomic_write_text(out, render_html(report, target=target))
    return out


def render_html(report: Report, *, target: str | None = None) -> str:
    """The page as a string (see :func:`write_html`)."""
    data = page_data(report, target=target)
    assets = resources.files(__name__)
    page = (assets / "page.html").read_text(encoding="utf-8")
    title = f"weightsurgery: {data['source']} → {data['target']}"
    parts = {
        "__TITLE__": html.escape(title),
        "__CSS__": (assets / "page.css").read_text(encoding="utf-8"),
        "__JS__": (assets / "page.js").read_text(encoding="utf-8"),
        "__DATA__": _script_json(data),
    }
    return re.sub("|".join(parts), lambda m: parts[m.group(0)], page)


def page_data(report: Report, *, target: str | None = None) -> dict[str, Any]:
    """Everything the page shows, JSON-ready: header figures, one row per key, both trees.

    Example:
        >>> from torch import nn
        >>> from weightsurgery import transfer
        >>> data = page_data(transfer({"weight": nn.Linear(2, 3).weight.detach()}, nn.Linear(2, 3), dry_run=True))
        >>> [(r["target"], r["view"]) for r in data["records"]], data["coverage"]["tensors"]
        ([('weight', 'loaded'), ('bias', 'kept')], [1, 2])
    """
    records = list(report.records.values())
    ambiguous = set(report.ambiguous)
    known_sources = _source_keys(report)
    rows = []
    for r in records:
        row = r.to_dict()
        row["numel"] = r.numel
        row["view"] = "ambiguous" if r.target in ambiguous else r.status
        if r.target in ambiguous:
            row["candidates"] = [_candidate(r.target, s) for s in ambiguous_candidates(r, known_sources)]
        rows.append(row)
    canonical = [r for r in records if r.status != "tied"]
    filled = sum(1 for r in canonical if r.status in ("loaded", "adapted"))
    views = [row["view"] for row in rows]
    numels = [0 if r.status == "tied" else r.numel for r in records]
    used_by: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r.status in ("loaded", "adapted"):
            for s in r.sources or ((r.source,) if r.source else ()):
                used_by.setdefault(s, []).append(i)
    unused = set(report.unused)
    source_keys = list(dict.fromkeys([*used_by, *report.unused]))
    source_rows = [{"key": s, "used_by": used_by.get(s, [])} for s in source_keys]
    source_status = ["unused" if s in unused else "used" for s in source_keys]
    model = report.model
    return {
        "source": report.origin.describe(),
        "origin": report.origin.to_dict(),
        "target": target or (f"{type(model).__module__}.{type(model).__qualname__}" if model is not None else "target"),
        "applied": report.applied,
        "summary": report.summary().removeprefix(report.origin.describe()).lstrip(": "),
        "coverage": {
            "params": [report.num_loaded_params, report.num_params],
            "tensors": [filled, len(canonical)],
        },
        "warnings": list(report.warnings),
        "statuses": list(STATUSES),
        "records": rows,
        "sources": source_rows,
        "unused": list(report.unused),
        "target_tree": build_tree([r.target for r in records], views, numels, root="target"),
        "source_tree": build_tree(source_keys, source_status, [0] * len(source_keys), root="source"),
    }


def ambiguous_candidates(record: KeyRecord, source_keys: set[str]) -> list[str]:
    """The source keys an ambiguous record's evidence names: keys, or modules holding the key's leaf.

    Example:
        >>> from weightsurgery.report import KeyRecord
        >>> r = KeyRecord("head.weight", "kept", (2, 2), "float32", 4, evidence="ambiguous: a.weight, b.weight")
        >>> ambiguous_candidates(r, {"a.weight", "b.weight", "c.weight"})
        ['a.weight', 'b.weight']
    """
    leaf = record.target.rsplit(".", 1)[-1]
    found: list[str] = []
    for token in _TOKEN.findall(record.evidence):
        for key in (token, f"{token}.{leaf}"):
            if key in source_keys and key not in found:
                found.append(key)
                break
    return found


def _candidate(target: str, source: str) -> dict[str, str]:
    pattern = "^" + re.escape(source) + "$"
    return {
        "source": source,
        "rename": f'rename={{r"{pattern}": "{target}"}}',
        "cli": f"--rename '{pattern}' '{target}'",
        "key_map": f'key_map={{"{target}": "{source}"}}',
    }


def _source_keys(report: Report) -> set[str]:
    keys = set(report.unused)
    for r in report.records.values():
        keys.update(r.sources)
        if r.source:
            keys.add(r.source)
    return keys


def _script_json(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_ESCAPES[m.group(0)], text)
