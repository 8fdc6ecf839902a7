"""Registry names: ``torchvision:NAME[.WEIGHTS]``, ``timm:NAME[.TAG]``, bare names, ``Weights`` members.

A bare name is looked up in a fixed order, written down once in
:data:`BARE_NAME_ORDER`: **torchvision first** (the model's default weights, or
``name.WEIGHTS``), **then timm** (its default pretrained tag, or ``name.tag``).
When both registries know the name, the checkpoint's ``origin.details["resolution"]``
says which one was taken and how to ask for the other. A prefix forces one
registry. A name neither knows raises :class:`UnknownSourceError` with the
closest real names.
"""

from __future__ import annotations

import difflib
import enum
import logging
from typing import Any

from weightsurgery.errors import UnknownSourceError
from weightsurgery.sources import _timm, _torchvision
from weightsurgery.sources.checkpoint import Checkpoint

__all__ = ["BARE_NAME_ORDER", "Registry", "open_registry", "suggest"]

logger = logging.getLogger(__name__)


class Registry(str, enum.Enum):
    """A model registry, named by its source prefix."""

    TORCHVISION = "torchvision"
    TIMM = "timm"


BARE_NAME_ORDER: tuple[Registry, ...] = (Registry.TORCHVISION, Registry.TIMM)


def open_registry(src: Any, *, key: str | None, weights_only: bool, quiet: bool) -> Checkpoint:
    """Resolve a registry name or a torchvision ``Weights`` member to a lazy :class:`Checkpoint`.

    Args:
        src: ``"resnet18"``, ``"torchvision:resnet18.IMAGENET1K_V2"``, ``"timm:resnet18.a1_in1k"``,
            or a member such as ``ResNet18_Weights.IMAGENET1K_V1``.
        key: the container to take inside a nested checkpoint.
        weights_only: refuse pickles that need code.
        quiet: no progress bars.

    Returns:
        A checkpoint with the registry's metadata (``label_names``, and from timm
        ``classifier`` and ``first_conv``).

    Raises:
        UnknownSourceError: no registry knows the name; ``suggestions`` holds the closest ones.
        OfflineSourceError: offline and the weights are not cached.

    Example:
        >>> from weightsurgery.sources import resolve
        >>> ckpt = resolve("resnet18")  # doctest: +SKIP
        >>> ckpt.origin.details["resolution"]  # doctest: +SKIP
        "bare name 'resnet18': took torchvision's ResNet18_Weights.IMAGENET1K_V1 ..."
    """
    options = {"key": key, "weights_only": weights_only, "quiet": quiet}
    if not isinstance(src, str):
        return _torchvision.open_weights(src, details={}, **options)
    prefix, sep, name = src.partition(":")
    if sep:
        registry = _registry(prefix, src)
        found = _find(registry, name, strict=True)
        if found is None:
            raise _unknown(src, name, (registry,))
        return _open(registry, found, details={}, **options)
    hits = {registry: _find(registry, src, strict=False) for registry in BARE_NAME_ORDER}
    taken = next((registry for registry in BARE_NAME_ORDER if hits[registry] is not None), None)
    if taken is None:
        raise _unknown(src, src, BARE_NAME_ORDER)
    note = _resolution_note(src, taken, hits)
    logger.info(note)
    return _open(taken, hits[taken], details={"resolution": note}, **options)


def suggest(name: str, registries: tuple[Registry, ...] = BARE_NAME_ORDER, *, n: int = 5) -> list[str]:
    """The closest real names, as ready-to-use sources (``"timm:resnet18"``).

    Example:
        >>> suggest("resnet81", (Registry.TORCHVISION,))[:1]
        ['torchvision:resnet18']
    """
    scored: list[tuple[float, str]] = []
    for registry in registries:
        names = _torchvision.model_names() if registry is Registry.TORCHVISION else _timm.model_names()
        for match in difflib.get_close_matches(name, names, n=n, cutoff=0.6):
            score = difflib.SequenceMatcher(None, name, match).ratio()
            scored.append((score, f"{registry.value}:{match}"))
    scored.sort(key=lambda item: -item[0])
    return [source for _, source in scored[:n]]


def _registry(prefix: str, src: str) -> Registry:
    try:
        return Registry(prefix)
    except ValueError:
        valid = ", ".join(f"'{r.value}:'" for r in Registry)
        raise UnknownSourceError(f"unknown registry {prefix!r} in {src!r}; use one of {valid}", source=src) from None


def _find(registry: Registry, name: str, *, strict: bool) -> Any | None:
    if registry is Registry.TORCHVISION:
        return _torchvision.find_weights(name, strict=strict)
    return _timm.find_cfg(name)


def _open(registry: Registry, found: Any, *, details: dict[str, Any], **options: Any) -> Checkpoint:
    if registry is Registry.TORCHVISION:
        return _torchvision.open_weights(found, details=details, **options)
    return _timm.open_cfg(found, details=details, **options)


def _resolution_note(src: str, taken: Registry, hits: dict[Registry, Any]) -> str:
    others = [r for r in BARE_NAME_ORDER if r is not taken and hits[r] is not None]
    text = f"bare name {src!r}: took {taken.value}'s {_describe(taken, hits[taken])}"
    if others:
        listed = "; ".join(f"{r.value} has {_describe(r, hits[r])} too ('{r.value}:{src}')" for r in others)
        return f"{text} ({taken.value} is looked up first); {listed}"
    missing = [r.value for r in BARE_NAME_ORDER if r is not taken]
    return f"{text}; {', '.join(missing)} has no such model"


def _describe(registry: Registry, found: Any) -> str:
    if registry is Registry.TORCHVISION:
        return str(found)
    return f"{found.architecture}.{found.tag}" if found.tag else str(found.architecture)


def _unknown(src: str, name: str, registries: tuple[Registry, ...]) -> UnknownSourceError:
    suggestions = suggest(name, registries)
    where = " or ".join(r.value for r in registries)
    hint = f"did you mean {', '.join(suggestions)}?" if suggestions else "check the spelling"
    return UnknownSourceError(
        f"{src!r} is not a path, URL, hub id or {where} model name with pretrained weights; {hint} "
        "(list them with torchvision.models.list_models() or timm.list_models(pretrained=True))",
        source=src,
        suggestions=suggestions,
    )
