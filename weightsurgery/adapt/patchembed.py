"""Patch-embedding kernels: resample to a new patch size, FlexiViT style.

A patch embedding computes ``<x, w>`` for each patch ``x`` (flattened ``P x P``
per channel). Resizing the patch by a linear map ``x' = B x`` (``B`` the
``P'^2 x P^2`` interpolation matrix) keeps the tokens when the kernel becomes
``w' = pinv(B)^T w``: then ``<B x, w'> = <x, B^T pinv(B)^T w> = <x, w>`` whenever
``B`` has full column rank (``P' >= P``). Shrinking is the least-squares
solution. (Beyer et al., "FlexiViT: One Model for All Patch Sizes", 2023.)

This is timm's ``timm.layers.resample_patch_embed``, used as-is: it builds
``B`` from :func:`torch.nn.functional.interpolate` with the same mode and
antialias flag the image resize would use, and solves in float32; there is
nothing to add to it beyond checking the inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor

from weightsurgery.adapt.registry import one_tensor, register_adapter
from weightsurgery.errors import AdapterError

__all__ = ["resample_patch_kernel"]


def resample_patch_kernel(
    weight: Tensor,
    new_size: Sequence[int],
    *,
    interpolation: Literal["bicubic", "bilinear"] = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """Resample a patch-embedding kernel ``(D, C, P, P)`` to ``(D, C, *new_size)``.

    Args:
        weight: the source conv weight ``(D, C, H, W)``.
        new_size: the new kernel size ``(H', W')``.
        interpolation: the resize mode the images will use (``bicubic`` or ``bilinear``).
        antialias: whether the image resize anti-aliases.

    Returns:
        The resampled kernel, in ``weight``'s dtype.

    Raises:
        AdapterError: ``weight`` is not 4D, or ``new_size`` is not two positive ints.

    Example:
        >>> import torch
        >>> resample_patch_kernel(torch.randn(8, 3, 16, 16), (8, 8)).shape
        torch.Size([8, 3, 8, 8])
    """
    if weight.dim() != 4:
        raise AdapterError(f"patch_embed: expected a Conv2d kernel (D, C, H, W), got shape {tuple(weight.shape)}")
    size = [int(s) for s in new_size]
    if len(size) != 2 or min(size) < 1:
        raise AdapterError(f"patch_embed: new_size must be two positive ints (H, W), got {list(new_size)}")
    if interpolation not in ("bicubic", "bilinear"):
        raise AdapterError(f"patch_embed: interpolation={interpolation!r}; valid modes are bicubic, bilinear")
    from timm.layers import resample_patch_embed  # timm is imported when an adapter runs, not with the package
    return resample_patch_embed(weight, size, interpolation=interpolation, antialias=antialias)


@register_adapter("patch_embed")
def _patch_embed(
    tensors: Sequence[Tensor],
    target_shape: tuple[int, ...],
    *,
    interpolation: Literal["bicubic", "bilinear"] = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """Patch-embedding kernel resample ``P x P -> P' x P'`` by the pseudo-inverse of the resize.

    Options: ``interpolation``, ``antialias``; the new size is the target's kernel size.
    """
    src = one_tensor(tensors, "patch_embed")
    if src.dim() != 4 or tuple(src.shape[:2]) != tuple(target_shape[:2]):
        raise AdapterError(
            f"patch_embed: source {tuple(src.shape)} and target {target_shape} must differ only in the kernel size"
        )
    return resample_patch_kernel(src, target_shape[2:], interpolation=interpolation, antialias=antialias)
