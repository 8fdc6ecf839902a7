"""Presentation for the CLI: consoles, JSON output, progress bars, small formatters.

Results go to stdout; progress, warnings and errors go to stderr, so
``weightsurgery inspect x.pth --json | jq`` stays clean. Colour follows rich's
rules: only on a terminal, never with ``NO_COLOR`` set, forced with ``FORCE_COLOR``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

__all__ = ["UI", "add_row", "human_bytes", "human_count", "shape_text"]

ProgressCallback = Callable[[int, int], None]

PIPE_WIDTH = 200
"""Line width when output is not a terminal and ``COLUMNS`` is unset."""


@dataclass
class UI:
    """Where a command writes.

    Attributes:
        quiet: print nothing but errors (and JSON, when asked for).
        json: print one JSON document on stdout instead of tables.
        out: the stdout console.
        err: the stderr console (progress, warnings, errors).

    Example:
        >>> ui = UI(quiet=True)
        >>> ui.show("nothing is printed under quiet")
    """

    quiet: bool = False
    json: bool = False
    out: Console = field(default_factory=lambda: _console(stderr=False))
    err: Console = field(default_factory=lambda: _console(stderr=True))

    def show(self, *renderables: RenderableType) -> None:
        """Print human output on stdout, unless ``--quiet`` or ``--json``."""
        if not self.quiet and not self.json:
            self.out.print(*(Text(r) if isinstance(r, str) else r for r in renderables))

    def emit_json(self, data: Any) -> None:
        """Print ``data`` as one JSON document on stdout (``--json``)."""
        self.out.file.write(json.dumps(data, indent=2, default=str) + "\n")
        self.out.file.flush()

    def note(self, message: str) -> None:
        """A status line on stderr (``wrote out.safetensors``), unless quiet."""
        if not self.quiet:
            self.err.print(message, markup=False, highlight=False)

    @contextlib.contextmanager
    def progress(self, description: str) -> Iterator[ProgressCallback]:
        """A transient progress bar on stderr, driven by a ``(done, total)`` callback.

        The bar is off under ``--quiet`` and when stderr is not a terminal, so
        logs and pipes never fill with redraws.
        """
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.err,
            transient=True,
            disable=self.quiet or not self.err.is_terminal,
        )
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        with bar:
            yield update


def add_row(table: Table, *cells: RenderableType) -> None:
    """Add a row whose string cells are plain text: a key like ``[state_dict]`` is not rich markup."""
    table.add_row(*(Text(c) if isinstance(c, str) else c for c in cells))


def _console(*, stderr: bool) -> Console:
    """A console; piped output gets wide lines (keys are not folded for ``grep``) unless ``COLUMNS`` is set."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


def human_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``.

    Example:
        >>> human_bytes(18_612_224)
        '17.8 MiB'
    """
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value, i = float(n), 0
    while value >= 1024 and i < len(units) - 1:
        value, i = value / 1024, i + 1
    return f"{n} B" if i == 0 else f"{value:.1f} {units[i]}"


def human_count(n: int) -> str:
    """``4_652_008`` -> ``"4.65M"``.

    Example:
        >>> human_count(4_652_008), human_count(512)
        ('4.65M', '512')
    """
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def shape_text(shape: tuple[int, ...] | list[int] | None) -> str:
    """``(64, 3, 7, 7)`` -> ``"64×3×7×7"``; a scalar is ``"scalar"``.

    Example:
        >>> shape_text((64, 3, 7, 7)), shape_text(())
        ('64×3×7×7', 'scalar')
    """
    if shape is None:
        return ""
    return "×".join(str(d) for d in shape) if len(shape) else "scalar"
