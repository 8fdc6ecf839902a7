"""Sources: resolve anything a user names into a lazy :class:`Checkpoint`."""

from weightsurgery.sources.checkpoint import Checkpoint as Checkpoint
from weightsurgery.sources.checkpoint import Origin as Origin
from weightsurgery.sources.checkpoint import SourceKind as SourceKind
from weightsurgery.sources.checkpoint import TensorMeta as TensorMeta
from weightsurgery.sources.resolve import SourceForm as SourceForm
from weightsurgery.sources.resolve import resolve as resolve

__all__ = ["Checkpoint", "Origin", "SourceForm", "SourceKind", "TensorMeta", "resolve"]
