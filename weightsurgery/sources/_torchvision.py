"""torchvision weights: find a ``Weights`` member by name, fetch it, describe it.

The file is fetched from ``weights.url`` into ``$TORCH_HOME/hub/checkpoints/<basename>``,
exactly where ``weights.get_state_dict()`` (``torch.hub.load_state_dict_from_url(...,
check_hash=True)``) puts it, with the same file-name hash check (torch.hub's own
pattern, since torch.hub checks these names), so either reuses the other's
download. It is then opened lazily (each tensor read as it is loaded), not loaded whole.
Unlike torch, a file already in that folder is verified against the hash in
its name too, once, and marked (see :mod:`~weightsurgery.sources.url`):
pre-seeding the folder with the real files is how an offline machine gets
weights, and a file that is not what its name says is evicted.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from weightsurgery.errors import UnknownSourceError
from weightsurgery.sources import url as url_source
from weightsurgery.sources.checkpoint import Checkpoint, SourceKind

__all__ = ["find_weights", "model_names", "model_of", "open_weights", "weights_metadata"]

logger = logging.getLogger(__name__)


def model_names() -> list[str]:
    """Every torchvision model name that has a weights enum."""
    from torchvision import models

    return list(models.list_models())


def find_weights(name: str, *, strict: bool) -> Any | None:
    """The ``Weights`` member ``name`` (``resnet18`` or ``resnet18.IMAGENET1K_V2``) stands for.

    Args:
        name: a model name, optionally with ``.WEIGHTS_NAME`` (``DEFAULT`` works).
        strict: raise, listing the valid weights, when the model exists but the weights name does not.

    Returns:
        The enum member, or ``None`` when torchvision has no such model (or, not strict, no such weights).

    Raises:
        UnknownSourceError: ``strict`` and the model exists without those weights.

    Example:
        >>> str(find_weights("resnet18.IMAGENET1K_V1", strict=True))
        'ResNet18_Weights.IMAGENET1K_V1'
    """
    from torchvision import models

    model, _, tag = name.partition(".")
    if model not in models.list_models():
        return None
    enum = models.get_model_weights(model)
    if not tag:
        return enum.DEFAULT
    try:
        return enum[tag]
    except KeyError:
        if not strict:
            return None
        valid = [member.name for member in enum]
        raise UnknownSourceError(
            f"torchvision model {model!r} has no weights {tag!r}; choose one of {', '.join(valid)} "
            f"(e.g. 'torchvision:{model}.{valid[-1]}'), or leave it out for the default",
            source=name,
            suggestions=[f"torchvision:{model}.{v}" for v in valid],
        ) from None


def model_of(weights: Any) -> str:
    """The model name a ``Weights`` member belongs to (``resnet18`` for ``ResNet18_Weights.X``)."""
    from torchvision import models

    for name in models.list_models():
        if models.get_model_weights(name) is type(weights):
            return name
    return type(weights).__name__.removesuffix("_Weights").lower()


def open_weights(
    weights: Any, *, key: str | None, weights_only: bool, quiet: bool, details: dict[str, Any]
) -> Checkpoint:
    """Fetch (or reuse) a ``Weights`` member's file and open it lazily.

    Args:
        weights: a torchvision ``Weights`` enum member.
        key: the container to take inside a nested checkpoint.
        weights_only: refuse pickles that need code.
        quiet: no progress bar.
        details: origin details to add (the resolution note).

    Returns:
        A checkpoint whose metadata carries ``label_names``, ``torchvision_weights`` and transforms.

    Raises:
        IntegrityError: the download does not match the hash in its file name.
        OfflineSourceError: offline and not in ``$TORCH_HOME/hub/checkpoints``.
    """
    download = url_source.download_to_cache(
        weights.url, quiet=quiet, key=key, weights_only=weights_only, torch_hub_names=True
    )
    ckpt = url_source.open_cached(download, key=key, weights_only=weights_only)
    ckpt.metadata.update(weights_metadata(weights))
    ckpt.origin = dataclasses.replace(
        ckpt.origin,
        kind=SourceKind.TORCHVISION,
        location=f"torchvision:{model_of(weights)}.{weights.name}",
        sha256=download.sha256,
        details={
            **ckpt.origin.details,
            "format": ckpt.origin.kind.value,
            "weights": str(weights),
            "url": weights.url,
            "downloaded": download.downloaded,
            **details,
        },
    )
    return ckpt


def weights_metadata(weights: Any) -> dict[str, Any]:
    """``Checkpoint.metadata`` entries for a torchvision ``Weights`` member.

    Example:
        >>> from torchvision.models import ResNet18_Weights
        >>> meta = weights_metadata(ResNet18_Weights.DEFAULT)
        >>> meta["label_names"][0], meta["num_classes"], meta["input_size"]
        ('tench', 1000, (3, 224, 224))
    """
    meta = dict(weights.meta)
    out: dict[str, Any] = {"torchvision_weights": str(weights)}
    categories = meta.pop("categories", None)
    if categories:
        out["label_names"] = list(categories)
        out["num_classes"] = len(categories)
    out["torchvision_meta"] = {k: v for k, v in meta.items() if not k.startswith("_docs")}
    try:
        transforms = weights.transforms()
    except TypeError:  # a preset that needs arguments: describe the factory instead
        out["transforms"] = repr(weights.transforms)
        return out
    out["transforms"] = str(transforms)
    for attr in ("mean", "std"):
        if hasattr(transforms, attr):
            out[attr] = tuple(getattr(transforms, attr))
    crop = getattr(transforms, "crop_size", None)
    if crop:
        out["input_size"] = (3, crop[0], crop[-1])
    return out
