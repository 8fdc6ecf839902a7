"""weightsurgery: move pretrained weights into PyTorch models.

``transfer(src, dst)`` resolves a source, matches its keys to the target's,
adapts what differs in shape, initializes only the leftovers, and returns a
report of every decision.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from weightsurgery import transfer
    >>> report = transfer(nn.Linear(3, 4), nn.Linear(3, 4))
    >>> sorted(report.mapping)
    ['bias', 'weight']
"""

from weightsurgery.errors import WeightSurgeryError as WeightSurgeryError
from weightsurgery.match.plan import Action as Action
from weightsurgery.match.plan import Plan as Plan
from weightsurgery.match.plan import PlanEntry as PlanEntry
from weightsurgery.report import KeyRecord as KeyRecord
from weightsurgery.report import Report as Report
from weightsurgery.sources.checkpoint import Checkpoint as Checkpoint
from weightsurgery.sources.resolve import resolve as resolve
from weightsurgery.transfer import transfer as transfer

__version__ = "0.1.0"

__all__ = [
    "Action",
    "Checkpoint",
    "KeyRecord",
    "Plan",
    "PlanEntry",
    "Report",
    "WeightSurgeryError",
    "resolve",
    "transfer",
]
