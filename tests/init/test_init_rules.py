"""Init rules: selecting a spec per key by glob, regex or module type."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from weightsurgery.errors import InitSpecError, InitSpecMismatchError
from weightsurgery.init import InitRules, Keep, Ones, TruncNormal, Zeros
from weightsurgery.match.target import TargetSpec, TargetTensor


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)


TARGET = TargetSpec.from_module(Block())


def test_none_means_keep_everywhere() -> None:
    rules = InitRules.from_user(None)
    assert rules.select("head.weight", nn.Linear) == (Keep(), "default")
    assert rules.describe() == []


def test_a_single_spec_is_the_fallback_for_parameters() -> None:
    rules = InitRules.from_user("trunc_normal(std=0.02)")
    assert rules.select("head.weight", nn.Linear) == (TruncNormal(std=0.02), "*")
    assert rules.select("bn.running_var", nn.BatchNorm2d, is_buffer=True) == (Keep(), "default")


def test_glob_rules_match_the_whole_key_and_cross_dots() -> None:
    rules = InitRules.from_user({"head.*": "zeros", "*.bias": "ones"})
    assert rules.select("head.weight", nn.Linear) == (Zeros(), "head.*")
    assert rules.select("conv.bias", nn.Conv2d) == (Ones(), "*.bias")
    assert rules.select("a.b.c.bias", nn.Conv2d)[1] == "*.bias"
    assert rules.select("conv.weight", nn.Conv2d)[1] == "default"
    assert rules.select("Head.weight", nn.Linear)[1] == "default"  # case-sensitive


def test_first_match_wins_in_the_order_given() -> None:
    rules = InitRules.from_user({"*.bias": "zeros", "head.*": "ones"})
    assert rules.select("head.bias", nn.Linear) == (Zeros(), "*.bias")
    assert rules.select("head.weight", nn.Linear) == (Ones(), "head.*")


def test_star_is_the_fallback_wherever_it_appears() -> None:
    rules = InitRules.from_user({"*": "zeros", "head.*": "ones"})
    assert [r.label for r in rules.rules] == ["head.*", "*"]
    assert rules.select("head.weight", nn.Linear)[1] == "head.*"
    assert rules.select("conv.weight", nn.Conv2d) == (Zeros(), "*")


def test_regex_rules_search_the_key() -> None:
    rules = InitRules.from_user({re.compile(r"conv\.(weight|bias)$"): "zeros", r"re:^head\.": "ones"})
    assert rules.select("block.conv.bias", nn.Conv2d) == (Zeros(), r"re:conv\.(weight|bias)$")
    assert rules.select("head.weight", nn.Linear) == (Ones(), r"re:^head\.")
    assert rules.select("conv.running_mean", nn.Conv2d)[1] == "default"


def test_type_rules_use_isinstance_semantics() -> None:
    class MyLinear(nn.Linear):
        pass

    rules = InitRules.from_user({nn.Linear: "trunc_normal(std=0.02)", nn.modules.conv._ConvNd: "zeros"})
    assert rules.select("head.weight", MyLinear) == (TruncNormal(std=0.02), "Linear")
    assert rules.select("conv.weight", nn.Conv2d) == (Zeros(), "_ConvNd")
    assert rules.select("bn.weight", nn.BatchNorm2d)[1] == "default"


def test_buffers_are_only_chosen_by_key_rules() -> None:
    rules = InitRules.from_user({nn.BatchNorm2d: "zeros", "*.running_var": "ones", "*": "normal"})
    assert rules.select("bn.running_mean", nn.BatchNorm2d, is_buffer=True) == (Keep(), "default")
    assert rules.select("bn.running_var", nn.BatchNorm2d, is_buffer=True) == (Ones(), "*.running_var")
    assert rules.select("bn.weight", nn.BatchNorm2d) == (Zeros(), "BatchNorm2d")


def test_rules_and_instances_pass_through() -> None:
    rules = InitRules.from_user({"*.bias": "zeros"})
    assert InitRules.from_user(rules) is rules
    assert rules.describe() == ["*.bias: zeros"]


def test_every_bad_rule_is_reported_at_once() -> None:
    with pytest.raises(InitSpecError, match=r"3 bad init rule\(s\)") as info:
        InitRules.from_user(
            {
                "head.*": "trunk_normal(std=0.02)",
                "re:(unclosed": "zeros",
                int: "zeros",
                "*.bias": "zeros",
            }
        )
    message = str(info.value)
    assert "rule 'head.*': unknown init spec 'trunk_normal'" in message
    assert "rule 're:(unclosed': invalid regular expression '(unclosed'" in message
    assert "rule 'int': int is not an nn.Module subclass" in message
    assert message.count("Valid init specs:") == 1
    assert "trunc_normal(mean=0.0, std=1.0, a=-2.0, b=2.0)" in message


def test_a_bad_selector_type_is_refused() -> None:
    with pytest.raises(InitSpecError, match=r"rule '3': a rule selector has type int; use a glob string"):
        InitRules.from_user({3: "zeros"})  # type: ignore[dict-item]


def test_a_bad_single_spec_names_the_init_argument() -> None:
    with pytest.raises(InitSpecError, match=r"init='kaiming_normal\(mode=1\)': kaiming_normal: mode=1 is not one of"):
        InitRules.from_user("kaiming_normal(mode=1)")


def test_check_returns_the_choice_for_every_key() -> None:
    rules = InitRules.from_user({"*.bias": "zeros", nn.Conv2d: "kaiming_normal(mode='fan_out')"})
    chosen = rules.check(TARGET.tensors)
    assert chosen["conv.weight"][1] == "Conv2d"
    assert chosen["conv.bias"] == (Zeros(), "*.bias")
    assert chosen["bn.num_batches_tracked"] == (Keep(), "default")
    assert list(chosen) == list(TARGET.tensors)


def test_check_collects_every_problem_and_raises_once() -> None:
    rules = InitRules.from_user({"*.running_mean": "normal", "*": "xavier_uniform"})
    with pytest.raises(InitSpecMismatchError, match=r"4 tensor\(s\) cannot take the init spec") as info:
        rules.check(TARGET.tensors)
    problems = info.value.problems
    assert len(problems) == 4
    assert any("(rule '*') 'conv.bias' has shape (4,), but xavier_uniform needs at least 2 dims" in p for p in problems)
    assert any("'bn.weight'" in p for p in problems) and any("'head.bias'" in p for p in problems)
    assert all("running_mean" not in p and "num_batches_tracked" not in p for p in problems)


def test_check_refuses_random_specs_on_integer_tensors() -> None:
    rules = InitRules.from_user({"*.num_batches_tracked": "uniform"})
    t = TargetTensor("bn.num_batches_tracked", (), torch.int64, "bn", nn.BatchNorm2d, "num_batches_tracked", True)
    with pytest.raises(InitSpecMismatchError, match=r"dtype torch.int64, but uniform draws random floats"):
        rules.check([t])
