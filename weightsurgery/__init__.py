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

from weightsurgery import errors as errors
from weightsurgery.adapt import AdaptRule as AdaptRule
from weightsurgery.adapt import register_adapter as register_adapter
from weightsurgery.convert import convert_checkpoint as convert_checkpoint
from weightsurgery.diff import diff_checkpoints as diff_checkpoints
from weightsurgery.errors import WeightSurgeryError as WeightSurgeryError
from weightsurgery.factory import build_target as build_target
from weightsurgery.init import InitRules as InitRules
from weightsurgery.init import parse_spec as parse_spec
from weightsurgery.match.plan import Action as Action
from weightsurgery.match.plan import Plan as Plan
from weightsurgery.match.plan import PlanEntry as PlanEntry
from weightsurgery.match.planner import PlanOptions as PlanOptions
from weightsurgery.match.planner import make_plan as make_plan
from weightsurgery.match.target import TargetSpec as TargetSpec
from weightsurgery.recipe import Recipe as Recipe
from weightsurgery.report import KeyRecord as KeyRecord
from weightsurgery.report import Report as Report
from weightsurgery.sources.checkpoint import Checkpoint as Checkpoint
from weightsurgery.sources.resolve import resolve as resolve
from weightsurgery.transfer import transfer as transfer

__version__ = "0.1.0"

__all__ = [
    "Action",
    "AdaptRule",
    "Checkpoint",
    "InitRules",
    "KeyRecord",
    "Plan",
    "PlanEntry",
    "PlanOptions",
    "Recipe",
    "Report",
    "TargetSpec",
    "WeightSurgeryError",
    "build_target",
    "convert_checkpoint",
    "diff_checkpoints",
    "errors",
    "make_plan",
    "parse_spec",
    "register_adapter",
    "resolve",
    "transfer",
]
