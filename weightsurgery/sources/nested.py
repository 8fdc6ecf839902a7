"""Unwrap a nested training checkpoint to the flat ``{str: Tensor}`` state dict inside.

Training scripts wrap their weights: Lightning saves ``{"state_dict": ...,
"epoch": ..., "optimizer_states": [...]}``, timm ``{"state_dict": ...,
"state_dict_ema": ...}``, DDP-era scripts ``{"model": {"module": ...}}``.
:func:`unwrap` finds the state dict and records the path it took. Key prefixes
such as Lightning's ``model.`` are kept: the matcher strips wrapper prefixes per
subtree.

The choice rule:

1. A *state dict* is a mapping that holds tensors under string keys and in
   which no value is a mapping that (recursively) holds tensors. Its other values
   (step counters, ``_metadata``, strings) are ignored, with a debug log. An
   empty mapping is an empty state dict; a non-empty one without any tensor is
   not a checkpoint of weights and raises
   :class:`~weightsurgery.errors.EmptyCheckpointError`.
2. Any other mapping is a *container*. Its string-keyed sub-mappings are searched
   recursively for state dicts, except training state that never holds weights
   (:data:`IGNORED_KEYS`: optimizer, schedulers, callbacks, scaler, loops).
   Lists are not searched. Tensors that a container holds beside its nested state
   dicts are ignored, with a debug log.
   Optimizer state is never a candidate, whatever its key
   (:mod:`~weightsurgery.sources.optim_state`): a mapping in
   ``Optimizer.state_dict()``'s layout is not searched, one parameter's slots
   (``exp_avg``, ``momentum_buffer``...) are not a state dict, and flattened
   moments beside the weights (``state.0.exp_avg``, ``optimizer.state.0...``)
   are dropped from the chosen state dict and listed in ``optimizer_state``.
3. Every state dict found is a *candidate*, ranked by its path (:class:`Rank`):
   ``REGULAR`` when each step is a known wrapper key (:data:`WRAPPER_KEYS`),
   ``EMA`` when the steps are known and one is an EMA key (:data:`EMA_KEYS`),
   ``OTHER`` when a step is any other name. The best rank wins and the others
   are kept as alternatives; a lone candidate wins whatever its rank. Two or more
   candidates sharing the best rank (``{"generator": ..., "discriminator": ...}``)
   raise :class:`~weightsurgery.errors.AmbiguousContainerError`.
4. ``key=`` overrides the choice. It names a top-level key or a dotted path
   (``"model.module"``); the state dict is then found below it by the same rule.
   A ``key`` that names no container but is a key prefix of exactly one candidate
   (``key="model_ema"`` with keys like ``model_ema.fc.weight``) selects the keys
   under that prefix and strips it. Any other ``key`` raises
   :class:`~weightsurgery.errors.UnknownContainerError` listing what exists.

The search of rules 1 to 3 (what a state dict is, what is searched, the ranks)
lives in :mod:`~weightsurgery.sources.nested_search`; its names are
re-exported here. This module chooses, applies ``key=`` and words the errors.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from weightsurgery.errors import AmbiguousContainerError, EmptyCheckpointError, UnknownContainerError
from weightsurgery.sources.nested_search import (
    EMA_KEYS,
    IGNORED_KEYS,
    MAX_DEPTH,
    WRAPPER_KEYS,
    Candidate,
    Rank,
    find_candidates,
    split_entries,
)

__all__ = [
    "EMA_KEYS",
    "IGNORED_KEYS",
    "MAX_DEPTH",
    "WRAPPER_KEYS",
    "Rank",
    "Unwrapped",
    "scalars",
    "select_prefix",
    "unwrap",
]

logger = logging.getLogger(__name__)

_MAX_LISTED = 20


@dataclass(frozen=True)
class Unwrapped:
    """The state dict :func:`unwrap` chose, and how it got there.

    Attributes:
        tensors: the flat state dict, in the order the checkpoint stores it.
        container: the keys walked from the root, ``()`` for a flat state dict.
            A ``key=`` used as a key prefix is its last step.
        alternatives: dotted paths of the other state dicts that were not chosen.
        ignored: keys of non-tensor entries dropped from the chosen state dict.
        prefix: the key prefix that was selected and stripped (``"model_ema."``), if any.
        optimizer_state: flattened optimizer-state keys dropped from the chosen state dict.
    """

    tensors: dict[str, torch.Tensor]
    container: tuple[str, ...] = ()
    alternatives: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    prefix: str | None = None
    optimizer_state: tuple[str, ...] = ()

    def details(self) -> dict[str, object]:
        """The non-empty facts worth reporting, for ``Origin.details``.

        Keys: ``"alternatives"`` (dotted container paths not chosen),
        ``"ignored"`` (non-tensor entries dropped), ``"key_prefix"`` (the
        stripped prefix) and ``"optimizer_state"`` (how many flattened
        optimizer-state tensors were dropped).

        Example:
            >>> Unwrapped({}, ("model",), alternatives=("model_ema",)).details()
            {'alternatives': ['model_ema']}
        """
        out: dict[str, object] = {}
        if self.alternatives:
            out["alternatives"] = list(self.alternatives)
        if self.ignored:
            out["ignored"] = list(self.ignored)
        if self.prefix:
            out["key_prefix"] = self.prefix
        if self.optimizer_state:
            out["optimizer_state"] = len(self.optimizer_state)
        return out


def unwrap(obj: Mapping[object, object], *, key: str | None = None, source: object = None) -> Unwrapped:
    """Find the flat state dict inside a (possibly nested) checkpoint mapping.

    Args:
        obj: a state dict or a nested training checkpoint, as loaded.
        key: the container to take (``"model_ema"``, ``"model.module"``) or a key
            prefix to select and strip; ``None`` chooses by the module's rule.
        source: what ``obj`` came from, for messages (a path, ``"<mapping>"``).

    Returns:
        The chosen state dict with its container path and the alternatives.

    Raises:
        AmbiguousContainerError: several state dicts share the best rank.
        UnknownContainerError: ``key`` names nothing in ``obj``.
        EmptyCheckpointError: ``obj`` has entries but no tensor among them.
        CorruptCheckpointError: ``obj`` nests mappings deeper than :data:`MAX_DEPTH`.

    Example:
        >>> import torch
        >>> ckpt = {"model": {"w": torch.ones(1)}, "model_ema": {"w": torch.zeros(1)}, "epoch": 3}
        >>> found = unwrap(ckpt)
        >>> found.container, found.alternatives
        (('model',), ('model_ema',))
        >>> unwrap(ckpt, key="model_ema").tensors["w"].item()
        0.0
    """
    where = "the mapping" if source is None else str(source)
    candidates = find_candidates(obj, (), source)
    if key is None:
        return _choose(candidates, obj, (), where, source=source)
    path = _walk(obj, key)
    if path is not None:
        node = _get(obj, path)
        if isinstance(node, Mapping):
            found = _choose(find_candidates(node, path, source), node, path, where, source=source, under=key)
            logger.debug("key=%r selected container %s in %s", key, ".".join(found.container), where)
            others = tuple(c.dotted for c in candidates if c.path != found.container)
            return dataclasses.replace(found, alternatives=others)
    prefix = key + "."
    hits = [c for c in candidates if any(isinstance(k, str) and k.startswith(prefix) for k in c.mapping)]
    if len(hits) == 1:
        tensors, ignored, optimizer = _take(hits[0].mapping, where)
        renames = select_prefix(tensors, key, source=source)
        logger.debug("key=%r selected %d tensors under prefix %r in %s", key, len(renames), prefix, where)
        return Unwrapped(
            tensors={new: tensors[old] for new, old in renames.items()},
            container=(*hits[0].path, key),
            alternatives=tuple(c.dotted for c in candidates if c is not hits[0]),
            ignored=ignored,
            prefix=prefix,
            optimizer_state=optimizer,
        )
    if len(hits) > 1:
        names = [c.dotted for c in hits]
        raise AmbiguousContainerError(
            f"key={key!r} is a key prefix in several state dicts of {where}: {', '.join(names)}; "
            f"pass the full path instead, e.g. key={names[0] + '.' + key!r}",
            source=source,
            candidates=names,
        )
    available = [c.dotted for c in candidates] + _top_prefixes(k for c in candidates for k in c.mapping)
    raise UnknownContainerError(
        f"key={key!r} names no container and no key prefix in {where}; available: "
        f"{_listing(available)}. Pass one of these as key=, or leave key unset to choose automatically",
        source=source,
        key=key,
        available=available,
    )


def scalars(obj: Mapping[object, object]) -> dict[str, str | int | float | bool]:
    """The top-level string, number and boolean entries of a checkpoint (``epoch``, ``arch``).

    Example:
        >>> import torch
        >>> scalars({"state_dict": {"w": torch.ones(1)}, "epoch": 3, "arch": "resnet18"})
        {'epoch': 3, 'arch': 'resnet18'}
    """
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, (str, int, float, bool))}


def select_prefix(keys: Iterable[str], key: str, *, source: object = None) -> dict[str, str]:
    """Select the keys under ``key + "."`` and strip that prefix.

    This is how ``key=`` applies to flat files such as safetensors, whose keys
    may carry a top-level prefix like ``model_ema.``.

    Args:
        keys: the checkpoint's keys.
        key: the prefix, without its trailing dot; may itself be dotted.
        source: what the keys came from, for messages.

    Returns:
        Stripped key -> original key, in the original order.

    Raises:
        UnknownContainerError: no key starts with ``key + "."``.

    Example:
        >>> select_prefix(["model_ema.fc.weight", "model.fc.weight"], "model_ema")
        {'fc.weight': 'model_ema.fc.weight'}
    """
    keys = list(keys)
    prefix = key + "."
    renames = {k[len(prefix) :]: k for k in keys if k.startswith(prefix)}
    if renames:
        return renames
    available = _top_prefixes(keys)
    where = "the checkpoint" if source is None else str(source)
    raise UnknownContainerError(
        f"key={key!r} is not a key prefix in {where}; its top-level prefixes are: {_listing(available)}. "
        "Pass one of these as key=, or leave key unset to take every tensor",
        source=source,
        key=key,
        available=available,
    )


def _choose(
    candidates: list[Candidate],
    node: Mapping[object, object],
    path: tuple[str, ...],
    where: str,
    *,
    source: object,
    under: str = "",
) -> Unwrapped:
    if not node:
        logger.debug("%s is an empty state dict", where)
        return Unwrapped(tensors={}, container=path)
    if not candidates:
        raise EmptyCheckpointError(_empty_message(node, where, under), source=source)
    best = min(c.rank for c in candidates)
    top = [c for c in candidates if c.rank == best]
    if len(top) > 1:
        names = [c.dotted for c in top]
        raise AmbiguousContainerError(
            f"{where} holds several state dicts and nothing tells them apart: {', '.join(names)}; "
            f"choose one with key=, e.g. key={names[0]!r}",
            source=source,
            candidates=names,
        )
    chosen = top[0]
    tensors, ignored, optimizer = _take(chosen.mapping, where)
    alternatives = tuple(c.dotted for c in candidates if c is not chosen)
    if alternatives:
        logger.info("took state dict %s from %s; also there: %s", chosen.dotted, where, ", ".join(alternatives))
    return Unwrapped(
        tensors=tensors, container=chosen.path, alternatives=alternatives, ignored=ignored, optimizer_state=optimizer
    )


def _take(
    mapping: Mapping[object, object], where: str
) -> tuple[dict[str, torch.Tensor], tuple[str, ...], tuple[str, ...]]:
    """The chosen state dict's entries (:func:`~.nested_search.split_entries`), logging what was dropped."""
    tensors, ignored, optimizer = split_entries(mapping)
    if ignored:
        logger.debug("ignoring non-tensor entries in %s: %s", where, ", ".join(ignored))
    if optimizer:
        logger.info("dropped %d optimizer-state tensors from %s (e.g. %s)", len(optimizer), where, optimizer[0])
    return tensors, ignored, optimizer


def _walk(obj: Mapping[object, object], key: str) -> tuple[str, ...] | None:
    """The path ``key`` names from the root: the whole key first, then its dotted steps."""
    if key in obj:
        return (key,)
    node: object = obj
    steps = tuple(key.split("."))
    for step in steps:
        if not isinstance(node, Mapping) or step not in node:
            return None
        node = node[step]
    return steps


def _get(obj: Mapping[object, object], path: tuple[str, ...]) -> object:
    node: object = obj
    for step in path:
        node = node[step]  # type: ignore[index]
    return node


def _top_prefixes(keys: Iterable[object]) -> list[str]:
    prefixes = dict.fromkeys(k.split(".", 1)[0] + "." for k in keys if isinstance(k, str) and "." in k)
    return [p[:-1] for p in prefixes]


def _listing(names: list[str]) -> str:
    if not names:
        return "(none)"
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", … ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def _empty_message(node: Mapping[object, object], where: str, under: str) -> str:
    at = f" under key={under!r}" if under else ""
    kinds = [f"{k} ({type(v).__name__})" for k, v in list(node.items())[:_MAX_LISTED]]
    moments = split_entries(node)[2]
    what = f"only optimizer state ({len(moments)} tensors such as {moments[0]})" if moments else "no tensors"
    return (
        f"{where} holds {what}{at}; its entries are: {', '.join(kinds) or '(none)'}. "
        "It is not a checkpoint of model weights (an optimizer-only file or a config?): "
        "pass the file or object that holds the state dict"
    )
