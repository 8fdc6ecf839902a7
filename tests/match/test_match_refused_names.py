"""A source key refused for its shape by a name strategy is never handed to another target key (issue 9).

A name match (exact, a wrapper prefix, the user's rename) says which source
key *is* a target key. When the shapes differ the key is kept, and the
source key is evidence about that key only: a later strategy (structure,
suffix) must not pair it with another key that happens to share its shape.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightsurgery.match.plan import Action
from weightsurgery.match.planner import PlanOptions, make_plan
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta


def _linear_bn() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 1, bias=False), nn.BatchNorm1d(1))


@pytest.mark.parametrize("prefix", ["", "module.", "model.", "_orig_mod."])
@pytest.mark.parametrize("leaf", ["weight", "bias", "running_mean", "running_var"])
def test_a_refused_name_does_not_fill_another_key(prefix: str, leaf: str) -> None:
    # The BN tensor has the Linear weight's shape (1, 2): structure alone would pair them.
    source = {f"{prefix}1.{leaf}": TensorMeta((1, 2), torch.float32)}
    plan = make_plan(source, TargetSpec.from_module(_linear_bn()))
    assert plan.mapping == {}
    assert plan.entries[f"1.{leaf}"].action is Action.INIT and "shape mismatch" in plan.entries[f"1.{leaf}"].evidence
    assert plan.unused == (f"{prefix}1.{leaf}",)


def test_a_refused_rename_does_not_fill_another_key() -> None:
    source = {"old.1.weight": TensorMeta((1, 2), torch.float32)}
    plan = make_plan(source, TargetSpec.from_module(_linear_bn()), PlanOptions(rename={r"^old\.": ""}))
    assert plan.mapping == {} and plan.unused == ("old.1.weight",)


class _Named(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 1, bias=False)
        self.bn = nn.BatchNorm1d(1)


def test_the_rest_still_loads_beside_a_refused_name() -> None:
    # fc.weight has no source; bn.weight's source has fc.weight's shape and the same role: only its name speaks.
    net = _Named()
    source = {f"model.{k}": TensorMeta.of(v) for k, v in net.state_dict().items() if k != "fc.weight"}
    source["model.bn.weight"] = TensorMeta((1, 2), torch.float32)
    plan = make_plan(source, TargetSpec.from_module(net))
    assert plan.mapping == {k: f"model.{k}" for k in ("bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked")}
    assert plan.entries["bn.weight"].action is Action.INIT and "shape mismatch" in plan.entries["bn.weight"].evidence
    assert plan.entries["fc.weight"].action is Action.INIT and plan.unused == ("model.bn.weight",)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_a_module_pair_resting_on_a_refused_name_loads_nothing(prefix: str) -> None:
    # 1 (a LayerNorm) is sent with a 2-d weight: it now looks like the Linear 0, and structure pairs 0 <- 1.
    # 1.weight is 1.weight's name counterpart and nothing else fills 1.weight: neither tensor of 1 moves to 0.
    net = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    source = {f"{prefix}1.weight": TensorMeta((2, 2), torch.float32), f"{prefix}1.bias": TensorMeta((2,), torch.float32)}
    plan = make_plan(source, TargetSpec.from_module(net))
    assert plan.mapping == {} and set(plan.unused) == set(source)
    assert "name counterpart of 1.weight" in plan.entries["0.bias"].evidence
