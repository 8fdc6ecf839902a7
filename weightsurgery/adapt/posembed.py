"""ViT position embeddings: resample the patch grid, keep the prefix tokens.

A position embedding holds ``p + H * W`` rows of width ``D``: ``p`` prefix
tokens (class, distillation, register tokens) followed by one row per patch of
an ``H x W`` grid, row-major. Resampling keeps the ``p`` prefix rows as they
are and treats the grid rows as a ``D``-channel ``H x W`` image resized to
``H' x W'`` with :func:`torch.nn.functional.interpolate` (through timm's
``resample_abs_pos_embed``). Resampling to the same grid is the identity.

Both layouts are handled: ``(1, N, D)`` (timm, torchvision ``pos_embedding``)
and ``(N, D)`` (an ``nn.Embedding``, as in CLIP's ``position_embedding``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from torch import Tensor

from weightsurgery.adapt.registry import one_tensor, register_adapter
from weightsurgery.errors import AdapterError

__all__ = ["MAX_PREFIX_TOKENS", "infer_grids", "resample_pos_embed"]

Interpolation = Literal["bicubic", "bilinear", "nearest", "area"]
_MODES = ("bicubic", "bilinear", "nearest", "area")

#: The most prefix tokens auto-detection considers (class + distillation + registers).
MAX_PREFIX_TOKENS = 16


def resample_pos_embed(
    posemb: Tensor,
    *,
    new_grid: Sequence[int],
    old_grid: Sequence[int] | None = None,
    num_prefix_tokens: int = 1,
    interpolation: Interpolation = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """Resample a position embedding to ``new_grid``, keeping the prefix tokens.

    Args:
        posemb: ``(1, N, D)`` or ``(N, D)`` with ``N = num_prefix_tokens + H * W``.
        new_grid: the target grid ``(H', W')``.
        old_grid: the source grid ``(H, W)``; default: square.
        num_prefix_tokens: leading rows that are not on the grid.
        interpolation: ``F.interpolate`` mode.
        antialias: anti-alias when shrinking (bilinear/bicubic only).

    Returns:
        ``(1, p + H'W', D)`` or ``(p + H'W', D)``, in ``posemb``'s dtype
        (computed in float32).

    Raises:
        AdapterError: the token count does not fit the grids, or a bad mode.

    Example:
        >>> import torch
        >>> pe = torch.randn(1, 1 + 4 * 4, 8)
        >>> resample_pos_embed(pe, new_grid=(6, 6)).shape
        torch.Size([1, 37, 8])
        >>> torch.equal(resample_pos_embed(pe, new_grid=(4, 4))[:, :1], pe[:, :1])
        True
    """
    if interpolation not in _MODES:
        raise AdapterError(f"pos_embed: interpolation={interpolation!r}; valid modes are {', '.join(_MODES)}")
    if posemb.dim() not in (2, 3) or (posemb.dim() == 3 and posemb.shape[0] != 1):
        raise AdapterError(f"pos_embed: expected (1, N, D) or (N, D), got shape {tuple(posemb.shape)}")
    tokens = posemb.shape[-2]
    grid_tokens = tokens - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(max(grid_tokens, 0))
        old_grid = (side, side)
    old = (int(old_grid[0]), int(old_grid[1]))
    new = (int(new_grid[0]), int(new_grid[1]))
    if num_prefix_tokens < 0 or old[0] * old[1] != grid_tokens or min(*old, *new) < 1:
        raise AdapterError(
            f"pos_embed: {tokens} tokens are not {num_prefix_tokens} prefix token(s) + a {old[0]}x{old[1]} grid; "
            "set num_prefix_tokens and old_grid in adapter_args"
        )
    batched = posemb if posemb.dim() == 3 else posemb.unsqueeze(0)
    from timm.layers import resample_abs_pos_embed  # timm is imported when an adapter runs, not with the package
    out = resample_abs_pos_embed(
        batched,
        new_size=list(new),
        old_size=list(old),
        num_prefix_tokens=num_prefix_tokens,
        interpolation=interpolation,
        antialias=antialias and interpolation in ("bilinear", "bicubic"),
    )
    return out if posemb.dim() == 3 else out.squeeze(0)


def infer_grids(
    source_tokens: int, target_tokens: int, *, max_prefix: int = MAX_PREFIX_TOKENS
) -> tuple[int, tuple[int, int], tuple[int, int]] | str:
    """Find the prefix-token count and square grids that explain both token counts.

    ``p`` is the same on both sides; both ``source_tokens - p`` and
    ``target_tokens - p`` must be squares of at least 2x2. Exactly one ``p`` in
    ``0..max_prefix`` must fit, else the answer is a reason string.

    Args:
        source_tokens: rows in the source position embedding.
        target_tokens: rows in the target position embedding.
        max_prefix: the most prefix tokens to consider.

    Returns:
        ``(num_prefix_tokens, old_grid, new_grid)``, or why no unique answer exists.

    Example:
        >>> infer_grids(197, 577)
        (1, (14, 14), (24, 24))
        >>> infer_grids(196, 200)
        'no prefix-token count 0..16 makes both 196 and 200 tokens square grids'
    """
    fits = []
    for p in range(min(max_prefix, source_tokens, target_tokens) + 1):
        a, b = source_tokens - p, target_tokens - p
        sa, sb = math.isqrt(a), math.isqrt(b)
        if sa * sa == a and sb * sb == b and min(sa, sb) >= 2:
            fits.append((p, (sa, sa), (sb, sb)))
    if len(fits) == 1:
        return fits[0]
    if not fits:
        return (
            f"no prefix-token count 0..{max_prefix} makes both {source_tokens} and {target_tokens} tokens square grids"
        )
    ps = ", ".join(str(f[0]) for f in fits)
    return f"{source_tokens} -> {target_tokens} tokens fit several prefix-token counts ({ps}); use an AdaptRule"


@register_adapter("pos_embed")
def _pos_embed(
    tensors: Sequence[Tensor],
    target_shape: tuple[int, ...],
    *,
    new_grid: Sequence[int],
    old_grid: Sequence[int] | None = None,
    num_prefix_tokens: int = 1,
    interpolation: Interpolation = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """Position-embedding grid resample ``p + HW -> p + H'W'`` (prefix rows kept, grid interpolated).

    Options: ``new_grid``, ``old_grid``, ``num_prefix_tokens``, ``interpolation``, ``antialias``.
    """
    return resample_pos_embed(
        one_tensor(tensors, "pos_embed"),
        new_grid=new_grid,
        old_grid=old_grid,
        num_prefix_tokens=num_prefix_tokens,
        interpolation=interpolation,
        antialias=antialias,
    )
