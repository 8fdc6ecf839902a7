"""The fused matching strategy: q,k,v <-> qkv / in_proj, gate,up <-> gate_up, in both directions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightsurgery.match.base import MatchContext
from weightsurgery.match.fused import fused_roles, match_fused, part_role
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta

F32 = torch.float32


def _ctx(source: dict[str, tuple[int, ...]], target: nn.Module) -> MatchContext:
    spec = TargetSpec.from_module(target)
    metas = {k: TensorMeta(s, F32) for k, s in source.items()}
    return MatchContext(metas, spec, list(spec.tensors), list(metas))


class Separate(nn.Module):
    def __init__(self, names=("q", "k", "v"), sizes=(8, 8, 8), dim: int = 8, bias: bool = True) -> None:
        super().__init__()
        for n, s in zip(names, sizes, strict=True):
            setattr(self, n, nn.Linear(dim, s, bias=bias))


class Fused(nn.Module):
    def __init__(self, out: int = 24, dim: int = 8, name: str = "qkv") -> None:
        super().__init__()
        setattr(self, name, nn.Linear(dim, out))


def _wrap(**modules: nn.Module) -> nn.Module:
    root = nn.Module()
    for k, m in modules.items():
        setattr(root, k, m)
    return root


def _shapes(module: nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_separate_query_key_value_into_fused_qkv_with_a_wrapper_prefix():
    source = _shapes(_wrap(attn=Separate(("query", "key", "value"))), "module.")
    result = match_fused(_ctx(source, _wrap(attn=Fused())))
    assert [(m.target, m.sources, m.adapter, dict(m.adapter_args)) for m in result.matches] == [
        (
            "attn.qkv.weight",
            ("module.attn.query.weight", "module.attn.key.weight", "module.attn.value.weight"),
            "fuse",
            {"dim": 0},
        ),
        (
            "attn.qkv.bias",
            ("module.attn.query.bias", "module.attn.key.bias", "module.attn.value.bias"),
            "fuse",
            {"dim": 0},
        ),
    ]
    assert result.abstentions == []


def test_fused_qkv_split_into_grouped_query_projections():
    source = _shapes(_wrap(blocks=nn.ModuleList([_wrap(attn=Fused(out=12)), _wrap(attn=Fused(out=12))])))
    target = _wrap(
        blocks=nn.ModuleList([_wrap(attn=Separate(("q_proj", "k_proj", "v_proj"), (8, 2, 2))) for _ in range(2)])
    )
    result = match_fused(_ctx(source, target))
    got = {m.target: (m.source, m.adapter, dict(m.adapter_args)) for m in result.matches}
    assert got["blocks.1.attn.k_proj.weight"] == (
        "blocks.1.attn.qkv.weight",
        "split",
        {"index": 1, "sizes": [8, 2, 2], "dim": 0},
    )
    assert got["blocks.0.attn.v_proj.bias"] == (
        "blocks.0.attn.qkv.bias",
        "split",
        {"index": 2, "sizes": [8, 2, 2], "dim": 0},
    )
    assert len(got) == 12


def test_multihead_attention_in_proj_both_ways():
    mha = nn.MultiheadAttention(8, 2)
    to_mha = match_fused(_ctx(_shapes(_wrap(attn=Separate())), _wrap(attn=mha)))
    assert {m.target for m in to_mha.matches} == {"attn.in_proj_weight", "attn.in_proj_bias"}
    from_mha = match_fused(_ctx(_shapes(_wrap(attn=mha)), _wrap(attn=Separate())))
    assert {m.target: m.source for m in from_mha.matches}["attn.k.weight"] == "attn.in_proj_weight"


def test_gate_up_projection():
    source = _shapes(_wrap(mlp=Separate(("gate_proj", "up_proj"), (16, 16), bias=False)))
    result = match_fused(_ctx(source, _wrap(mlp=Fused(32, name="gate_up_proj"))))
    assert [m.sources for m in result.matches] == [("mlp.gate_proj.weight", "mlp.up_proj.weight")]
    assert result.abstentions == []  # the fused bias has no separate counterpart at all: not this strategy's call


def test_shapes_that_do_not_add_up_abstain():
    source = _shapes(_wrap(attn=Separate()))
    result = match_fused(_ctx(source, _wrap(attn=Fused(out=30))))
    assert result.matches == []
    assert result.abstentions[0].reason == (
        "shapes do not add up: attn.qkv.weight (30, 8) vs "
        "attn.q.weight (8, 8), attn.k.weight (8, 8), attn.v.weight (8, 8)"
    )


def test_missing_part_abstains_and_unrelated_keys_are_untouched():
    source = {"attn.q.bias": (8,), "attn.v.bias": (8,), "fc.weight": (8, 8)}  # Whisper-style: no k bias
    target = _wrap(attn=Fused(), fc=nn.Linear(8, 8))
    result = match_fused(_ctx(source, target))
    assert result.matches == []
    assert [a.target for a in result.abstentions] == ["attn.qkv.bias"]
    assert "the source has no k bias" in result.abstentions[0].reason


def test_two_fused_candidates_for_one_group_abstain():
    source = {"a.attn.qkv.weight": (24, 8), "b.attn.qkv.weight": (24, 8)}
    target = _wrap(attn=Separate(bias=False))
    result = match_fused(_ctx(source, target))
    assert result.matches == []
    assert {a.target for a in result.abstentions} == {"attn.q.weight", "attn.k.weight", "attn.v.weight"}
    assert result.abstentions[0].candidates == ("a.attn.qkv.weight", "b.attn.qkv.weight")


def _sorted(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """As a .safetensors file lists them: sorted, so key < query < value."""
    return dict(sorted(shapes.items()))


class _HfLayer(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.attention = _wrap(self=Separate(("query", "key", "value"), (dim,) * 3, dim))


def test_query_key_value_into_qkv_of_another_naming_pairs_by_layer_index_in_name_order():
    source = _sorted(_shapes(_wrap(encoder=_wrap(layer=nn.ModuleList([_HfLayer(), _HfLayer()])))))
    assert list(source)[:3] == [
        "encoder.layer.0.attention.self.key.bias", "encoder.layer.0.attention.self.key.weight",
        "encoder.layer.0.attention.self.query.bias",
    ]  # fmt: skip
    target = _wrap(layers=nn.ModuleList([_wrap(self_attn=Fused()), _wrap(self_attn=Fused())]))
    result = match_fused(_ctx(source, target))
    got = {m.target: m.sources for m in result.matches}
    assert got["layers.1.self_attn.qkv.weight"] == tuple(
        f"encoder.layer.1.attention.self.{p}.weight" for p in ("query", "key", "value")
    )
    assert len(got) == 4 and result.abstentions == []


def test_layer_index_pairing_needs_a_one_to_one_correspondence():
    # two separate groups in layer 0 (self- and cross-attention) for one fused qkv: no pairing by index
    source = _shapes(_wrap(blocks=nn.ModuleList([_wrap(self_attn=Separate(), cross=Separate())])))
    target = _wrap(layers=nn.ModuleList([_wrap(attn=Fused())]))
    result = match_fused(_ctx(source, target))
    assert result.matches == []


def test_layer_index_pairing_still_needs_shapes_that_add_up():
    source = _shapes(_wrap(encoder=_wrap(layer=nn.ModuleList([_HfLayer()]))))
    target = _wrap(layers=nn.ModuleList([_wrap(attn=Fused(out=27))]))
    result = match_fused(_ctx(source, target))
    assert result.matches == []
    assert result.abstentions[0].reason.startswith("shapes do not add up: layers.0.attn.qkv.weight (27, 8)")


def test_split_order_comes_from_the_fused_name():
    source = _shapes(_wrap(attn=Fused(out=16, name="kv")))  # [k; v]
    target = _wrap(attn=Separate(("v_proj", "k_proj"), (8, 8)))
    got = {m.target: dict(m.adapter_args)["index"] for m in match_fused(_ctx(source, target)).matches}
    assert got == {"attn.k_proj.weight": 0, "attn.k_proj.bias": 0, "attn.v_proj.weight": 1, "attn.v_proj.bias": 1}


def test_interleaved_query_key_value_is_never_treated_as_fused():
    source = _shapes(_wrap(attn=Fused(name="query_key_value")))  # GPT-NeoX: per-head interleaved
    result = match_fused(_ctx(source, _wrap(attn=Separate())))
    assert result.matches == [] and result.abstentions == []


def test_two_keys_for_one_role_are_unclear_and_abstain():
    source = _shapes(_wrap(attn=Separate(("q", "query", "k", "v"), (8, 8, 8, 8))))
    result = match_fused(_ctx(source, _wrap(attn=Fused())))
    assert result.matches == []
    assert "several keys for one role" in result.abstentions[0].reason
    assert "q: attn.q.weight, attn.query.weight" in result.abstentions[0].reason


@pytest.mark.parametrize(
    ("name", "role"),
    [("q", "q"), ("query", "q"), ("k_proj", "k"), ("to_v", "v"), ("value_lin", "v"), ("gate_proj", "gate"),
     ("fc1", None), ("qk", None), ("key_value", None), ("keyframe", None)],
)  # fmt: skip
def test_part_role(name: str, role: str | None):
    found = part_role(name)
    assert (found[0] if found else None) == role


@pytest.mark.parametrize(
    ("name", "roles"),
    [("qkv", ("q", "k", "v")), ("to_qkv", ("q", "k", "v")), ("qkv_proj", ("q", "k", "v")), ("kv", ("k", "v")),
     ("gate_up_proj", ("gate", "up")), ("up_gate_proj", None), ("query_key_value", None), ("Wqkv", None),
     ("c_attn", None), ("qq", None), ("q", None)],
)  # fmt: skip
def test_fused_roles(name: str, roles: tuple[str, ...] | None):
    assert fused_roles(name) == roles
