"""Name strategies: exact names, rename rules, explicit maps (wrapper prefixes: test_match_prefix.py)."""

from __future__ import annotations

import pytest
from name_cases import Net, ctx_for, pairs  # tests/match/name_cases.py

from weightsurgery.errors import PlanError
from weightsurgery.match.names import compile_rename, explicit_strategy, match_exact, rename_strategy


def test_exact_matches_same_names_only() -> None:
    ctx = ctx_for({"stem.weight": (3, 2), "other.bias": (3,)}, Net())
    assert pairs(match_exact(ctx)) == {"stem.weight": "stem.weight"}


def test_rename_rules_apply_in_order() -> None:
    rules = compile_rename([(r"^net\.", ""), (r"^body\.", "stem."), (r"^fc\.", "head.")])
    keys = {"net.body.weight": (3, 2), "net.body.bias": (3,), "net.fc.weight": (4, 3), "fc.bias": (4,)}
    result = rename_strategy(rules)(ctx_for(keys, Net()))
    assert pairs(result) == {
        "stem.weight": "net.body.weight",
        "stem.bias": "net.body.bias",
        "head.weight": "net.fc.weight",
        "head.bias": "fc.bias",
    }


def test_rename_collision_abstains() -> None:
    rules = compile_rename([(r"^(a|b)\.", "stem.")])
    result = rename_strategy(rules)(ctx_for({"a.weight": (3, 2), "b.weight": (3, 2)}, Net()))
    assert pairs(result) == {}
    assert "a.weight" in result.abstentions[0].reason and "b.weight" in result.abstentions[0].reason


def test_bad_rename_rule_is_named() -> None:
    with pytest.raises(PlanError, match=r"rename rule #0: '\(' is not a valid regex"):
        compile_rename([("(", "x")])
    with pytest.raises(PlanError, match=r"rename rule #1 is 'oops'; each rule is a \(regex, replacement\) pair"):
        compile_rename([("a", "b"), "oops"])  # type: ignore[list-item]


def test_explicit_map_matches_and_validates_every_key() -> None:
    ctx = ctx_for({"w": (3, 2)}, Net())
    assert pairs(explicit_strategy({"stem.weight": "w"})(ctx)) == {"stem.weight": "w"}
    with pytest.raises(PlanError) as info:
        explicit_strategy({"nope.weight": "w", "stem.bias": "missing"})(ctx)
    assert len(info.value.problems) == 2
    assert "'nope.weight' (in the explicit map) is not in the target model" in str(info.value)
    assert "source key 'missing' (mapped to 'stem.bias') is not in the source" in str(info.value)


def test_the_prefix_strategy_is_still_importable_from_names() -> None:
    from weightsurgery.match import names, prefix

    assert names.match_prefix is prefix.match_prefix and names.prefix_splits is prefix.prefix_splits
    assert {"match_prefix", "prefix_splits"} <= set(names.__all__)
