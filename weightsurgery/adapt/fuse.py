"""Fuse and split projections: ``q, k, v <-> qkv``, ``gate, up <-> gate_up``.

A fused projection stacks its parts' output rows: ``W_qkv = [W_q; W_k; W_v]``
(and ``b_qkv = [b_q; b_k; b_v]``), so ``x @ W_qkv.T`` is the three outputs side
by side. This is the layout of timm's ``attn.qkv``,
``torch.nn.MultiheadAttention.in_proj_weight``/``in_proj_bias`` and Phi-3's
``gate_up_proj``. Fusing concatenates along ``dim``; splitting takes part
``index`` of the ``sizes`` chunks. Split after fuse is the identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from weightsurgery.adapt.registry import one_tensor, register_adapter
from weightsurgery.errors import AdapterError

__all__ = ["fuse_parts", "split_part"]


def fuse_parts(parts: Sequence[Tensor], *, dim: int = 0) -> Tensor:
    """Concatenate ``parts`` along ``dim`` (``[W_q; W_k; W_v]``).

    Args:
        parts: the separate projections, in fused order.
        dim: the output dim (0 for ``nn.Linear`` weights and biases).

    Returns:
        A new tensor; the parts' dtype is promoted as :func:`torch.cat` does.

    Raises:
        AdapterError: no parts, or parts that differ off ``dim``.

    Example:
        >>> import torch
        >>> fuse_parts([torch.zeros(2, 4), torch.ones(1, 4)]).shape
        torch.Size([3, 4])
    """
    if not parts:
        raise AdapterError("fuse: needs at least one source tensor")
    shapes = [tuple(p.shape) for p in parts]
    ndim = len(shapes[0])
    d = dim % ndim if ndim and -ndim <= dim < ndim else None
    rest = {s[:d] + s[d + 1 :] if d is not None and len(s) == ndim else None for s in shapes}
    if d is None or len(rest) != 1 or None in rest:
        raise AdapterError(f"fuse: parts {shapes} cannot be concatenated along dim {dim}")
    return torch.cat(list(parts), dim=dim)


def split_part(fused: Tensor, *, index: int, sizes: Sequence[int], dim: int = 0) -> Tensor:
    """Part ``index`` of ``fused`` cut into ``sizes`` along ``dim``.

    Args:
        fused: the fused tensor.
        index: which part (0-based).
        sizes: the part sizes along ``dim``; they must add up to ``fused.shape[dim]``.
        dim: the dim to cut.

    Returns:
        A contiguous copy of the part.

    Raises:
        AdapterError: ``sizes`` that do not add up, or ``index`` out of range.

    Example:
        >>> import torch
        >>> split_part(torch.arange(6.0), index=1, sizes=[2, 4]).tolist()
        [2.0, 3.0, 4.0, 5.0]
    """
    if not -fused.dim() <= dim < fused.dim() or sum(sizes) != fused.shape[dim]:
        raise AdapterError(
            f"split: sizes {list(sizes)} do not add up to dim {dim} of a tensor of shape {tuple(fused.shape)}"
        )
    if not 0 <= index < len(sizes):
        raise AdapterError(f"split: index {index} out of range for {len(sizes)} parts")
    start = sum(sizes[:index])
    return fused.narrow(dim, start, sizes[index]).clone(memory_format=torch.contiguous_format)


@register_adapter("fuse")
def _fuse(tensors: Sequence[Tensor], target_shape: tuple[int, ...], *, dim: int = 0) -> Tensor:
    """Fuse separate projections by concatenation along ``dim``: ``[W_q; W_k; W_v]``.

    Options: ``dim`` (default 0). Sources: the parts, in fused order.
    """
    return fuse_parts(tensors, dim=dim)


@register_adapter("split")
def _split(
    tensors: Sequence[Tensor], target_shape: tuple[int, ...], *, index: int, sizes: Sequence[int], dim: int = 0
) -> Tensor:
    """Split one part out of a fused projection: rows ``sum(sizes[:index]) ..`` of ``dim``.

    Options: ``index``, ``sizes``, ``dim`` (default 0).
    """
    return split_part(one_tensor(tensors, "split"), index=index, sizes=[int(s) for s in sizes], dim=dim)
