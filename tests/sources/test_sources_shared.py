"""One notion of a shared tensor: identity, the same view of the same bytes, or safetensors alias metadata."""

from __future__ import annotations

import torch
from safetensors.torch import save_file
from torch import nn

from weightsurgery.sources import resolve
from weightsurgery.sources.memory import from_module
from weightsurgery.sources.shared import overlapping, shared_groups, unused_sources


def test_groups_by_identity_and_by_view_never_by_value() -> None:
    w = torch.randn(3, 2)
    p = nn.Parameter(w)  # a second object over the same bytes
    groups = shared_groups({"a": w, "b": w, "c": p, "d": w.clone(), "e": w.t(), "f": w[:1]})
    assert groups == [["a", "b", "c"]]


def test_meta_tensors_share_only_by_identity() -> None:
    with torch.device("meta"):
        x, y = torch.empty(2), torch.empty(2)
    assert shared_groups({"x": x, "x2": x, "y": y}) == [["x", "x2"]]


def test_a_pickled_tied_state_dict_keeps_its_group(tmp_path) -> None:
    w = torch.randn(4, 2)
    torch.save({"embed.weight": w, "head.weight": w, "other": w.clone()}, tmp_path / "t.pth")
    with resolve(tmp_path / "t.pth") as ckpt:
        assert ckpt.metadata["tied"] == [["embed.weight", "head.weight"]]


def test_safetensors_aliases_follow_a_key_prefix(tmp_path) -> None:
    w = torch.randn(4, 2)
    save_file({"ema.embed": w}, tmp_path / "m.safetensors", metadata={"format": "pt", "ema.head": "ema.embed"})
    with resolve(tmp_path / "m.safetensors", key="ema") as ckpt:
        assert ckpt.keys() == ["embed", "head"]
        assert ckpt.metadata["tied"] == [["embed", "head"]]
        assert torch.equal(ckpt.load("head"), w) and torch.equal(ckpt.load("embed"), w)


def test_disjoint_views_of_one_flat_buffer_do_not_overlap() -> None:
    flat = torch.zeros(10)
    assert overlapping({"a": flat[:4].view(2, 2), "b": flat[4:]}) == []
    assert overlapping({"a": flat[:5], "b": flat[4:]}) == [("a", "b")]


def test_unused_counts_a_group_as_read_when_one_name_was() -> None:
    assert unused_sources(["head"], ["embed", "head", "x"], [["embed", "head"]]) == ("x",)
    assert unused_sources([], ["embed", "head"], [["embed", "head"]]) == ("embed", "head")


def test_from_module_groups_are_the_state_dict_ties() -> None:
    net = nn.Sequential(nn.Embedding(4, 2), nn.Linear(2, 4, bias=False))
    net[1].weight = net[0].weight
    assert from_module(net).metadata["tied"] == [["0.weight", "1.weight"]]
