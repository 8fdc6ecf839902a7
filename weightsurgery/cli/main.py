"""``weightsurgery``: the command line.

One module per command (``inspect``, ``plan``, ``transfer``, ``diff``,
``convert``); each exposes ``HELP``, ``EPILOG``, ``add_arguments(parser)`` and
``run(args, ui) -> int``. This module builds the parser, sets up logging and
warnings for the run, and turns exceptions into one ``error:`` line and an
exit code through :data:`weightsurgery.cli._errors.ERROR_TABLE`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any, NoReturn

from weightsurgery._reading import is_out_of_memory
from weightsurgery.cli import convert, diff, inspect, plan, transfer
from weightsurgery.cli._errors import report_error
from weightsurgery.cli._ui import UI
from weightsurgery.errors import CLIError, InputMemoryError, WeightSurgeryError

__all__ = ["build_parser", "main"]

COMMANDS: dict[str, ModuleType] = {
    "inspect": inspect,
    "plan": plan,
    "transfer": transfer,
    "diff": diff,
    "convert": convert,
}

EPILOG = """\
examples:
  weightsurgery inspect resnet50.pth
  weightsurgery plan resnet50.pth timm:resnet50 --num-classes 10
  weightsurgery transfer resnet50.pth timm:resnet50 --num-classes 10 -o out.safetensors
  weightsurgery diff a.safetensors b.pth
  weightsurgery convert model.pth model.safetensors

Run 'weightsurgery COMMAND --help' for each command's options and examples.
Set WEIGHTSURGERY_DEBUG=1 to see full tracebacks; NO_COLOR=1 turns colour off.
"""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose mistakes raise :class:`CLIError` (exit 1) instead of exiting 2."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} --help')")


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options accepted before or after the command name.

    On subcommands the defaults are suppressed, so that a flag given before the
    command is not overwritten by the subcommand's default.
    """
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    group = parser.add_argument_group("output")
    group.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors", **default)
    group.add_argument("--json", action="store_true", help="print one JSON document on stdout", **default)
    group.add_argument("-v", "--verbose", action="store_true", help="log what the library does", **default)


def build_parser() -> argparse.ArgumentParser:
    """The ``weightsurgery`` argument parser, with one subparser per command.

    Example:
        >>> args = build_parser().parse_args(["inspect", "model.safetensors", "--json"])
        >>> args.command, args.json, args.quiet
        ('inspect', True, False)
    """
    parser = _Parser(
        prog="weightsurgery",
        description="Move pretrained weights into PyTorch models: inspect, plan, transfer, diff, convert.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _add_global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in COMMANDS.items():
        cmd = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            epilog=module.EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        _add_global_options(cmd, suppress=True)
        cmd.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code.

    Args:
        argv: the arguments after the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 on success, 1 for a user mistake (bad flag, missing file, unsafe
        pickle...), 130 when interrupted, 2 for a bug.

    Example:
        >>> main(["--version"])  # doctest: +ELLIPSIS
        weightsurgery ...
        0
    """
    ui = UI()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    except CLIError as exc:
        return report_error(exc, ui.err)
    ui.quiet, ui.json = args.quiet, args.json
    if args.command is None:
        build_parser().print_help(sys.stderr)
        return report_error(CLIError("no command given; choose one of " + ", ".join(COMMANDS)), ui.err)
    try:
        with _logging(ui, verbose=args.verbose):
            return int(args.run(args, ui))
    except (Exception, KeyboardInterrupt) as exc:
        return report_error(_from_input(exc, args), ui.err)


def _from_input(exc: BaseException, args: argparse.Namespace) -> BaseException:
    """A refused allocation is the inputs' size against this machine's memory: a user error naming them."""
    if isinstance(exc, WeightSurgeryError) or not is_out_of_memory(exc):
        return exc
    inputs = [str(getattr(args, name)) for name in ("src", "input", "a", "b") if getattr(args, name, None)]
    detail = str(exc).splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
    where = " and ".join(inputs) or "its input"
    return InputMemoryError(
        f"not enough memory to {args.command} {where} ({detail}); free memory or raise the process's limit "
        "(ulimit -v), or use a machine with more",
        path=where,
    )


@contextlib.contextmanager
def _logging(ui: UI, *, verbose: bool) -> Iterator[None]:
    """Route the library's log records and warnings to stderr for the length of one run.

    A message both logged and raised as a warning (the ``weights_only=False``
    notice) is printed once.
    """
    printed: set[str] = set()

    def emit(line: str) -> None:
        if line not in printed:
            printed.add(line)
            ui.err.print(line, markup=False, highlight=False, soft_wrap=True)

    handler = _Handler(emit)
    logger = logging.getLogger("weightsurgery")
    level = logging.ERROR if ui.quiet else logging.INFO if verbose else logging.WARNING
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        with warnings.catch_warnings():
            if ui.quiet:
                warnings.simplefilter("ignore")
            else:
                warnings.showwarning = lambda message, *_, **__: emit(f"warning: {message}")
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


class _Handler(logging.Handler):
    """Log records as ``level: message`` lines."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        super().__init__()
        self._emit = emit

    def emit(self, record: logging.LogRecord) -> None:
        self._emit(f"{record.levelname.lower()}: {record.getMessage()}")


def _version() -> str:
    try:
        return importlib.metadata.version("weightsurgery")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        from weightsurgery import __version__

        return __version__


if __name__ == "__main__":
    sys.exit(main())
