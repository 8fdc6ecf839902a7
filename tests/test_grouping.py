"""Key grouping for reports: compact, exact, order-preserving."""

from __future__ import annotations

import pytest
import timm
import torch
from hypothesis import given
from hypothesis import strategies as st

from weightsurgery._grouping import expand_group, group_keys


def _expanded(groups: list[str]) -> list[str]:
    return [k for g in groups for k in expand_group(g)]


def test_resnet_batch_norm_keys_collapse_to_one_line() -> None:
    keys = [f"layer{i}.{b}.bn{n}.{p}" for i in range(1, 5) for b in (0, 1) for n in (1, 2) for p in ("weight", "bias")]
    assert group_keys(keys) == ["layer{1..4}.{0,1}.bn{1,2}.{weight,bias}"]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ([f"blocks.{i}.attn.qkv.weight" for i in range(12)], ["blocks.{0..11}.attn.qkv.weight"]),
        ([f"blocks.{i}.mlp" for i in (0, 2, 5)], ["blocks.{0,2,5}.mlp"]),
        (["a.0", "a.1"], ["a.{0,1}"]),
        (["fc.bias", "fc.weight"], ["fc.{bias,weight}"]),
        (["x.q.weight", "x.k.weight", "x.v.weight"], ["x.{q,k,v}.weight"]),
        (["only.key"], ["only.key"]),
        ([], []),
    ],
)
def test_runs_and_alternatives(keys: list[str], expected: list[str]) -> None:
    assert group_keys(keys) == expected


def test_nothing_is_invented_when_the_keys_are_not_a_full_product() -> None:
    keys = ["layer1.0.weight", "layer1.1.weight", "layer2.0.weight"]
    groups = group_keys(keys)
    assert sorted(_expanded(groups)) == sorted(keys)
    assert "layer2.1.weight" not in _expanded(groups)


def test_top_level_names_merge_only_when_numbered() -> None:
    assert group_keys(["norm.weight", "norm.bias", "head.weight", "head.bias"]) == [
        "norm.{weight,bias}",
        "head.{weight,bias}",
    ]
    assert group_keys(["0.weight", "1.weight", "2.weight"]) == ["{0..2}.weight"]


def test_first_seen_order_of_groups_and_alternatives_is_kept() -> None:
    keys = ["z.weight", "a.1.bias", "a.0.bias", "z.bias", "m"]
    assert group_keys(keys) == ["z.{weight,bias}", "a.{0,1}.bias", "m"]


def test_zero_padded_numbers_are_not_rewritten() -> None:
    groups = group_keys(["layer01.w", "layer02.w", "layer10.w"])
    assert sorted(_expanded(groups)) == ["layer01.w", "layer02.w", "layer10.w"]


def test_keys_with_brace_characters_are_left_alone() -> None:
    keys = ["odd{1}.w", "odd{2}.w", "a,b.w", "c.w"]
    assert group_keys(keys)[:3] == ["odd{1}.w", "odd{2}.w", "a,b.w"]


def test_duplicates_are_ignored() -> None:
    assert group_keys(["a.w", "a.w", "a.b"]) == ["a.{w,b}"]


def test_expand_group_reads_ranges_and_lists() -> None:
    assert expand_group("s{1..3}.{x,y}") == ["s1.x", "s1.y", "s2.x", "s2.y", "s3.x", "s3.y"]
    assert expand_group("plain.key") == ["plain.key"]
    with pytest.raises(ValueError, match=r"range \{5..2\} runs backwards; write \{2..5\}"):
        expand_group("a.{5..2}")


@pytest.mark.parametrize(("name", "limit"), [("resnet18", 15), ("vit_tiny_patch16_224", 15)])
def test_real_models_group_compactly(name: str, limit: int) -> None:
    with torch.device("meta"):
        keys = list(timm.create_model(name).state_dict())
    groups = group_keys(keys)
    assert len(groups) <= limit, groups
    assert sorted(_expanded(groups)) == sorted(keys)
    assert len(_expanded(groups)) == len(keys)


component = st.one_of(
    st.sampled_from(["weight", "bias", "layer", "bn", "conv", "q", "k", "v", "", "01"]),
    st.integers(0, 12).map(str),
    st.tuples(st.sampled_from(["layer", "bn", "fc", "x1y"]), st.integers(0, 12)).map(lambda t: f"{t[0]}{t[1]}"),
)
keys_strategy = st.lists(st.lists(component, min_size=1, max_size=4).map(".".join), max_size=40)


@given(keys_strategy)
def test_expanding_the_groups_gives_back_exactly_the_keys(keys: list[str]) -> None:
    groups = group_keys(keys)
    expanded = _expanded(groups)
    assert len(expanded) == len(set(expanded)), "groups must not overlap"
    assert set(expanded) == set(keys)
    assert len(groups) <= len(set(keys))
