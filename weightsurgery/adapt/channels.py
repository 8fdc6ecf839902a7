"""Input channels of the first convolution: any ``C -> C'``.

The rule is timm's (``timm.models.adapt_input_conv``, used here rather than
rewritten), applied to the weight ``W`` of shape ``(O, C, *kernel)``:

* ``C' = 1``: sum over input channels, ``W'[:, 0] = sum_c W[:, c]``. A
  grayscale image ``g`` then gives exactly the activations that the RGB image
  ``(g, g, g)`` gives through the original conv.
* otherwise: repeat the ``C`` filters ``ceil(C'/C)`` times along the channel
  dim, keep the first ``C'``, and scale by ``C / C'``. For ``3 -> N`` an input
  whose channels all equal one image keeps the original activation scale.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from weightsurgery.adapt.registry import one_tensor, register_adapter
from weightsurgery.errors import AdapterError

__all__ = ["adapt_input_channels"]


def adapt_input_channels(weight: Tensor, in_chans: int) -> Tensor:
    """Adapt a conv weight ``(O, C, *kernel)`` to ``in_chans`` input channels.

    Args:
        weight: the source conv weight (Conv1d/2d/3d layout, ``groups=1``).
        in_chans: the target's input channels ``C'``.

    Returns:
        A new ``(O, C', *kernel)`` tensor in ``weight``'s dtype (computed in float32).

    Raises:
        AdapterError: ``weight`` is not a conv weight or ``in_chans < 1``.

    Example:
        >>> import torch
        >>> w = torch.ones(8, 3, 3, 3)
        >>> adapt_input_channels(w, 1)[0, 0, 0, 0].item()
        3.0
        >>> adapt_input_channels(w, 6)[0, :, 0, 0].tolist()
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    """
    if weight.dim() < 3:
        raise AdapterError(f"input_channels: expected a conv weight (O, C, *kernel), got shape {tuple(weight.shape)}")
    if in_chans < 1:
        raise AdapterError(f"input_channels: in_chans must be >= 1, got {in_chans}")
    out_ch, base, *kernel = weight.shape
    if in_chans == base:
        return weight
    # timm works on 4D OIHW weights; flatten any kernel into H and restore it afterwards.
    flat = weight.reshape(out_ch, base, -1, 1)
    from timm.models import adapt_input_conv  # timm is imported when an adapter runs, not with the package
    adapted = adapt_input_conv(in_chans, flat, base_chans=base)
    return adapted.reshape(out_ch, in_chans, *kernel)


@register_adapter("input_channels")
def _input_channels(tensors: Sequence[Tensor], target_shape: tuple[int, ...]) -> Tensor:
    """First-conv input channels ``C -> C'`` (sum for 1, else repeat and scale by ``C/C'``)."""
    src = one_tensor(tensors, "input_channels")
    if src.dim() != len(target_shape) or src.shape[0] != target_shape[0] or tuple(src.shape[2:]) != target_shape[2:]:
        raise AdapterError(
            f"input_channels: source {tuple(src.shape)} and target {target_shape} must differ only in dim 1"
        )
    return adapt_input_channels(src, target_shape[1])
