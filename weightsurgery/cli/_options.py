"""Argument groups shared by several commands, and their translation into library arguments.

Each ``add_*`` function adds one group of flags to a subcommand's parser; the
matching function turns the parsed flags into the keyword arguments of
:func:`weightsurgery.transfer` and friends, raising :class:`CLIError` for
flags that contradict each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from weightsurgery._io import AtomicOutputs, check_destination
from weightsurgery.errors import CLIError, TargetError

FORCE_FLAG = "--force"

__all__ = [
    "add_source_options",
    "add_target_options",
    "add_transfer_options",
    "check_output",
    "output_group",
    "source_kwargs",
    "target_kwargs",
    "transfer_kwargs",
]


def add_source_options(parser: argparse.ArgumentParser, *, key: bool = True) -> None:
    """``--key``, ``--unsafe-pickle``, ``--revision``: how to read a source."""
    group = parser.add_argument_group("source")
    if key:
        group.add_argument("--key", metavar="K", help="container or key prefix to take from a nested checkpoint "
                           "(e.g. model_ema, state_dict.model)")
    group.add_argument("--unsafe-pickle", action="store_true",
                       help="allow pickles that run code when loaded (torch.load weights_only=False); "
                       "only for files you trust")
    group.add_argument("--revision", metavar="REV", help="branch, tag or commit for hf-hub: sources")


def source_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``key``, ``weights_only`` and ``revision`` for :func:`weightsurgery.sources.resolve`."""
    return {
        "key": getattr(args, "key", None),
        "weights_only": not args.unsafe_pickle,
        "revision": args.revision,
    }


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """``--num-classes``, ``--in-chans``, ``--kw key=value``: the TARGET factory's arguments."""
    group = parser.add_argument_group("target factory arguments")
    group.add_argument("--num-classes", type=int, metavar="N", help="passed to the factory as num_classes=N")
    group.add_argument("--in-chans", type=int, metavar="N", help="passed to the factory as in_chans=N (timm)")
    group.add_argument("--kw", action="append", default=[], metavar="KEY=VALUE",
                       help="any other factory keyword argument; VALUE is read as a Python literal "
                       "(10, 0.1, True, (224, 224)) or else a string; repeatable")


def target_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The factory keyword arguments the flags name.

    Raises:
        CLIError: a ``--kw`` is malformed or repeats ``--num-classes``/``--in-chans``.
    """
    from weightsurgery.factory import parse_kwargs

    try:
        kwargs = parse_kwargs(args.kw)
    except TargetError as exc:
        raise CLIError(f"--kw: {exc}") from exc
    for flag, name in (("--num-classes", "num_classes"), ("--in-chans", "in_chans")):
        value = getattr(args, name)
        if value is None:
            continue
        if name in kwargs and kwargs[name] != value:
            raise CLIError(f"{flag} {value} contradicts --kw {name}={kwargs[name]!r}; give it once")
        kwargs[name] = value
    return kwargs


def add_transfer_options(parser: argparse.ArgumentParser) -> None:
    """Options that shape the plan: init, rules, recipe, mismatch policy, strictness, a saved mapping."""
    group = parser.add_argument_group("transfer")
    group.add_argument("--init", metavar="SPEC",
                       help="init for keys the source does not fill, e.g. 'trunc_normal(std=0.02)', 'zeros', "
                       "'reset' (each module's own init); default: they keep the values the model's constructor "
                       "gives them")
    group.add_argument("--rule", action="append", default=[], metavar="PATTERN=SPEC",
                       help="init rule for target keys matching PATTERN (glob), e.g. 'head.*=zeros'; "
                       "first match wins, --init is the catch-all; repeatable")
    group.add_argument("--rename", nargs=2, action="append", default=[], metavar=("PATTERN", "REPLACEMENT"),
                       help="regex rule on source keys (re.sub), applied in order, e.g. --rename '^backbone\\.' ''; "
                       "repeatable")
    group.add_argument("--key-map", nargs=2, action="append", default=[], metavar=("TARGET_KEY", "SOURCE_KEY"),
                       help="fill TARGET_KEY exactly from SOURCE_KEY, before any matching, e.g. "
                       "--key-map head.weight fc.weight; repeatable")
    group.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                       help="never load target keys matching PATTERN (glob, or re:REGEX); they are left like any "
                       "key the source does not fill, e.g. --exclude 'fc.*'; repeatable")
    group.add_argument("--recipe", metavar="FILE", type=Path,
                       help="a recipe (JSON/YAML) with rename, key_map, adapt and init rules")
    group.add_argument("--mapping", metavar="FILE", type=Path,
                       help="re-apply a mapping saved with --save-mapping instead of matching again")
    group.add_argument("--save-mapping", metavar="FILE", type=Path, help="save the plan as JSON, to edit or re-apply")
    group.add_argument("--html", metavar="FILE", type=Path,
                       help="also write the report as one self-contained HTML page (both module trees, every tensor)")
    group.add_argument("--seed", type=int, metavar="N",
                       help="seed for the inits that run (reproducible leftovers); it does not re-initialize anything")
    group.add_argument("--on-mismatch", choices=("init", "adapt", "error"), default="init",
                       help="a name match whose shapes differ: initialize it (default), adapt it, or fail")
    group.add_argument("--strict", action="store_true",
                       help="fail if any target key would be initialized or any source key unused")
    group.add_argument("--min-coverage", type=float, metavar="F",
                       help="fail if less than this fraction (0..1) of the target's parameters would load")


def transfer_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for :func:`weightsurgery.transfer` from the transfer and source flags.

    Raises:
        CLIError: a ``--rule`` is not ``PATTERN=SPEC``, a ``--key-map`` target is given twice, or
            ``--min-coverage`` is outside 0..1.
    """
    init: Any = args.init
    if args.rule:
        rules: dict[str, str] = {}
        for item in args.rule:
            pattern, sep, spec = item.partition("=")
            if not sep or not pattern.strip() or not spec.strip():
                raise CLIError(f"--rule {item!r} is not PATTERN=SPEC; write it like --rule 'head.*=zeros'")
            rules[pattern.strip()] = spec.strip()
        if args.init is not None:
            rules["*"] = args.init
        init = rules
    if args.min_coverage is not None and not 0.0 <= args.min_coverage <= 1.0:
        raise CLIError(f"--min-coverage {args.min_coverage} must lie between 0 and 1, e.g. --min-coverage 0.9")
    key_map: dict[str, str] = {}
    for target, source in args.key_map:
        if key_map.get(target, source) != source:
            raise CLIError(f"--key-map {target} is given twice ({key_map[target]}, {source}); give it once")
        key_map[target] = source
    return {
        "rename": [tuple(pair) for pair in args.rename],
        "key_map": key_map,
        "exclude": list(args.exclude),
        "init": init,
        "seed": args.seed,
        "recipe": args.recipe,
        "plan": args.mapping,
        "on_mismatch": args.on_mismatch,
        "strict": args.strict,
        "min_coverage": args.min_coverage,
        "target_kwargs": target_kwargs(args),
        **source_kwargs(args),
    }


def check_output(path: Path | None, *, force: bool) -> None:
    """Refuse an output that cannot be written, before any work is done.

    The same check runs again, atomically, when the file is renamed into place
    (:class:`weightsurgery._io.AtomicOutputs`): a file that appears meanwhile is not replaced.

    Raises:
        OutputExistsError: ``path`` exists (a dangling symlink too) and ``force`` is false.
        OutputWriteError: ``path`` is a folder, or its folder does not exist (it is never created).
    """
    if path is not None:
        check_destination(path, overwrite=force, flag=FORCE_FLAG)


def output_group(*, force: bool) -> AtomicOutputs:
    """The group every file a command writes goes through: all of them appear at the end, or none."""
    return AtomicOutputs(overwrite=force, flag=FORCE_FLAG)
