"""First-conv input channels: 3 -> 1 sums, 3 -> N repeats and rescales."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightsurgery.adapt import adapt_input_channels, run_adapter
from weightsurgery.errors import AdapterError


def _conv_with(weight: torch.Tensor, like: nn.Conv2d) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], like.out_channels, like.kernel_size, padding=like.padding)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(like.bias)
    return conv


def test_rgb_to_gray_gives_the_activations_of_the_replicated_image():
    torch.manual_seed(0)
    rgb = nn.Conv2d(3, 8, 3, padding=1)
    gray = _conv_with(run_adapter("input_channels", [rgb.weight], (8, 1, 3, 3), {}), rgb)
    image = torch.randn(2, 1, 9, 9)
    torch.testing.assert_close(gray(image), rgb(image.expand(-1, 3, -1, -1)))


@pytest.mark.parametrize("channels", [6, 9])
def test_three_to_multiple_of_three_gives_the_same_activations_on_a_replicated_image(channels):
    torch.manual_seed(0)
    rgb = nn.Conv2d(3, 8, 3, padding=1)
    wide = _conv_with(adapt_input_channels(rgb.weight, channels), rgb)
    image = torch.randn(2, 1, 9, 9)
    torch.testing.assert_close(wide(image.expand(-1, channels, -1, -1)), rgb(image.expand(-1, 3, -1, -1)))


@pytest.mark.parametrize("channels", [2, 4, 5, 7])
def test_any_count_repeats_slices_and_rescales(channels):
    w = torch.randn(8, 3, 3, 3)
    repeats = -(-channels // 3)
    expected = w.repeat(1, repeats, 1, 1)[:, :channels] * (3 / channels)
    torch.testing.assert_close(adapt_input_channels(w, channels), expected)


def test_three_to_four_keeps_the_activation_scale():
    torch.manual_seed(0)
    rgb = nn.Conv2d(3, 256, 3, padding=1, bias=False)
    wide = nn.Conv2d(4, 256, 3, padding=1, bias=False)
    with torch.no_grad():
        wide.weight.copy_(adapt_input_channels(rgb.weight, 4))
    image = torch.randn(4, 1, 16, 16)
    ratio = wide(image.expand(-1, 4, -1, -1)).std() / rgb(image.expand(-1, 3, -1, -1)).std()
    assert 0.8 < ratio.item() < 1.2


def test_conv1d_and_half_precision_are_supported():
    w = torch.randn(4, 2, 5, dtype=torch.float16)
    out = adapt_input_channels(w, 1)
    assert out.dtype is torch.float16
    torch.testing.assert_close(out.float(), w.float().sum(1, keepdim=True), atol=1e-2, rtol=1e-3)


def test_same_channels_is_the_identity():
    w = torch.randn(4, 3, 3, 3)
    assert torch.equal(adapt_input_channels(w, 3), w)


def test_input_channels_refuses_other_differences():
    with pytest.raises(
        AdapterError, match=r"input_channels: source \(8, 3, 3, 3\) and target \(4, 1, 3, 3\) must differ only in dim 1"
    ):
        run_adapter("input_channels", [torch.zeros(8, 3, 3, 3)], (4, 1, 3, 3), {})
    with pytest.raises(AdapterError, match=r"expected a conv weight \(O, C, \*kernel\), got shape \(8, 3\)"):
        adapt_input_channels(torch.zeros(8, 3), 1)
