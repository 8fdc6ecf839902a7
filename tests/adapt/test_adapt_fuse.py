"""Fuse and split: separate q, k, v attention vs torch.nn.MultiheadAttention."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from weightsurgery.adapt import fuse_parts, run_adapter, split_part
from weightsurgery.errors import AdapterError


class SeparateAttention(nn.Module):
    """Single-head-per-slice attention written out with separate q, k, v projections."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        attn = (q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)).softmax(-1)
        return self.out_proj((attn @ v).transpose(1, 2).reshape(b, n, d))


def _fuse_into(sep: SeparateAttention, mha: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        for leaf in ("weight", "bias"):
            parts = [getattr(getattr(sep, p), leaf) for p in "qkv"]
            target = getattr(mha, f"in_proj_{leaf}")
            target.copy_(run_adapter("fuse", parts, tuple(target.shape), {"dim": 0}))
        mha.out_proj.load_state_dict(sep.out_proj.state_dict())


def test_multihead_attention_loaded_from_separate_projections_gives_the_same_outputs():
    torch.manual_seed(0)
    sep, mha = SeparateAttention(16, 4).eval(), nn.MultiheadAttention(16, 4, batch_first=True).eval()
    _fuse_into(sep, mha)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(mha(x, x, x, need_weights=False)[0], sep(x))


def test_split_back_restores_the_separate_projections():
    torch.manual_seed(0)
    sep, mha = SeparateAttention(8, 2), nn.MultiheadAttention(8, 2, batch_first=True)
    _fuse_into(sep, mha)
    back = SeparateAttention(8, 2)
    with torch.no_grad():
        for i, p in enumerate("qkv"):
            for leaf in ("weight", "bias"):
                target = getattr(getattr(back, p), leaf)
                args = {"index": i, "sizes": [8, 8, 8], "dim": 0}
                target.copy_(run_adapter("split", [getattr(mha, f"in_proj_{leaf}")], tuple(target.shape), args))
    back.out_proj.load_state_dict(sep.out_proj.state_dict())
    for (name, a), b in zip(sep.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_gqa_sizes_and_gate_up():
    q, k, v = torch.randn(8, 4), torch.randn(2, 4), torch.randn(2, 4)
    fused = fuse_parts([q, k, v])
    assert torch.equal(split_part(fused, index=1, sizes=[8, 2, 2]), k)
    gate, up = torch.randn(6, 4), torch.randn(6, 4)
    gate_up = run_adapter("fuse", [gate, up], (12, 4), {})
    assert torch.equal(run_adapter("split", [gate_up], (6, 4), {"index": 1, "sizes": [6, 6]}), up)


def test_bad_sizes_and_parts_are_named():
    with pytest.raises(
        AdapterError, match=r"split: sizes \[4, 4\] do not add up to dim 0 of a tensor of shape \(12, 4\)"
    ):
        split_part(torch.zeros(12, 4), index=0, sizes=[4, 4])
    with pytest.raises(AdapterError, match=r"split: index 3 out of range for 3 parts"):
        split_part(torch.zeros(12, 4), index=3, sizes=[4, 4, 4])
    with pytest.raises(AdapterError, match=r"fuse: parts \[\(2, 4\), \(2, 3\)\] cannot be concatenated along dim 0"):
        fuse_parts([torch.zeros(2, 4), torch.zeros(2, 3)])
