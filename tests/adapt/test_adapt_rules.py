"""AdaptRule patterns, source templates, and match_rule's resolution."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightsurgery.adapt import AdaptContext, AdaptRule, match_rule
from weightsurgery.errors import AdapterError
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta

F32 = torch.float32


def _ctx(source: dict[str, tuple[int, ...]], target: nn.Module | None = None) -> AdaptContext:
    spec = TargetSpec.from_module(target or nn.Linear(2, 2))
    return AdaptContext(spec, {k: TensorMeta(s, F32) for k, s in source.items()})


def test_glob_wildcards_are_numbered_groups_for_source_templates():
    rule = AdaptRule("blocks.*.attn.qkv.?eight", "fuse", sources=(r"b.\1.q.\2", r"b.\1.k.\2"))
    assert rule.source_keys("blocks.11.attn.qkv.weight") == ("b.11.q.w", "b.11.k.w")
    assert rule.match("blocks.1.attn.proj.weight") is None
    assert AdaptRule("layer[12].fc.weight", "transpose").match("layer2.fc.weight")
    assert not AdaptRule("layer[!12].fc.weight", "transpose").match("layer2.fc.weight")


def test_regex_rules_with_named_groups_match_the_whole_key():
    rule = AdaptRule(
        r"re:blocks\.(?P<i>\d+)\.mlp\.fc1\.weight",
        "split",
        {"index": 0, "sizes": [2, 2]},
        sources=(r"blocks.\g<i>.mlp.gate_up.weight",),
    )
    assert rule.source_keys("blocks.3.mlp.fc1.weight") == ("blocks.3.mlp.gate_up.weight",)
    assert rule.match("x.blocks.3.mlp.fc1.weight") is None


def test_match_rule_first_match_wins_and_defaults_to_the_matched_source():
    ctx = _ctx({"w": (2, 2), "w2": (2, 2)})
    rules = [AdaptRule("we*", "transpose"), AdaptRule("*", "reshape")]
    assert match_rule(rules, "weight", "w", ctx) == ("transpose", {}, ("w",))
    assert match_rule(rules, "bias", "w2", ctx) == ("reshape", {}, ("w2",))
    assert match_rule([AdaptRule("other", "transpose")], "weight", "w", ctx) is None


def test_rule_options_override_the_proposal_for_the_same_adapter():
    target = nn.Module()
    target.pos_embed = nn.Parameter(torch.zeros(1, 1 + 6 * 6, 4))
    ctx = _ctx({"pos_embed": (1, 1 + 4 * 4, 4)}, target)
    rule = AdaptRule("pos_embed", "pos_embed", {"interpolation": "bilinear"})
    assert match_rule([rule], "pos_embed", "pos_embed", ctx) == (
        "pos_embed",
        {"num_prefix_tokens": 1, "old_grid": [4, 4], "new_grid": [6, 6], "interpolation": "bilinear"},
        ("pos_embed",),
    )


def test_errors_name_the_rule_and_the_fix():
    ctx = _ctx({"blocks.0.attn.q.weight": (2, 2)})
    rule = AdaptRule("blocks.*.attn.qkv.weight", "fuse", sources=(r"blocks.\1.attn.query.weight",))
    with pytest.raises(
        AdapterError,
        match=r"reads source key\(s\) \['blocks.0.attn.query.weight'\] that the checkpoint does not have; "
        r"closest: blocks.0.attn.q.weight",
    ):
        match_rule([rule], "blocks.0.attn.qkv.weight", None, ctx)
    with pytest.raises(AdapterError, match=r"refers to a missing group .*; the pattern has 1 group\(s\)"):
        AdaptRule("a.*", "fuse", sources=(r"\2",)).source_keys("a.b")
    with pytest.raises(AdapterError, match=r"has no sources and 'a.b' has no matched source key; give sources="):
        AdaptRule("a.*", "fuse").source_keys("a.b")
    with pytest.raises(AdapterError, match=r"no adapter named 'fuze'; registered adapters:"):
        AdaptRule("x", "fuze")
    with pytest.raises(AdapterError, match=r"AdaptRule pattern 're:\(' is not a valid regex"):
        AdaptRule("re:(", "fuse")


def test_dict_round_trip_and_bad_fields():
    rule = AdaptRule("head.*", "head", {"rows": [1, 0]}, sources=("fc.weight",))
    assert AdaptRule.from_dict(rule.to_dict()) == rule
    assert AdaptRule("x", "transpose").to_dict() == {"pattern": "x", "adapter": "transpose"}
    with pytest.raises(AdapterError, match=r"unknown field\(s\) \['source'\]; use pattern, adapter, args, sources"):
        AdaptRule.from_dict({"pattern": "x", "adapter": "fuse", "source": "y"})
