"""In-memory sources: an ``nn.Module``, a state dict, or a nested checkpoint dict.

The tensors already live in memory, so the :class:`Checkpoint` built here only
indexes them: :meth:`Checkpoint.load` hands back the caller's own tensor
(detached), which apply copies into the target.

``Checkpoint.metadata`` keys set here:

* ``"tied"``: groups of state-dict keys that name one shared tensor (the same
  object, or the same view of the same bytes, as :mod:`weightsurgery.sources.shared`
  defines it), e.g. ``[["embed.weight", "head.weight"]]``.
* ``"extra_state"``: ``{key: value}`` for the ``<module>._extra_state`` entries a
  module's ``get_extra_state`` wrote (torch's protocol); they are not tensors to match.
* ``"scalars"`` (nested checkpoints): the root's string, number and boolean
  entries, e.g. ``{"epoch": 3, "arch": "resnet18"}``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from weightsurgery.errors import ModuleProtocolError
from weightsurgery.sources import nested
from weightsurgery.sources.checkpoint import Checkpoint, Origin, SourceKind, TensorMeta
from weightsurgery.sources.shared import shared_groups

__all__ = ["EXTRA_STATE", "from_mapping", "from_module", "from_tensors", "from_unwrapped"]

logger = logging.getLogger(__name__)

MAPPING_LOCATION = "<mapping>"

#: The state-dict name torch gives a module's ``get_extra_state()`` (``"norm._extra_state"``).
EXTRA_STATE = "_extra_state"


def from_module(module: nn.Module) -> Checkpoint:
    """Index a module's ``state_dict()`` (parameters and persistent buffers).

    Tied tensors appear under every name, as in ``state_dict()``; the groups
    are listed in ``metadata["tied"]``. What ``get_extra_state`` returns is
    kept in ``metadata["extra_state"]``.

    Args:
        module: the source model.

    Returns:
        A :class:`Checkpoint` of kind ``MODULE`` over the module's own tensors.

    Raises:
        ModuleProtocolError: a lazy module (``nn.LazyLinear``) whose parameters
            were never initialized; the error names it.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Embedding(4, 2), nn.Linear(2, 4, bias=False))
        >>> net[1].weight = net[0].weight
        >>> ckpt = from_module(net)
        >>> ckpt.keys(), ckpt.metadata["tied"]
        (['0.weight', '1.weight'], [['0.weight', '1.weight']])
    """
    state = module.state_dict(keep_vars=True)
    cls = type(module)
    origin = Origin(SourceKind.MODULE, f"{cls.__module__}.{cls.__qualname__}")
    return from_tensors(state, origin)


def from_mapping(mapping: Mapping[Any, Any], *, key: str | None) -> Checkpoint:
    """Index a flat state dict, or the state dict inside a nested training checkpoint.

    The nested case follows :mod:`weightsurgery.sources.nested`: the container
    path taken is ``origin.container`` and the others are
    ``origin.details["alternatives"]``.

    Args:
        mapping: ``{name: Tensor}`` or a training checkpoint dict such as
            ``{"state_dict": {...}, "epoch": 3}``.
        key: the container to take (``"model_ema"``, ``"model.module"``) or a key
            prefix to select and strip; ``None`` chooses automatically.

    Returns:
        A :class:`Checkpoint` of kind ``STATE_DICT``.

    Raises:
        AmbiguousContainerError: several state dicts share the best rank.
        UnknownContainerError: ``key`` names nothing in the mapping.
        EmptyCheckpointError: the mapping has entries but no tensor among them
            (``{}`` is an empty state dict, not an error).

    Example:
        >>> import torch
        >>> ckpt = from_mapping({"model": {"fc.weight": torch.ones(2, 2)}, "epoch": 1}, key=None)
        >>> ckpt.origin.container, ckpt.keys(), ckpt.metadata["scalars"]
        (('model',), ['fc.weight'], {'epoch': 1})
    """
    found = nested.unwrap(mapping, key=key, source=MAPPING_LOCATION)
    return from_unwrapped(found, mapping, Origin(SourceKind.STATE_DICT, MAPPING_LOCATION))


def from_unwrapped(
    found: nested.Unwrapped,
    root: Mapping[Any, Any],
    origin: Origin,
    *,
    metadata: Mapping[str, Any] | None = None,
    closer: Callable[[], None] | None = None,
    materialize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    owned: bool = False,
) -> Checkpoint:
    """Index the state dict :func:`nested.unwrap` found, recording the path in ``origin``.

    Args:
        found: what :func:`~weightsurgery.sources.nested.unwrap` returned for ``root``.
        root: the mapping as loaded, for its top-level scalars.
        origin: where it came from; its ``container`` and ``details`` are filled in here.
        metadata: extra ``Checkpoint.metadata``.
        closer: releases what holds the tensors (an open file).
        materialize, owned: see :func:`from_tensors`.

    Returns:
        A :class:`Checkpoint` over ``found.tensors``.

    Example:
        >>> import torch
        >>> from weightsurgery.sources import nested
        >>> root = {"ema": {"w": torch.ones(1)}}
        >>> from_unwrapped(nested.unwrap(root), root, Origin(SourceKind.STATE_DICT, "demo")).origin.describe()
        'state-dict demo [ema]'
    """
    meta = dict(metadata or {})
    if found.container:
        scalars = nested.scalars(root)
        if scalars:
            meta["scalars"] = scalars
    origin = dataclasses.replace(origin, container=found.container, details={**origin.details, **found.details()})
    tensors: dict[str, Any] = dict(found.tensors)
    if found.prefix is None and any(_is_extra_state(k) for k in found.ignored):
        chosen: Any = root
        for step in found.container:
            chosen = chosen[step]
        tensors.update({k: chosen[k] for k in found.ignored if _is_extra_state(k) and k in chosen})
    return from_tensors(tensors, origin, metadata=meta, closer=closer, materialize=materialize, owned=owned)


def from_tensors(
    tensors: Mapping[str, torch.Tensor],
    origin: Origin,
    *,
    metadata: Mapping[str, Any] | None = None,
    closer: Callable[[], None] | None = None,
    materialize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    owned: bool = False,
) -> Checkpoint:
    """Index tensors that are already loaded, or whose data a reader fetches (meta tensors of a file).

    Names that share one tensor are recorded in ``metadata["tied"]``;
    ``<module>._extra_state`` entries go to ``metadata["extra_state"]``.

    Args:
        tensors: name -> tensor; parameters are detached when loaded.
        origin: where they came from.
        metadata: ``Checkpoint.metadata``.
        closer: releases what holds the tensors; the index is dropped too.
        materialize: turns an indexed tensor into one with data when it is loaded
            (a lazily opened file's meta tensor); ``None`` loads the tensor itself.
        owned: ``materialize`` returns tensors that share memory with nothing (see :class:`Checkpoint`).

    Returns:
        A :class:`Checkpoint` whose loader looks the name up.

    Example:
        >>> import torch
        >>> ckpt = from_tensors({"w": torch.ones(2)}, Origin(SourceKind.STATE_DICT, "demo"))
        >>> ckpt.load("w").tolist()
        [1.0, 1.0]
    """
    meta = dict(metadata or {})
    extra = {k: v for k, v in tensors.items() if _is_extra_state(k)}
    index = {k: v for k, v in tensors.items() if k not in extra}
    if extra:
        meta["extra_state"] = extra if materialize is None else {k: _with_data(v, materialize) for k, v in extra.items()}
    for name, t in index.items():
        if nn.parameter.is_lazy(t) or not isinstance(t, torch.Tensor):
            owner = name.rpartition(".")[0] or "<root>"
            what = "an uninitialized lazy parameter" if isinstance(t, torch.Tensor) else f"a {type(t).__name__}"
            raise ModuleProtocolError(
                f"source {origin.describe()}: {name!r} is {what}, not a tensor with data; "
                + (f"run one forward pass through the lazy module {owner!r} (nn.LazyLinear...) to initialize it "
                   "before transferring from it" if isinstance(t, torch.Tensor) else "pass tensors only"),
                module=owner,
            )
    tied = shared_groups(index)
    if tied:
        meta["tied"] = tied
    metas = {name: TensorMeta.of(t) for name, t in index.items()}

    def load(name: str) -> torch.Tensor:
        tensor = index[name]
        return (tensor if materialize is None else materialize(tensor)).detach()

    def close() -> None:
        index.clear()
        if closer is not None:
            closer()

    logger.debug("indexed %d tensors from %s", len(index), origin.describe())
    return Checkpoint(metas, load, origin, metadata=meta, closer=close, owned=owned)


def _with_data(value: Any, materialize: Callable[[torch.Tensor], torch.Tensor], depth: int = 0) -> Any:
    """An extra state with each tensor in it (in dicts, lists, tuples) read from its file."""
    if isinstance(value, torch.Tensor):
        return materialize(value)
    if depth >= nested.MAX_DEPTH:
        return value
    if type(value) is dict:
        return {k: _with_data(v, materialize, depth + 1) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_with_data(v, materialize, depth + 1) for v in value)
    return value


def _is_extra_state(key: str) -> bool:
    return key == EXTRA_STATE or key.endswith("." + EXTRA_STATE)
