"""Transpose and reshape: layouts that hold the same numbers in another order.

GPT-2's ``Conv1D`` stores its weight as ``(in, out)`` and computes
``y = x @ W + b``; ``nn.Linear`` stores ``(out, in)`` and computes
``y = x @ W.T + b``. So ``W_linear = W_conv1d.T`` and the bias is unchanged.
``reshape`` re-views a tensor of equal element count in row-major order; it is
never proposed automatically, only named by an explicit rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from weightsurgery.adapt.registry import one_tensor, register_adapter
from weightsurgery.errors import AdapterError

__all__ = ["permute_dims"]


def permute_dims(tensor: Tensor, dims: Sequence[int] | None = None) -> Tensor:
    """Permute ``tensor``'s dims (default: reverse them, i.e. ``.T`` for 2-D), as a contiguous copy.

    Args:
        tensor: the source tensor.
        dims: a permutation of ``range(tensor.dim())``; default reversed.

    Returns:
        The permuted tensor, contiguous.

    Raises:
        AdapterError: ``dims`` is not a permutation of the tensor's dims.

    Example:
        >>> import torch
        >>> permute_dims(torch.zeros(2, 3)).shape
        torch.Size([3, 2])
    """
    order = list(reversed(range(tensor.dim()))) if dims is None else [int(d) for d in dims]
    if sorted(order) != list(range(tensor.dim())):
        raise AdapterError(
            f"transpose: dims {order} is not a permutation of the {tensor.dim()} dims of {tuple(tensor.shape)}"
        )
    return tensor.permute(*order).clone(memory_format=torch.contiguous_format)


@register_adapter("transpose")
def _transpose(
    tensors: Sequence[Tensor], target_shape: tuple[int, ...], *, dims: Sequence[int] | None = None
) -> Tensor:
    """Permute dims (default reversed): ``Conv1D (in, out) <-> Linear (out, in)`` is ``W.T``.

    Options: ``dims``, a permutation (default: reverse all dims).
    """
    return permute_dims(one_tensor(tensors, "transpose"), dims)


@register_adapter("reshape")
def _reshape(tensors: Sequence[Tensor], target_shape: tuple[int, ...]) -> Tensor:
    """Reshape to the target shape in row-major order; element counts must be equal.

    No options. Only used when an explicit rule names it.
    """
    src = one_tensor(tensors, "reshape")
    if src.numel() != math.prod(target_shape):
        raise AdapterError(
            f"reshape: source {tuple(src.shape)} has {src.numel()} elements, target {target_shape} "
            f"has {math.prod(target_shape)}"
        )
    return src.reshape(target_shape).clone(memory_format=torch.contiguous_format)
