"""The squeeze adapter: size-1 dims added or dropped, exactly, and proposed only where that is lossless."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from weightsurgery.adapt import AdaptContext, get_adapter, propose_adapter, run_adapter, squeezable, squeeze_to
from weightsurgery.errors import AdapterError
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta
from weightsurgery.transfer import transfer


class LayerScaleCHW(nn.Module):
    """torchvision ConvNeXt style: ``layer_scale`` of shape (C, 1, 1), and a 1x1 conv head."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_scale = nn.Parameter(torch.randn(4, 1, 1))
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x * self.layer_scale).mean((2, 3))


class LayerScaleC(nn.Module):
    """The same function, timm style: ``layer_scale`` of shape (C,), and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_scale = nn.Parameter(torch.zeros(4))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x * self.layer_scale[:, None, None]).mean((2, 3)))


def test_transfer_with_adapt_squeezes_and_keeps_the_function():
    torch.manual_seed(0)
    src, dst = LayerScaleCHW().eval(), LayerScaleC().eval()
    report = transfer(src, dst, on_mismatch="adapt")
    assert report.initialized == []
    assert {k: r.adapter for k, r in report.records.items()} == {
        "layer_scale": "squeeze", "head.weight": "squeeze", "head.bias": None,
    }  # fmt: skip
    assert torch.equal(dst.layer_scale.detach(), src.layer_scale.detach().reshape(4))
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


@pytest.mark.filterwarnings("ignore:only .* of the target's parameters")
def test_transfer_without_adapt_leaves_the_constructors_values_and_says_the_shapes():
    report = transfer(LayerScaleC(), LayerScaleCHW(), seed=0)
    assert set(report.kept) == {"layer_scale", "head.weight"} and report.initialized == []
    assert "shape mismatch: layer_scale (4, 1, 1) vs source layer_scale (4" in report.records["layer_scale"].evidence


def _propose(target_shape: tuple[int, ...], source_shape: tuple[int, ...]) -> object:
    module = nn.Module()
    module.w = nn.Parameter(torch.zeros(target_shape))
    ctx = AdaptContext(TargetSpec.from_module(module), {"w": TensorMeta(source_shape, torch.float32)})
    return propose_adapter("w", "w", ctx)


@pytest.mark.parametrize(
    ("target", "source"), [((96,), (96, 1, 1)), ((1280, 960, 1, 1), (1280, 960)), ((1, 5, 8), (5, 8))]
)
def test_proposed_when_only_size_one_dims_differ(target: tuple[int, ...], source: tuple[int, ...]):
    assert _propose(target, source) == ("squeeze", {})


@pytest.mark.parametrize(("target", "source"), [((1, 6), (6, 1)), ((6, 4), (4, 6, 1)), ((24,), (4, 6))])
def test_not_proposed_for_a_moved_singleton_or_other_numbers(target: tuple[int, ...], source: tuple[int, ...]):
    assert _propose(target, source) != ("squeeze", {})


def test_not_proposed_across_a_transposed_conv1d():
    ctx = AdaptContext(
        TargetSpec.from_module(nn.Sequential(nn.Conv2d(4, 4, 1))),
        {"0.weight": TensorMeta((4, 4), torch.float32)},
        source_metadata={"module_types": {"0": "Conv1D"}},
    )
    assert propose_adapter("0.weight", "0.weight", ctx) != ("squeeze", {})


def test_other_numbers_are_refused_naming_both_shapes():
    with pytest.raises(AdapterError, match=r"squeeze: source \(4, 6\) and target \(24,\) differ in more than size-1"):
        run_adapter("squeeze", [torch.zeros(4, 6)], (24,), {})
    assert get_adapter("squeeze").params == frozenset()


@given(st.lists(st.integers(1, 4), min_size=0, max_size=4), st.lists(st.integers(0, 4), max_size=3))
def test_squeeze_round_trips_exactly(dims: list[int], ones_at: list[int]):
    tensor = torch.randn(dims) if dims else torch.randn(())
    shape = list(tensor.shape)
    for i in ones_at:
        shape.insert(min(i, len(shape)), 1)
    out = squeeze_to(tensor, shape)
    assert list(out.shape) == shape and out.is_contiguous()
    assert torch.equal(squeeze_to(out, tensor.shape), tensor)
    assert squeezable(tensor.shape, shape) == (tuple(shape) != tuple(tensor.shape))
