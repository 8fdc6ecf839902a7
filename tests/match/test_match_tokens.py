"""Name similarity (tokens) and numeric-aware module order (order)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightsurgery.match.order import leaf_rank, looks_sorted, natural_key, natural_order
from weightsurgery.match.tokens import (
    alpha_stem,
    concepts,
    index_agreement,
    leaf_role,
    name_similarity,
    numeric_components,
    split_tokens,
)

# --- tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tokens"),
    [
        ("selfAttn", ("self", "attn")),
        ("LayerNorm", ("layer", "norm")),
        ("HTTPServer", ("http", "server")),
        ("_blocks.12._bn0", ("blocks", "12", "bn", "0")),
        ("conv_pwl", ("conv", "pwl")),
    ],
)
def test_split_tokens(name: str, tokens: tuple[str, ...]) -> None:
    assert split_tokens(name) == tokens


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("q", "query"),
        ("k", "key"),
        ("v", "value"),
        ("attn", "attention"),
        ("proj", "dense"),
        ("fc", "linear"),
        ("ln", "LayerNorm"),
        ("bn", "batch_norm"),
        ("norm", "BatchNorm"),
        ("emb", "embeddings"),
        ("conv", "convolution"),
        ("dw", "depthwise"),
        ("pw", "pointwise"),
        ("se", "squeeze_excite"),
        ("mlp", "feed_forward"),
        ("blocks", "layers"),
        ("attn.q", "attention.self.query"),
    ],
)
def test_synonyms_mean_the_same(a: str, b: str) -> None:
    assert name_similarity(a, b) == 1.0


@pytest.mark.parametrize(
    ("a", "b"), [("q", "k"), ("query", "value"), ("conv", "norm"), ("dw", "pw"), ("left", "right")]
)
def test_different_roles_share_nothing(a: str, b: str) -> None:
    assert name_similarity(a, b) == 0.0


def test_digits_do_not_count_as_words() -> None:
    assert concepts("bn1") == concepts("_bn2") == ("norm",)
    assert name_similarity("layer.0.fc", "layer.7.fc") == 1.0


_NAMES = st.lists(
    st.sampled_from(["q", "attn", "norm", "Conv", "blocks", "x", "12", "mlpBlock", "se"]), max_size=5
).map(".".join)


@given(_NAMES, _NAMES)
def test_similarity_is_symmetric_and_bounded(a: str, b: str) -> None:
    s = name_similarity(a, b)
    assert s == name_similarity(b, a)
    assert 0.0 <= s <= 1.0
    if concepts(a):
        assert name_similarity(a, a) == 1.0


def test_numbers() -> None:
    assert numeric_components("blocks.2.1.conv.weight") == (2, 1)
    assert index_agreement("layers.3", "blocks.3") == 1.0
    assert index_agreement("stage.1.3", "blocks.3") == 0.5
    assert index_agreement("_blocks.7", "blocks.2.1") == 0.0


def test_stems_and_roles() -> None:
    assert alpha_stem("conv1") == alpha_stem("conv2") != alpha_stem("conv_dw")
    assert leaf_role("gamma") == leaf_role("weight") == "weight"
    assert leaf_role("beta") == "bias"
    assert leaf_role("moving_mean") == "running_mean"
    assert leaf_role("pos_embed") == "pos_embed"


# --- order -----------------------------------------------------------------------------------


def test_numbers_sort_as_numbers() -> None:
    keys = ["blocks.10.weight", "blocks.9.weight", "blocks.1.weight", "blocks.2.weight"]
    assert natural_order(keys) == ["blocks.1.weight", "blocks.2.weight", "blocks.9.weight", "blocks.10.weight"]
    assert natural_key("layer2") < natural_key("layer10")


def test_canonical_leaf_order_within_a_module() -> None:
    keys = ["bn.running_var", "bn.num_batches_tracked", "bn.bias", "bn.running_mean", "bn.weight"]
    assert natural_order(keys) == [
        "bn.weight",
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
    ]
    assert sorted(["cls_token", "beta", "gamma"], key=leaf_rank) == ["gamma", "beta", "cls_token"]


@given(st.permutations([f"b.{i}.{leaf}" for i in range(12) for leaf in ("weight", "bias")]))
def test_natural_order_ignores_the_given_order(keys: list[str]) -> None:
    assert natural_order(keys) == [f"b.{i}.{leaf}" for i in range(12) for leaf in ("weight", "bias")]


def test_sorted_files_are_recognised() -> None:
    module_order = ["stem.weight", "stem.bias", "blocks.0.weight", "blocks.0.bias", "head.weight", "head.bias"]
    assert not looks_sorted(module_order)
    assert looks_sorted(sorted(module_order))
    assert looks_sorted(sorted(module_order, key=natural_key))
    shuffled = module_order[:]
    random.Random(0).shuffle(shuffled)
    assert not looks_sorted(shuffled)
