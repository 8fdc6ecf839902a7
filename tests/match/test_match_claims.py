"""The planner's claims: what a strategy's result may decide, what it defers, what it closes for good."""

from __future__ import annotations

import torch
from torch import nn

from weightsurgery.match.base import Abstain, Match, StrategyResult
from weightsurgery.match.claims import Claims
from weightsurgery.match.decide import Decider
from weightsurgery.match.options import PlanOptions
from weightsurgery.match.plan import Action
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta


def _claims(source_shapes: dict[str, tuple[int, ...]], module: nn.Module) -> Claims:
    source = {k: TensorMeta(s, torch.float32) for k, s in source_shapes.items()}
    target = TargetSpec.from_module(module)
    options = PlanOptions()
    return Claims(source, target, options, Decider(source, target, options, {}))


def test_a_strategy_may_not_claim_a_decided_key_a_taken_source_or_a_source_that_is_not_there() -> None:
    claims = _claims({"w": (3, 2), "b": (3,)}, nn.Sequential(nn.Linear(2, 3), nn.Linear(2, 3)))
    assert claims.take(StrategyResult([Match("0.weight", "w", "custom", "first")]))
    later = [Match("0.weight", "b", "custom", "again"), Match("1.weight", "w", "custom", "taken"),
             Match("1.bias", "nope", "custom", "invented", copy=True)]  # a copy may reuse a source, not invent one
    assert not claims.take(StrategyResult(later))  # nothing closed
    assert list(claims.decided) == ["0.weight"] and claims.decided["0.weight"].evidence == "first"
    assert claims.open_t == {"0.bias", "1.weight", "1.bias"} and claims.open_s == {"b"}
    assert claims.matched() == {"0.weight": "w"} and claims.filled == 1


def test_a_name_match_of_another_size_is_deferred_and_leaves_both_keys_open() -> None:
    claims = _claims({"weight": (5, 2), "bias": (3,)}, nn.Linear(2, 3))
    claims.take(StrategyResult([Match("weight", "weight", "exact"), Match("bias", "bias", "exact")]))
    deferred = claims.deferred["weight"]
    assert deferred.action is Action.INIT and deferred.source_shape == (5, 2)
    assert claims.reasons["weight"] == deferred.evidence and "weight" not in claims.decided
    assert claims.open_t == {"weight"} and claims.open_s == {"weight"}  # a later strategy may still pair them
    assert claims.decided["bias"].action is Action.LOAD and claims.matched() == {"bias": "bias"}


def test_a_final_abstention_closes_its_key_for_every_later_strategy() -> None:
    claims = _claims({"w": (3, 2), "bias": (3,)}, nn.Linear(2, 3))
    assert claims.take(StrategyResult((), [Abstain("weight", "no counterpart", ("w",), "custom", final=True)]))
    assert claims.decided["weight"].action is Action.INIT and claims.decided["weight"].evidence == "no counterpart"
    assert not claims.take(StrategyResult([Match("weight", "w", "custom", "later")]))
    assert claims.decided["weight"].source is None and "w" in claims.open_s
