"""``weightsurgery convert IN OUT``: torch pickle <-> safetensors, shared tensors and metadata kept."""

from __future__ import annotations

import argparse
from pathlib import Path

from weightsurgery.cli._options import add_source_options, check_output, source_kwargs
from weightsurgery.cli._ui import UI, human_bytes
from weightsurgery.errors import CLIError

__all__ = ["EPILOG", "HELP", "add_arguments", "run"]

HELP = "convert between torch pickles (.pt .pth .bin .ckpt) and .safetensors, both ways"
EPILOG = """\
examples:
  weightsurgery convert model.pth model.safetensors
  weightsurgery convert last.ckpt --key state_dict_ema ema.safetensors
  weightsurgery convert model.safetensors model.pth --force
  weightsurgery convert torchvision:resnet18 resnet18.safetensors

The output format follows OUT's suffix. Tied tensors are written once to
safetensors and recorded in its metadata as {alias: kept}; converting back
restores them as one shared tensor. Metadata travels both ways: safetensors
metadata becomes a "__metadata__" entry of the pickle (only when there is
some to keep) and the reverse. Pickles that need code are refused unless
--unsafe-pickle.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="a file, folder, URL, hf-hub:org/repo or registry name")
    parser.add_argument("output", metavar="OUT", type=Path, help="the file to write; its suffix picks the format")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    add_source_options(parser)


def run(args: argparse.Namespace, ui: UI) -> int:
    from weightsurgery.convert import convert_checkpoint, output_format

    try:
        output_format(args.output)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    check_output(args.output, force=args.force)
    with ui.progress("reading") as update:
        done = convert_checkpoint(
            args.input, args.output, overwrite=args.force, quiet=ui.quiet, progress=update, **source_kwargs(args)
        )
    if ui.json:
        ui.emit_json(done.to_dict())
        return 0
    tensors = f"{done.num_tensors} tensor" + ("" if done.num_tensors == 1 else "s")
    ui.show(f"{done.source} → {done.output} ({done.format}, {tensors}, {human_bytes(done.output.stat().st_size)})")
    if done.aliases:
        ui.show("shared: " + ", ".join(f"{a} = {k}" for a, k in done.aliases.items()))
    if done.cloned:
        ui.show("copied (overlapping memory): " + ", ".join(done.cloned))
    return 0
