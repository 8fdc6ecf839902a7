"""Structure never pairs leaves whose names say different roles (issue 9: a bias never fills a weight)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightsurgery.match.planner import PlanOptions, make_plan
from weightsurgery.match.structure.groups import build_groups
from weightsurgery.match.structure.leaves import pair_leaves, roles_contradict
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta


def _group(shapes: dict[str, tuple[int, ...]]):
    metas = {k: TensorMeta(s, torch.float32) for k, s in shapes.items()}
    [g] = build_groups(list(metas), metas, lambda k: tuple(k.rsplit(".", 1)))
    return g


@pytest.mark.parametrize("leaf", ["bias", "beta", "running_mean", "moving_var", "num_batches_tracked"])
def test_a_unique_shape_does_not_pair_contradicting_roles(leaf: str) -> None:
    found = pair_leaves(_group({"fc.weight": (1, 2)}), _group({f"m.{leaf}": (1, 2)}))
    assert isinstance(found, str) and "different roles" in found


def test_unknown_names_still_pair_by_shape() -> None:
    assert pair_leaves(_group({"fc.weight": (3, 2)}), _group({"dense.w": (3, 2)})) == [("fc.weight", "dense.w", "w -> weight")]
    assert not roles_contradict("gamma", "weight") and roles_contradict("beta", "gamma")


@pytest.mark.parametrize("leaf", ["bias", "running_mean"])
def test_structure_leaves_a_contradicting_tensor_unused(leaf: str) -> None:
    source = {f"enc.norm.{leaf}": TensorMeta((1, 2), torch.float32)}
    target = TargetSpec.from_module(nn.Sequential(nn.Linear(2, 1, bias=False)))
    plan = make_plan(source, target, PlanOptions(strategies=("structure",)))
    assert plan.mapping == {} and plan.unused == (f"enc.norm.{leaf}",)
    assert "different roles" in plan.entries["0.weight"].evidence
