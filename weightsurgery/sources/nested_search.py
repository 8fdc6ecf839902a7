"""Search a nested checkpoint for the state dicts it holds, and rank where each was found.

The half of :mod:`~weightsurgery.sources.nested`'s choice rule that looks
(rules 1 to 3 there): what counts as a state dict, which containers are
searched and which are training state never searched, and how a container
path ranks (:class:`Rank`). Choosing among the candidates, ``key=`` and the
messages stay in :mod:`~weightsurgery.sources.nested`.

Nothing here logs what it chose or raises for an ambiguity: it only finds.
The one refusal is a mapping nested deeper than :data:`MAX_DEPTH`, which
would exhaust the stack.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from weightsurgery.errors import CorruptCheckpointError
from weightsurgery.sources import optim_state

__all__ = [
    "EMA_KEYS",
    "IGNORED_KEYS",
    "MAX_DEPTH",
    "WRAPPER_KEYS",
    "Candidate",
    "Rank",
    "find_candidates",
    "split_entries",
]

logger = logging.getLogger(__name__)

WRAPPER_KEYS: frozenset[str] = frozenset(
    {"state_dict", "model", "module", "model_state_dict", "net", "network", "params"}
)
"""Container keys that hold the regular weights."""

EMA_KEYS: frozenset[str] = frozenset({"model_ema", "state_dict_ema", "ema", "ema_model", "ema_state_dict"})
"""Container keys that hold an exponential moving average of the weights."""

IGNORED_KEYS: frozenset[str] = optim_state.OPTIMIZER_KEYS | frozenset(
    {
        "lr_scheduler",
        "lr_schedulers",
        "scheduler",
        "callbacks",
        "scaler",
        "grad_scaler",
        "loops",
    }
)
"""Container keys of training state that never hold model weights; not searched."""

MAX_DEPTH = 100
"""The deepest nesting of mappings searched; a deeper checkpoint is refused (it would exhaust the stack)."""


class Rank(enum.IntEnum):
    """How a candidate's container path ranks; lower wins."""

    REGULAR = 0
    EMA = 1
    OTHER = 2

    @classmethod
    def of(cls, path: tuple[str, ...]) -> Rank:
        """Rank a container path.

        Example:
            >>> Rank.of(("model", "module")).name, Rank.of(("model_ema",)).name, Rank.of(("gen",)).name
            ('REGULAR', 'EMA', 'OTHER')
        """
        if any(step not in WRAPPER_KEYS and step not in EMA_KEYS for step in path):
            return cls.OTHER
        if any(step in EMA_KEYS for step in path):
            return cls.EMA
        return cls.REGULAR


@dataclass(frozen=True)
class Candidate:
    """A state dict found in a checkpoint.

    Attributes:
        path: the keys walked from the root to it, ``()`` for the root itself.
        mapping: the state dict, as stored.
    """

    path: tuple[str, ...]
    mapping: Mapping[object, object]

    @property
    def dotted(self) -> str:
        """The path as ``"model.module"``, ``"<root>"`` for the root."""
        return ".".join(self.path) or "<root>"

    @property
    def rank(self) -> Rank:
        """How its path ranks (:meth:`Rank.of`)."""
        return Rank.of(self.path)


def find_candidates(
    node: Mapping[object, object], path: tuple[str, ...] = (), source: object = None
) -> list[Candidate]:
    """Every state dict at or below ``node``, in storage order.

    Args:
        node: the mapping to search.
        path: the keys walked from the checkpoint's root to ``node``.
        source: what the checkpoint came from, for messages.

    Returns:
        The candidates; a container holding state dicts is not itself one, and
        training state (:data:`IGNORED_KEYS`, an optimizer's state dict) is not searched.

    Raises:
        CorruptCheckpointError: ``node`` nests mappings deeper than :data:`MAX_DEPTH`.

    Example:
        >>> import torch
        >>> ckpt = {"model": {"w": torch.ones(1)}, "optimizer": {"w": torch.ones(1)}, "epoch": 3}
        >>> [c.dotted for c in find_candidates(ckpt)]
        ['model']
    """
    found: list[Candidate] = []
    seen: set[int] = set()

    def visit(mapping: Mapping[object, object], at: tuple[str, ...]) -> bool:
        if id(mapping) in seen:
            return False
        if len(at) > MAX_DEPTH:
            where = "the mapping" if source is None else str(source)
            raise CorruptCheckpointError(
                f"{where} nests mappings more than {MAX_DEPTH} levels deep (at {'.'.join(at[:4])}...); no "
                "checkpoint does: it is malformed or hostile. Pass the state dict itself",
                source=source,
            )
        seen.add(id(mapping))
        before = len(found)
        for k, v in mapping.items():
            if isinstance(k, str) and isinstance(v, Mapping) and not _training_state(k, v):
                visit(v, (*at, k))
        if len(found) > before:
            loose = [k for k, v in mapping.items() if isinstance(v, torch.Tensor)]
            if loose:
                logger.debug("ignoring tensors %s held beside nested state dicts at %s", loose, at or "<root>")
            return True
        if not optim_state.is_slot_mapping(mapping) and split_entries(mapping)[0]:
            found.append(Candidate(at, mapping))
            return True
        return False

    visit(node, path)
    return found


def split_entries(
    mapping: Mapping[object, object],
) -> tuple[dict[str, torch.Tensor], tuple[str, ...], tuple[str, ...]]:
    """The weights, the keys of the non-tensor entries, and the flattened optimizer-state keys of a state dict.

    Example:
        >>> import torch
        >>> split_entries({"w": torch.ones(1), "state.0.exp_avg": torch.ones(1), "step": 3})[1:]
        (('step',), ('state.0.exp_avg',))
    """
    tensors: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    optimizer: list[str] = []
    for k, v in mapping.items():
        if isinstance(k, str) and isinstance(v, torch.Tensor) and optim_state.is_optimizer_key(k):
            optimizer.append(k)
        elif isinstance(k, str) and isinstance(v, torch.Tensor):
            tensors[k] = v
        else:
            ignored.append(str(k))
    return tensors, tuple(ignored), tuple(optimizer)


def _training_state(key: str, value: Mapping[object, object]) -> bool:
    """A container of training state, never searched: a known key or an optimizer's state dict."""
    return key.lower() in IGNORED_KEYS or optim_state.is_optimizer_state(value)
