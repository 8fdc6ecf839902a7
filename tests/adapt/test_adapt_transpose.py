"""Transpose (Conv1D <-> Linear) and reshape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightsurgery.adapt import permute_dims, run_adapter
from weightsurgery.errors import AdapterError


class Conv1D(nn.Module):
    """GPT-2's layout: weight stored (in, out), y = x @ W + b."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.randn(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


def test_conv1d_into_linear_and_back_gives_the_same_outputs():
    torch.manual_seed(0)
    conv, linear = Conv1D(6, 4), nn.Linear(4, 6)
    with torch.no_grad():
        linear.weight.copy_(run_adapter("transpose", [conv.weight], (6, 4), {}))
        linear.bias.copy_(conv.bias)
    x = torch.randn(3, 4)
    torch.testing.assert_close(linear(x), conv(x))
    back = run_adapter("transpose", [linear.weight], (4, 6), {})
    assert torch.equal(back, conv.weight) and back.is_contiguous()


def test_permutation_and_reshape():
    t = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(permute_dims(t, [2, 0, 1]), t.permute(2, 0, 1))
    assert torch.equal(run_adapter("reshape", [t], (6, 4), {}), t.reshape(6, 4))


def test_bad_permutation_and_reshape_are_named():
    with pytest.raises(AdapterError, match=r"transpose: dims \[0, 0\] is not a permutation of the 2 dims of \(2, 3\)"):
        permute_dims(torch.zeros(2, 3), [0, 0])
    with pytest.raises(AdapterError, match=r"reshape: source \(2, 3\) has 6 elements, target \(4, 2\) has 8"):
        run_adapter("reshape", [torch.zeros(2, 3)], (4, 2), {})
