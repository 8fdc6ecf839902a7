"""``weightsurgery diff A B``: keys only on one side, shape and dtype changes, value differences."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.table import Table

from weightsurgery._grouping import group_keys
from weightsurgery.cli._options import add_source_options
from weightsurgery.cli._ui import UI, add_row, shape_text
from weightsurgery.errors import CLIError

if TYPE_CHECKING:
    from weightsurgery.diff import CheckpointDiff

__all__ = ["EPILOG", "HELP", "add_arguments", "run"]

HELP = "compare two checkpoints of any format, one tensor pair at a time"
EPILOG = """\
examples:
  weightsurgery diff before.safetensors after.safetensors
  weightsurgery diff model.pth model.safetensors --atol 1e-6
  weightsurgery diff last.ckpt best.ckpt --key-a state_dict_ema --key-b state_dict_ema --json

Values are compared in float64; "rel" is |a-b|_2 / max(|a|_2, |b|_2).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="the first checkpoint")
    parser.add_argument("b", metavar="B", help="the second checkpoint")
    parser.add_argument("--key-a", metavar="K", help="container to take from A if it is nested")
    parser.add_argument("--key-b", metavar="K", help="container to take from B if it is nested")
    parser.add_argument("--atol", type=float, default=0.0, metavar="F",
                        help="values within this absolute difference count as equal (default 0)")
    add_source_options(parser, key=False)


def run(args: argparse.Namespace, ui: UI) -> int:
    from weightsurgery.diff import diff_checkpoints

    if not args.atol >= 0:  # nan too
        raise CLIError(f"--atol {args.atol} must be a number of 0 or more, e.g. --atol 1e-6")
    with ui.progress("comparing") as update:
        result = diff_checkpoints(
            args.a, args.b, key_a=args.key_a, key_b=args.key_b, atol=args.atol,
            weights_only=not args.unsafe_pickle, quiet=ui.quiet, progress=update,
        )
    if ui.json:
        ui.emit_json(result.to_dict())
        return 0
    ui.show(f"A: {result.a}\nB: {result.b}")
    if result.identical:
        ui.show(f"identical: {len(result.equal)} tensors, same keys, shapes, dtypes and values")
        return 0
    ui.show(_table(result))
    ui.show(
        f"{len(result.equal)} equal, {len(result.values)} differ in value, {len(result.shapes)} in shape, "
        f"{len(result.dtypes)} in dtype; {len(result.only_a)} only in A, {len(result.only_b)} only in B"
    )
    return 0


def _table(result: CheckpointDiff) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("difference", no_wrap=True)
    table.add_column("keys", overflow="fold")
    table.add_column("A → B", overflow="fold")
    for pattern in group_keys(result.only_a):
        add_row(table, "only in A", pattern, "")
    for pattern in group_keys(result.only_b):
        add_row(table, "only in B", pattern, "")
    for key, (sa, sb) in result.shapes.items():
        add_row(table, "shape", key, f"{shape_text(sa)} → {shape_text(sb)}")
    for key, (da, db) in result.dtypes.items():
        add_row(table, "dtype", key, f"{da} → {db}")
    for key, d in result.values.items():
        add_row(table, "value", key, f"max |a-b| {d.max_abs:.3g}, rel {d.rel:.3g}; {d.differing} of {d.numel} differ")
    return table
