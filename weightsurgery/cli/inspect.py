"""``weightsurgery inspect SRC``: what a checkpoint holds, read from its headers only."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from rich.table import Table

from weightsurgery.cli._options import add_source_options, source_kwargs
from weightsurgery.cli._ui import UI, add_row, human_bytes, human_count

if TYPE_CHECKING:
    from weightsurgery.sources import Checkpoint

__all__ = ["EPILOG", "HELP", "add_arguments", "describe", "run"]

HELP = "describe a checkpoint: format, container, grouped keys with shapes and dtypes, size, metadata"
EPILOG = """\
examples:
  weightsurgery inspect model.safetensors
  weightsurgery inspect last.ckpt --key state_dict_ema
  weightsurgery inspect hf-hub:timm/resnet18.a1_in1k
  weightsurgery inspect torchvision:resnet18 --json | jq '.num_params'

No tensor data is read: shapes and dtypes come from the file headers.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="a file, folder, URL, hf-hub:org/repo or registry name")
    add_source_options(parser)


def run(args: argparse.Namespace, ui: UI) -> int:
    from weightsurgery.cli._render import tensor_rows, tensor_table
    from weightsurgery.sources import resolve

    with resolve(args.src, quiet=ui.quiet, **source_kwargs(args)) as ckpt:
        info = describe(ckpt)
        if ui.json:
            ui.emit_json(info)
            return 0
        ui.show(_summary(ckpt, info))
        ui.show(tensor_table(tensor_rows(ckpt.metas)))
    return 0


def describe(ckpt: Checkpoint) -> dict[str, Any]:
    """Everything ``inspect`` reports, as JSON-ready data.

    Args:
        ckpt: a resolved checkpoint; no tensor data is read.

    Returns:
        ``source`` (the origin), ``num_tensors``, ``num_params``, ``nbytes``,
        ``dtypes`` (dtype -> count), ``metadata`` and ``tensors`` (key -> shape, dtype).

    Example:
        >>> import torch
        >>> from weightsurgery.sources import resolve
        >>> info = describe(resolve({"w": torch.zeros(2, 3), "b": torch.zeros(2)}))
        >>> info["num_params"], info["dtypes"], info["tensors"]["w"]
        (8, {'float32': 2}, {'shape': [2, 3], 'dtype': 'float32'})
    """
    dtypes = Counter(_dtype(m.dtype) for m in ckpt.metas.values())
    return {
        "source": ckpt.origin.to_dict(),
        "num_tensors": len(ckpt),
        "num_params": ckpt.num_params,
        "nbytes": ckpt.nbytes,
        "dtypes": dict(dtypes.most_common()),
        "metadata": ckpt.origin.to_dict()["details"] | _jsonable_metadata(ckpt.metadata),
        "tensors": {k: {"shape": list(m.shape), "dtype": _dtype(m.dtype)} for k, m in ckpt.metas.items()},
    }


def _summary(ckpt: Checkpoint, info: dict[str, Any]) -> Table:
    origin = ckpt.origin
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    add_row(grid, "source", f"{origin.kind.value} {origin.location}")
    if origin.files and list(origin.files) != [origin.location]:
        add_row(grid, "files", "\n".join(origin.files))
    add_row(grid, "container", " → ".join(origin.container) if origin.container else "(flat state dict)")
    if origin.revision:
        add_row(grid, "revision", origin.revision)
    if origin.sha256:
        add_row(grid, "sha256", origin.sha256)
    dtypes = ", ".join(f"{d} ×{n}" for d, n in info["dtypes"].items())
    add_row(grid, "tensors", f"{info['num_tensors']} ({dtypes})")
    add_row(grid, "size", f"{human_count(info['num_params'])} elements, {human_bytes(info['nbytes'])}")
    for key, value in info["metadata"].items():
        add_row(grid, key, _short(value))
    return grid


def _dtype(dtype: object) -> str:
    return str(dtype).removeprefix("torch.")


def _jsonable_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    kept = {str(k): v for k, v in metadata.items() if v not in ({}, [], None, "")}
    return json.loads(json.dumps(kept, default=str))


def _short(value: Any, limit: int = 400) -> str:
    if isinstance(value, dict):
        text = ", ".join(f"{k}={v}" for k, v in value.items())
    elif isinstance(value, list):
        text = ", ".join(map(str, value))
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
