"""The plan as an artifact: JSON round trip, atomic save, load errors, edits, inversion."""

from __future__ import annotations

import json

import pytest
from torch import nn

from weightsurgery.errors import PlanError, SourceNotFoundError
from weightsurgery.match.plan import Action, Plan, PlanEntry
from weightsurgery.match.planner import make_plan
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta


def a_plan() -> Plan:
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    src = {f"module.{k}": TensorMeta.of(v) for k, v in model.state_dict().items() if k != "1.bias"}
    return make_plan(src, TargetSpec.from_module(model))


def test_json_round_trip_is_lossless(tmp_path) -> None:
    plan = a_plan()
    assert Plan.from_json(plan.to_json()) == plan
    path = tmp_path / "sub" / "mapping.json"
    path.parent.mkdir()  # an output's folder must exist: it is never created
    plan.save(path)
    assert Plan.load(path) == plan
    assert [p.name for p in path.parent.iterdir()] == ["mapping.json"]  # no temp file left behind


def test_hand_edited_plan_loads() -> None:
    data = a_plan().to_dict()
    data["entries"][0]["source"] = "module.0.bias"
    assert Plan.from_dict(data).entries["0.weight"].source == "module.0.bias"


def test_bad_plan_files_say_what_is_wrong(tmp_path) -> None:
    with pytest.raises(PlanError, match="plan is not valid JSON"):
        Plan.from_json("{nope")
    with pytest.raises(PlanError, match="not a weightsurgery plan"):
        Plan.from_json(json.dumps({"entries": []}))
    bad = a_plan().to_dict()
    bad["entries"][0]["action"] = "teleport"
    with pytest.raises(PlanError, match="an 'action' among load, adapt, init, tied"):
        Plan.from_dict(bad)
    with pytest.raises(SourceNotFoundError, match="plan file .*missing.json does not exist"):
        Plan.load(tmp_path / "missing.json")


def test_inverted_maps_source_names_back() -> None:
    plan = a_plan()
    assert plan.inverted() == {"module.0.weight": "0.weight", "module.0.bias": "0.bias", "module.1.weight": "1.weight"}


def test_with_entries_recomputes_unused() -> None:
    plan = a_plan()
    edited = plan.with_entries({"0.bias": PlanEntry("0.bias", Action.INIT, evidence="by hand")})
    assert edited.entries["0.bias"].action is Action.INIT
    assert edited.unused == ("module.0.bias",)
    assert plan.unused == ()
