"""Squeeze: the same numbers with size-1 dims added or dropped.

Libraries store some parameters with or without singleton dims: ConvNeXt's
layer scale is ``(C, 1, 1)`` in torchvision and ``(C,)`` (``gamma``) in timm;
a 1x1 conv head is ``(out, in, 1, 1)`` where a ``Linear`` is ``(out, in)``; a
position embedding is ``(1, N, D)`` or ``(N, D)``. Two shapes whose
*squeezed* shapes (size-1 dims removed) are equal hold the same elements in the
same row-major order, so reshaping one into the other is exact and lossless:
no element moves relative to another. ``squeeze`` is proposed automatically for
a name match under ``on_mismatch="adapt"`` when the ranks differ and the
squeezed shapes agree; a same-rank move of a size-1 dim (``(1, C)`` vs
``(C, 1)``: a ``Linear``'s inputs and outputs swapped) needs an explicit
``AdaptRule(..., "squeeze")``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from weightsurgery.adapt.registry import one_tensor, register_adapter
from weightsurgery.errors import AdapterError

__all__ = ["squeezable", "squeeze_to"]


def _squeezed(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(d) for d in shape if int(d) != 1)


def squeezable(source_shape: Sequence[int], target_shape: Sequence[int]) -> bool:
    """Whether two different shapes differ only by size-1 dims (so a reshape is exact).

    Args:
        source_shape: the source tensor's shape.
        target_shape: the target tensor's shape.

    Returns:
        ``True`` when the shapes differ and their squeezed shapes are equal.

    Example:
        >>> squeezable((96, 1, 1), (96,)), squeezable((1280, 960), (1280, 960, 1, 1))
        (True, True)
        >>> squeezable((4, 6), (6, 4)), squeezable((3,), (3,))
        (False, False)
    """
    return tuple(source_shape) != tuple(target_shape) and _squeezed(source_shape) == _squeezed(target_shape)


def squeeze_to(tensor: Tensor, target_shape: Sequence[int]) -> Tensor:
    """Add or drop size-1 dims so ``tensor`` has ``target_shape``; a contiguous copy.

    Args:
        tensor: the source tensor.
        target_shape: a shape equal to ``tensor``'s once size-1 dims are removed from both.

    Returns:
        The same elements, in the same order, with ``target_shape``.

    Raises:
        AdapterError: the shapes differ in more than size-1 dims (a reshape would
            mix elements); name the ``reshape`` adapter in an explicit rule if
            that is really intended.

    Example:
        >>> import torch
        >>> squeeze_to(torch.arange(3.0).reshape(3, 1, 1), (3,)).tolist()
        [0.0, 1.0, 2.0]
    """
    target = tuple(int(d) for d in target_shape)
    if _squeezed(tensor.shape) != _squeezed(target):
        raise AdapterError(
            f"squeeze: source {tuple(tensor.shape)} and target {target} differ in more than size-1 dims; "
            "use AdaptRule(..., 'reshape') if a row-major reshape is really intended"
        )
    return tensor.reshape(target).clone(memory_format=torch.contiguous_format)


@register_adapter("squeeze")
def _squeeze(tensors: Sequence[Tensor], target_shape: tuple[int, ...]) -> Tensor:
    """Add or drop size-1 dims (``(C, 1, 1) <-> (C,)``, ``(O, I) <-> (O, I, 1, 1)``); lossless.

    No options.
    """
    return squeeze_to(one_tensor(tensors, "squeeze"), target_shape)
