"""Patch-embedding kernel resampling (FlexiViT pseudo-inverse)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weightsurgery.adapt import resample_patch_kernel, run_adapter
from weightsurgery.errors import AdapterError


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_tokens_of_an_upsampled_image_match_the_original_tokens(mode):
    torch.manual_seed(0)
    kernel = torch.randn(6, 3, 4, 4)
    new_kernel = run_adapter("patch_embed", [kernel], (6, 3, 8, 8), {"interpolation": mode})
    patch = torch.randn(5, 3, 4, 4)
    upsampled = F.interpolate(patch, size=(8, 8), mode=mode, antialias=True)
    old_tokens = F.conv2d(patch, kernel, stride=4)
    new_tokens = F.conv2d(upsampled, new_kernel, stride=8)
    torch.testing.assert_close(new_tokens, old_tokens, atol=1e-4, rtol=1e-4)


def test_same_size_is_the_identity_and_dtype_is_kept():
    kernel = torch.randn(2, 3, 16, 16, dtype=torch.bfloat16)
    assert torch.equal(resample_patch_kernel(kernel, (16, 16)), kernel)
    assert resample_patch_kernel(kernel, (8, 8)).dtype is torch.bfloat16


def test_bad_shapes_are_refused():
    with pytest.raises(
        AdapterError,
        match=r"patch_embed: source \(2, 3, 4, 4\) and target \(2, 1, 8, 8\) must differ only in the kernel",
    ):
        run_adapter("patch_embed", [torch.zeros(2, 3, 4, 4)], (2, 1, 8, 8), {})
    with pytest.raises(AdapterError, match=r"new_size must be two positive ints \(H, W\), got \[8\]"):
        resample_patch_kernel(torch.zeros(2, 3, 4, 4), [8])
