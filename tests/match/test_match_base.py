"""The strategy contract: compact runs of plain matches, and how the planner decides them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightsurgery.match.base import Match, MatchContext, Matches, MatchRun, StrategyResult
from weightsurgery.match.plan import NO_ARGS, Action, Plan, PlanEntry
from weightsurgery.match.planner import PlanOptions, make_plan
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta


def test_matches_read_as_a_sequence_of_match_in_the_order_added() -> None:
    found = Matches()
    found.add_run(["a.weight", "a.bias"], ["x.a.weight", "x.a.bias"], "prefix", "stripped 'x.'")
    found.append(Match("b.weight", "y.weight", "prefix", "tie noted"))
    found.add_run([], [], "prefix")  # an empty run adds nothing
    found.add_run(["c.weight"], ["x.c.weight"], "prefix", "stripped 'x.'")
    expected = [
        Match("a.weight", "x.a.weight", "prefix", "stripped 'x.'"),
        Match("a.bias", "x.a.bias", "prefix", "stripped 'x.'"),
        Match("b.weight", "y.weight", "prefix", "tie noted"),
        Match("c.weight", "x.c.weight", "prefix", "stripped 'x.'"),
    ]
    assert len(found) == 4 and list(found) == expected and found == expected
    assert found[2] == expected[2] and found[-1] == expected[-1] and found[1:3] == expected[1:3]
    assert [type(p) for p in found.parts] == [MatchRun, list, MatchRun]
    assert Matches() == [] and found != expected[:3]


def test_a_run_needs_as_many_sources_and_shapes_as_targets() -> None:
    with pytest.raises(ValueError, match=r"a run needs as many targets as sources \(and shapes\), got lengths \[1, 2\]"):
        Matches().add_run(["a", "b"], ["a"], "exact")
    with pytest.raises(ValueError, match=r"got lengths \[1, 2\]"):
        Matches().add_run(["a", "b"], ["a", "b"], "exact", target_shapes=[(1,)])


def test_entries_without_adapter_share_one_empty_mapping_that_compares_as_a_dict() -> None:
    entry = PlanEntry("fc.weight", Action.LOAD, "fc.weight")
    assert entry.adapter_args is NO_ARGS and entry.adapter_args == {} and {} == entry.adapter_args
    assert dict(entry.adapter_args) == {} and not entry.adapter_args and repr(NO_ARGS) == "{}"
    assert Match("a", "b", "exact").adapter_args is NO_ARGS
    plan = Plan({"fc.weight": entry})
    assert Plan.from_json(plan.to_json()) == plan  # read back with a dict of its own: still equal


def test_bulk_entries_are_the_entries_one_call_each_makes() -> None:
    bulk = PlanEntry.loads(["a", "b"], ["m.a", "m.b"], "prefix", "stripped 'm.'", [(2, 3), ()])
    one_by_one = [
        PlanEntry(t, Action.LOAD, s, strategy="prefix", evidence="stripped 'm.'", source_shape=shape)
        for t, s, shape in (("a", "m.a", (2, 3)), ("b", "m.b", ()))
    ]
    assert bulk == one_by_one
    with pytest.raises(AttributeError):  # as frozen as any entry
        bulk[0].source = "other"  # type: ignore[misc]


def _spec_and_source() -> tuple[TargetSpec, dict[str, TensorMeta]]:
    model = nn.ModuleDict({"a": nn.Linear(2, 3), "b": nn.Linear(3, 4)})
    target = TargetSpec.from_module(model)
    source = {f"src.{k}": TensorMeta.of(v) for k, v in model.state_dict().items()}
    source["src.b.weight"] = TensorMeta((5, 3), torch.float32)  # a same-named tensor of another size
    return target, source


def _claiming(*runs: tuple[list[str], list[str]]):  # type: ignore[no-untyped-def]
    def claim(ctx: MatchContext) -> StrategyResult:
        found = Matches()
        for targets, sources in runs:
            found.add_run(targets, sources, "custom", "a run")
        return StrategyResult(found)

    return claim


def test_a_run_loads_its_same_shaped_pairs_and_sends_the_others_through_the_mismatch_policy() -> None:
    target, source = _spec_and_source()
    run = (["a.weight", "a.bias", "b.weight", "b.bias"], ["src.a.weight", "src.a.bias", "src.b.weight", "src.b.bias"])
    plan = make_plan(source, target, PlanOptions(strategies=[], extra_strategies=[_claiming(run)]))
    assert plan.mapping == {"a.weight": "src.a.weight", "a.bias": "src.a.bias", "b.bias": "src.b.bias"}
    assert all(plan.entries[k].strategy == "custom" and plan.entries[k].evidence == "a run" for k in plan.mapping)
    refused = plan.entries["b.weight"]
    assert refused.action is Action.INIT and refused.source_shape == (5, 3)
    assert refused.evidence == "shape mismatch: b.weight (4, 3) vs source src.b.weight (5, 3)"
    assert plan.unused == ("src.b.weight",)


def test_a_key_named_twice_in_runs_goes_to_its_first_claim() -> None:
    target, source = _spec_and_source()
    first = (["a.weight", "a.bias"], ["src.a.weight", "src.a.bias"])
    again = (["a.weight", "b.bias", "b.bias"], ["src.a.weight", "src.b.bias", "src.a.bias"])
    plan = make_plan(source, target, PlanOptions(strategies=[], extra_strategies=[_claiming(first, again)]))
    # 'a.weight' was decided by the first run; 'b.bias' is named twice in the second: its first pair wins
    assert plan.mapping == {"a.weight": "src.a.weight", "a.bias": "src.a.bias", "b.bias": "src.b.bias"}


def test_runs_meet_adapter_rules_through_the_general_path() -> None:
    from weightsurgery.adapt import AdaptRule

    target, source = _spec_and_source()
    run = (["a.weight", "a.bias"], ["src.a.weight", "src.a.bias"])
    options = PlanOptions(strategies=[], extra_strategies=[_claiming(run)], adapt=[AdaptRule("a.bias", "reshape", {"shape": [3]})])
    plan = make_plan(source, target, options)
    assert plan.entries["a.weight"].action is Action.LOAD
    assert plan.entries["a.bias"].action is Action.ADAPT and plan.entries["a.bias"].adapter == "reshape"
