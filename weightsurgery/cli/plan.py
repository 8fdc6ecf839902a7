"""``weightsurgery plan SRC TARGET``: a dry run that prints what a transfer would do."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from weightsurgery.cli._options import add_source_options, add_target_options, add_transfer_options, check_output
from weightsurgery.cli._options import output_group, transfer_kwargs
from weightsurgery.cli._ui import UI
from weightsurgery.errors import CLIError

if TYPE_CHECKING:
    from weightsurgery._io import AtomicOutputs
    from weightsurgery.report import Report

__all__ = ["EPILOG", "HELP", "add_arguments", "run", "show_report", "write_plan_outputs"]

HELP = "dry run: print the plan (loaded, adapted, initialized, ambiguous, unused) and the coverage"
EPILOG = """\
examples:
  weightsurgery plan resnet50.pth timm:resnet50 --num-classes 10
  weightsurgery plan vit.safetensors timm:vit_small_patch16_224 --in-chans 1 --on-mismatch adapt
  weightsurgery plan ckpt.pth mypkg.models:build_net --kw width=64 --save-mapping mapping.json
  weightsurgery plan ckpt.pth timm:resnet18 --json | jq '.initialized'
  weightsurgery plan det.pth timm:resnet50 --rename '^backbone\\.body\\.' '' --exclude 'fc.*'

TARGET is a model factory: timm:NAME, torchvision:NAME or package.module:callable.
The model is built on the meta device; nothing is read or initialized.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="a file, folder, URL, hf-hub:org/repo or registry name")
    parser.add_argument("target", metavar="TARGET", help="timm:NAME, torchvision:NAME or package.module:callable")
    add_target_options(parser)
    add_transfer_options(parser)
    add_source_options(parser)
    parser.add_argument("--force", action="store_true", help="replace an existing --save-mapping or --html file")


def run(args: argparse.Namespace, ui: UI) -> int:
    from weightsurgery.transfer import transfer

    if args.save_mapping is not None and args.html is not None and args.save_mapping.resolve() == args.html.resolve():
        raise CLIError("--save-mapping and --html must name different files")
    check_output(args.save_mapping, force=args.force)
    check_output(args.html, force=args.force)
    kwargs = transfer_kwargs(args)
    report = transfer(args.src, args.target, dry_run=True, quiet=ui.quiet, **kwargs)
    with output_group(force=args.force) as group:  # --save-mapping and --html: both written, or neither
        write_plan_outputs(group, args, report)
    if args.html is not None:
        ui.note(f"wrote the report page {args.html}")
    show_report(report, ui, mapping=args.save_mapping)
    return 0


def write_plan_outputs(group: AtomicOutputs, args: argparse.Namespace, report: Report) -> None:
    """Add ``--save-mapping`` and ``--html`` (where given) to an output group (``plan`` and ``transfer``)."""
    from weightsurgery.report_html import render_html

    if args.save_mapping is not None:
        group.write_text(args.save_mapping, report.plan.to_json())
    if args.html is not None:
        group.write_text(args.html, render_html(report, target=args.target))


def show_report(report: Report, ui: UI, *, output: Path | None = None, mapping: Path | None = None) -> None:
    """Print a report: JSON under ``--json``, else the summary and the grouped table."""
    from weightsurgery.cli._render import report_table

    if ui.json:
        data = report.to_dict()
        data["ambiguous"] = report.ambiguous
        if output is not None:
            data["output"] = str(output)
        if mapping is not None:
            data["mapping_file"] = str(mapping)
        ui.emit_json(data)
        return
    ui.show(report.summary())  # report.warnings went to stderr as they were raised
    ui.show(report_table(report))
    if mapping is not None:
        ui.note(f"saved the mapping to {mapping}")
