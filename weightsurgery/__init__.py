"""weightsurgery: move pretrained weights into PyTorch models.

``transfer(src, dst)`` resolves a source, matches its keys to the target's,
adapts what differs in shape, initializes only the leftovers, and returns a
report of every decision.

The public names load on first use (PEP 562): ``import weightsurgery`` and the
command line's ``--help`` import no torch; ``from weightsurgery import transfer``
imports what ``transfer`` needs, and nothing of timm, torchvision,
huggingface_hub, rich or yaml until a source, target or recipe calls for it.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from weightsurgery import transfer
    >>> report = transfer(nn.Linear(3, 4), nn.Linear(3, 4))
    >>> sorted(report.mapping)
    ['bias', 'weight']
"""

import importlib as _importlib
import sys as _sys
import types as _types
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from weightsurgery import errors as errors
from weightsurgery.errors import WeightSurgeryError as WeightSurgeryError

if _TYPE_CHECKING:  # the names below, for type checkers and IDEs; at run time __getattr__ loads them
    from weightsurgery.adapt import AdaptRule as AdaptRule
    from weightsurgery.adapt import register_adapter as register_adapter
    from weightsurgery.convert import convert_checkpoint as convert_checkpoint
    from weightsurgery.diff import diff_checkpoints as diff_checkpoints
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

#: public name -> the module that defines it.
_EXPORTS = {
    "Action": "weightsurgery.match.plan",
    "AdaptRule": "weightsurgery.adapt",
    "Checkpoint": "weightsurgery.sources.checkpoint",
    "InitRules": "weightsurgery.init",
    "KeyRecord": "weightsurgery.report",
    "Plan": "weightsurgery.match.plan",
    "PlanEntry": "weightsurgery.match.plan",
    "PlanOptions": "weightsurgery.match.planner",
    "Recipe": "weightsurgery.recipe",
    "Report": "weightsurgery.report",
    "TargetSpec": "weightsurgery.match.target",
    "build_target": "weightsurgery.factory",
    "convert_checkpoint": "weightsurgery.convert",
    "diff_checkpoints": "weightsurgery.diff",
    "make_plan": "weightsurgery.match.planner",
    "parse_spec": "weightsurgery.init",
    "register_adapter": "weightsurgery.adapt",
    "resolve": "weightsurgery.sources.resolve",
    "transfer": "weightsurgery.transfer",
}

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


def __getattr__(name: str) -> _Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(_types.ModuleType):
    """This package's module type: importing the submodule ``weightsurgery.transfer`` keeps the
    package's ``transfer`` the function (the import system binds each submodule on its parent)."""

    def __setattr__(self, name: str, value: _Any) -> None:
        if name in _EXPORTS and isinstance(value, _types.ModuleType) and value.__name__ == _EXPORTS[name]:
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
