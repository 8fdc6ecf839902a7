"""One resolver: anything a user names becomes a lazy :class:`Checkpoint`.

The priority order is written down once, here, as :class:`SourceForm`:

1. ``CHECKPOINT``  a :class:`Checkpoint` already resolved, used as-is.
2. ``MODULE``      an ``nn.Module``: its state dict.
3. ``MAPPING``     a ``Mapping`` (a state dict, or a nested training checkpoint).
4. ``PATH``        an existing file or folder (``os.PathLike`` or ``str``).
5. ``URL``         ``http://`` or ``https://``.
6. ``HUB``         ``hf-hub:org/repo[@revision][/path/in/repo]``.
7. ``REGISTRY``    ``torchvision:NAME[.WEIGHTS]``, ``timm:NAME[.TAG]``, a torchvision
                   ``Weights`` enum member, or a bare model name (torchvision first, then timm).

A string that looks like a file (it has a checkpoint suffix or a path
separator) but does not exist is a :class:`SourceNotFoundError`, never a
registry lookup.
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from weightsurgery.errors import SourceNotFoundError
from weightsurgery.sources.checkpoint import Checkpoint

__all__ = ["SourceForm", "classify", "resolve"]

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".json",
                       ".keras", ".h5", ".hdf5", ".onnx", ".msgpack", ".npz", ".gguf")


class SourceForm(str, enum.Enum):
    """The forms a source can take, in resolution priority order."""

    CHECKPOINT = "checkpoint"
    MODULE = "module"
    MAPPING = "mapping"
    PATH = "path"
    URL = "url"
    HUB = "hub"
    REGISTRY = "registry"


def classify(src: Any) -> SourceForm:
    """Say which :class:`SourceForm` ``src`` takes, without touching the network.

    Example:
        >>> classify("hf-hub:timm/resnet18.a1_in1k").value
        'hub'
        >>> classify("resnet18").value
        'registry'
    """
    if isinstance(src, Checkpoint):
        return SourceForm.CHECKPOINT
    if isinstance(src, nn.Module):
        return SourceForm.MODULE
    if isinstance(src, Mapping):
        return SourceForm.MAPPING
    if isinstance(src, os.PathLike):
        return SourceForm.PATH
    if isinstance(src, str):
        if src.startswith(("http://", "https://")):
            return SourceForm.URL
        if src.startswith("hf-hub:"):
            return SourceForm.HUB
        if src.startswith(("torchvision:", "timm:")):
            return SourceForm.REGISTRY
        if os.path.exists(src) or _looks_like_path(src):
            return SourceForm.PATH
        return SourceForm.REGISTRY
    api = sys.modules.get("torchvision.models._api")  # a member of any WeightsEnum, torchvision's or a registered one
    if api is not None and isinstance(src, api.WeightsEnum):
        return SourceForm.REGISTRY
    raise TypeError(
        f"cannot resolve a source of type {type(src).__name__}: pass a path, URL, 'hf-hub:org/repo', "
        "a model name, a state dict or an nn.Module"
    )


def _looks_like_path(src: str) -> bool:
    return src.lower().endswith(CHECKPOINT_SUFFIXES) or os.sep in src or src.startswith(("~", "."))


def resolve(
    src: Any,
    *,
    key: str | None = None,
    weights_only: bool = True,
    revision: str | None = None,
    quiet: bool = False,
) -> Checkpoint:
    """Resolve ``src`` to a lazy :class:`Checkpoint`.

    Args:
        src: a path, URL, ``hf-hub:`` id, registry name, state dict, nested
            checkpoint dict, ``nn.Module`` or :class:`Checkpoint`.
        key: for nested checkpoints (local or downloaded), the container to
            take (``"model_ema"``) or a key prefix to select and strip.
        weights_only: refuse pickles that need arbitrary code (the default).
            ``False`` is an explicit, loud opt-in.
        revision: a hub revision (branch, tag or commit) for ``hf-hub:`` sources.
        quiet: no progress bars for downloads.

    Returns:
        A :class:`Checkpoint` whose tensors are read only on demand.

    Raises:
        SourceNotFoundError: the path, repo, file or revision does not exist.
        CorruptCheckpointError: the file is truncated or malformed.
        UnsafeCheckpointError: a pickle needs code and ``weights_only=True``.
        UnknownSourceError: no registry knows the name.

    Example:
        >>> import torch
        >>> resolve({"state_dict": {"w": torch.zeros(1)}}).origin.container
        ('state_dict',)
    """
    form = classify(src)
    if form is SourceForm.CHECKPOINT:
        return src
    if form in (SourceForm.MODULE, SourceForm.MAPPING):
        from weightsurgery.sources import memory

        if form is SourceForm.MODULE:
            return memory.from_module(src)
        return memory.from_mapping(src, key=key)
    if form is SourceForm.PATH:
        path = Path(os.path.expanduser(os.fspath(src)))
        if not path.exists():
            raise SourceNotFoundError(
                f"checkpoint {path} does not exist; check the path (relative paths start at {Path.cwd()})",
                source=path,
            )
        from weightsurgery.sources import files

        return files.open_path(path, key=key, weights_only=weights_only)
    if form is SourceForm.URL:
        from weightsurgery.sources import url

        return url.open_url(src, key=key, weights_only=weights_only, quiet=quiet)
    if form is SourceForm.HUB:
        from weightsurgery.sources import hub

        return hub.open_hub(src, key=key, weights_only=weights_only, revision=revision, quiet=quiet)
    from weightsurgery.sources import registry

    return registry.open_registry(src, key=key, weights_only=weights_only, quiet=quiet)
