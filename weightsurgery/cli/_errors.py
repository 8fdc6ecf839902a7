"""One table from exception type to exit code and command-line fix.

Library messages already name the file or key and the fix in library terms
(``key=``, ``weights_only=False``); the table adds the flag that does the same
on the command line. User mistakes exit 1, an interrupt 130, anything else is
a bug and exits 2. ``WEIGHTSURGERY_DEBUG=1`` prints the full traceback too.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console

from weightsurgery.errors import (
    AmbiguousContainerError,
    CoverageError,
    ShapeMismatchError,
    StrictTransferError,
    UnknownContainerError,
    UnsafeCheckpointError,
    WeightSurgeryError,
)

__all__ = ["DEBUG_ENV", "EXIT_BUG", "EXIT_INTERRUPTED", "EXIT_USER", "ERROR_TABLE", "ErrorRule", "report_error"]

DEBUG_ENV = "WEIGHTSURGERY_DEBUG"
EXIT_USER = 1
EXIT_BUG = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class ErrorRule:
    """How the CLI reports one family of exceptions.

    Attributes:
        types: the exception types this rule covers (``isinstance``).
        exit_code: the process exit code.
        hint: the command-line fix, from the exception (``None`` when the message says it all).
    """

    types: tuple[type[BaseException], ...]
    exit_code: int
    hint: Callable[[BaseException], str | None] = lambda exc: None


def _key_choice(names: Sequence[str]) -> str | None:
    real = [n for n in names if not n.startswith("<")]  # "<root>" cannot be passed as --key
    return f"--key {real[0]}" if real else None


def _ambiguous_hint(exc: BaseException) -> str | None:
    choice = _key_choice(getattr(exc, "candidates", ()))
    return f"on the command line: {choice}" if choice else None


def _unknown_key_hint(exc: BaseException) -> str:
    choice = _key_choice(getattr(exc, "available", ()))
    return f"on the command line: {choice}, or drop --key" if choice else "on the command line: drop --key"


ERROR_TABLE: tuple[ErrorRule, ...] = (
    ErrorRule((UnsafeCheckpointError,), EXIT_USER, lambda e: "on the command line: --unsafe-pickle, if you trust it"),
    ErrorRule((AmbiguousContainerError,), EXIT_USER, _ambiguous_hint),
    ErrorRule((UnknownContainerError,), EXIT_USER, _unknown_key_hint),
    ErrorRule((ShapeMismatchError,), EXIT_USER, lambda e: "on the command line: --on-mismatch init, or adapt"),
    ErrorRule((StrictTransferError,), EXIT_USER,
              lambda e: "on the command line: drop --strict, or map with --rename, --key-map or --recipe"),
    ErrorRule((CoverageError,), EXIT_USER, lambda e: "on the command line: lower or drop --min-coverage"),
    ErrorRule((WeightSurgeryError,), EXIT_USER),
    ErrorRule((OSError,), EXIT_USER),  # missing files, permissions, a full disk: the message names the file
    ErrorRule((KeyboardInterrupt,), EXIT_INTERRUPTED),
)
"""First matching rule wins; anything not listed is a bug (exit 2)."""


def report_error(exc: BaseException, console: Console) -> int:
    """Print ``error: ...`` for ``exc`` on ``console`` and return the exit code.

    Args:
        exc: the exception that ended the command.
        console: the stderr console.

    Returns:
        The exit code from :data:`ERROR_TABLE` (2 for an unexpected exception).

    Example:
        >>> from rich.console import Console
        >>> from weightsurgery.errors import TargetError
        >>> report_error(TargetError("timm has no model 'resnet'"), Console(width=80))
        error: timm has no model 'resnet'
        1
    """
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    rule = next((r for r in ERROR_TABLE if isinstance(exc, r.types)), None)
    if debug:
        console.print("".join(traceback.format_exception(exc)), markup=False, highlight=False, end="")
    if rule is None:
        message = f"internal error: {type(exc).__name__}: {exc}"
        if not debug:
            message += f"\nThis is a bug in weightsurgery; rerun with {DEBUG_ENV}=1 and report the traceback."
        console.print(message, markup=False, highlight=False, soft_wrap=True)
        return EXIT_BUG
    if isinstance(exc, KeyboardInterrupt):
        console.print("interrupted", markup=False, highlight=False)
        return rule.exit_code
    message = _message(exc)
    first, _, rest = message.partition("\n")
    hint = rule.hint(exc)
    if hint and _flag(hint) and _flag(hint) in message:
        hint = None  # the library's message already names the flag
    line = f"error: {first}" + (f" ({hint})" if hint else "")
    console.print(line + (f"\n{rest}" if rest else ""), markup=False, highlight=False, soft_wrap=True)
    return rule.exit_code


def _flag(hint: str) -> str | None:
    """The first ``--flag`` a hint names."""
    return next((word.rstrip(",") for word in hint.split() if word.startswith("--")), None)


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, WeightSurgeryError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return str(exc) or type(exc).__name__
