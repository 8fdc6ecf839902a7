"""``weightsurgery transfer SRC TARGET -o OUT.safetensors``: transfer, then write the target's full state."""

from __future__ import annotations

import argparse
from pathlib import Path

from weightsurgery.cli._options import add_source_options, add_target_options, add_transfer_options, check_output
from weightsurgery.cli._options import output_group, transfer_kwargs
from weightsurgery.cli._ui import UI, human_bytes
from weightsurgery.cli.plan import show_report, write_plan_outputs
from weightsurgery.errors import CLIError

__all__ = ["EPILOG", "HELP", "add_arguments", "run"]

HELP = "transfer SRC into TARGET and write the target's full state dict as safetensors"
EPILOG = """\
examples:
  weightsurgery transfer resnet50.pth timm:resnet50 --num-classes 10 -o out.safetensors
  weightsurgery transfer last.ckpt --key state_dict_ema timm:convnext_tiny -o out.safetensors \\
      --init 'trunc_normal(std=0.02)' --rule 'head.*=zeros' --seed 0 --report-json report.json
  weightsurgery transfer ckpt.pth mypkg.models:build_net --mapping mapping.json -o out.safetensors
  weightsurgery transfer ckpt.pth timm:resnet18 -o out.safetensors --strict --min-coverage 0.99

The outputs are written atomically and together: each is the old file or the
complete new one, never a half-written file, and -o, --report-json,
--save-mapping and --html all appear or none does. An existing output is replaced only
with --force: that is checked before any work is done and again at the final
rename, so a file that appears meanwhile is kept. The output folder must
exist. Tied weights are written once and recorded in the safetensors metadata
as {alias: kept}.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="a file, folder, URL, hf-hub:org/repo or registry name")
    parser.add_argument("target", metavar="TARGET", help="timm:NAME, torchvision:NAME or package.module:callable")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.safetensors",
                        help="where to write the target's state dict (safetensors)")
    parser.add_argument("--report-json", type=Path, metavar="FILE", help="also write the full report as JSON")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    add_target_options(parser)
    add_transfer_options(parser)
    add_source_options(parser)


def run(args: argparse.Namespace, ui: UI) -> int:
    from weightsurgery.convert import write_safetensors
    from weightsurgery.transfer import transfer

    if args.output.suffix != ".safetensors":
        suggestion = args.output.with_suffix(".safetensors")
        raise CLIError(f"-o {args.output}: the output is written as safetensors; name it like {suggestion}")
    outputs = [p for p in (args.output, args.report_json, args.save_mapping, args.html) if p is not None]
    if len({p.resolve() for p in outputs}) < len(outputs):
        raise CLIError("-o, --report-json, --save-mapping and --html must name different files")
    for path in outputs:
        check_output(path, force=args.force)
    kwargs = transfer_kwargs(args)
    with ui.progress("transferring") as update:
        report = transfer(args.src, args.target, quiet=ui.quiet, progress=update, **kwargs)
    model = report.model  # type: ignore[attr-defined]
    metadata = {"weightsurgery.source": report.origin.describe(), "weightsurgery.target": args.target}
    with output_group(force=args.force) as group:  # -o, --report-json, --save-mapping, --html: all, or none
        write_safetensors(model.state_dict(), args.output, metadata=metadata, outputs=group)
        if args.report_json is not None:
            group.write_text(args.report_json, report.to_json() + "\n")
        write_plan_outputs(group, args, report)
    if args.html is not None:
        ui.note(f"wrote the report page {args.html}")
    show_report(report, ui, output=args.output, mapping=args.save_mapping)
    ui.note(f"wrote {args.output} ({human_bytes(args.output.stat().st_size)})")
    return 0
