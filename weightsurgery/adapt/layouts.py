"""Other frameworks' tensor layouts turned into PyTorch's: small pure functions.

Each function takes a tensor in the layout a framework's convention fixes and
returns it in PyTorch's. The readers in :mod:`weightsurgery.sources.frameworks`
choose one per key from the evidence the file holds (the layer's class, the
ONNX node that reads the tensor), never from the tensor's shape, and record it
as a :class:`Layout` in the checkpoint's metadata (``metadata["layouts"]``).

=====================  ==========================================  ===========================
layout                 from                                        to (PyTorch)
=====================  ==========================================  ===========================
``dense``              ``(in, out)`` (Keras/Flax ``Dense``, ONNX   ``(out, in)``
                       ``MatMul`` / ``Gemm(transB=0)``)
``conv``               ``(*spatial, in/groups, out)`` (HWIO)       ``(out, in/groups, *spatial)``
``conv_transpose``     Keras ``(*spatial, out, in)``               ``(in, out, *spatial)``
``conv_transpose_io``  Flax ``(*spatial, in, out)``                ``(in, out, *spatial)``, flipped
``depthwise``          ``(*spatial, in, mult)``                    ``(in*mult, 1, *spatial)``
``heads_in``           Flax attention ``(D, heads, head_dim)``     ``(heads*head_dim, D)``
``heads_out``          Flax attention ``(heads, head_dim, D)``     ``(D, heads*head_dim)``
``flatten``            a Dense kernel ``(H*W*C, out)`` after an     ``(out, C*H*W)``
                       NHWC flatten
``gates``              gate blocks in another order                torch's gate order
``rope``               llama.cpp's rotary permutation of q/k rows  the Hugging Face row order
=====================  ==========================================  ===========================

Example:
    >>> import torch
    >>> hwio = torch.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)   # kh=2, kw=3, in=4, out=5
    >>> to_torch(hwio, Layout("conv")).shape
    torch.Size([5, 4, 2, 3])
    >>> to_torch(hwio, Layout("conv"))[1, 2, 0, 1] == hwio[0, 1, 2, 1]
    tensor(True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from weightsurgery.adapt.registry import one_tensor, register_adapter
from weightsurgery.errors import AdapterError

__all__ = ["LAYOUTS", "Layout", "flatten_permutation", "out_shape", "reorder_gates", "rope_unpermute", "to_torch"]


@dataclass(frozen=True)
class Layout:
    """How one source tensor becomes PyTorch's layout, and the evidence for it.

    Attributes:
        name: one of :data:`LAYOUTS` (``"identity"`` when the layouts agree).
        args: the layout's arguments (JSON-serialisable).
        evidence: what decided it (``"keras Conv2D 'c1'"``).
    """

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)
    evidence: str = ""

    def describe(self) -> str:
        """``conv (Keras Conv2D 'c1')`` and the like, for reports."""
        args = ", ".join(f"{k}={v}" for k, v in self.args.items() if k != "perm")
        text = self.name + (f"({args})" if args else "")
        return f"{text} [{self.evidence}]" if self.evidence else text

    def to_dict(self) -> dict[str, Any]:
        return {"layout": self.name, "args": {k: v for k, v in self.args.items() if k != "perm"},
                "evidence": self.evidence}


def _dense(t: Tensor) -> Tensor:
    _rank(t, 2, "dense")
    return t.t()


def _last_two_first(t: Tensor, name: str, swap: bool = True) -> Tensor:
    """``(*spatial, a, b)`` -> ``(b, a, *spatial)``, or ``(a, b, *spatial)`` with ``swap=False``."""
    _rank(t, 3, name, at_least=True)
    n = t.dim()
    return t.permute(n - 1, n - 2, *range(n - 2)) if swap else t.permute(n - 2, n - 1, *range(n - 2))


def _conv_transpose_io(t: Tensor, flip: bool) -> Tensor:
    """Flax ``(*k, in, out)`` -> ``(in, out, *k)``; ``flip``: Flax's default does not flip the kernel, torch's does."""
    out = _last_two_first(t, "conv_transpose_io", swap=False)
    return out.flip(tuple(range(2, out.dim()))) if flip else out


def _depthwise(t: Tensor) -> Tensor:
    _rank(t, 3, "depthwise", at_least=True)
    spatial = t.shape[:-2]
    merged = t.reshape(*spatial, t.shape[-2] * t.shape[-1])  # channel i, multiplier m -> output i*mult + m
    n = merged.dim()
    return merged.permute(n - 1, *range(n - 1)).unsqueeze(1)


def _heads_in(t: Tensor) -> Tensor:
    if t.dim() == 2:  # a bias (heads, head_dim)
        return t.reshape(-1)
    _rank(t, 3, "heads_in")
    return t.reshape(t.shape[0], -1).t()


def _heads_out(t: Tensor) -> Tensor:
    _rank(t, 3, "heads_out")
    return t.reshape(-1, t.shape[-1]).t()


def flatten_permutation(shape: Sequence[int], channels_last: bool = True) -> list[int]:
    """The source row that each PyTorch input position of a Dense after a flatten reads.

    A channels-last framework flattens a ``(*spatial, C)`` map position by
    position; PyTorch flattens ``(C, *spatial)`` channel by channel. Index the
    map in the source's order, lay the indices out as PyTorch holds the map,
    and read them back: PyTorch's position ``j`` is source row ``perm[j]``.
    The result is checked to be a permutation.

    Args:
        shape: the feature map's shape without the batch, in the source's order
            (``(H, W, C)`` channels-last).
        channels_last: ``False`` for a channels-first source (no reordering).

    Example:
        >>> flatten_permutation((1, 2, 3))   # H=1, W=2, C=3
        [0, 3, 1, 4, 2, 5]
    """
    n = math.prod(shape)
    idx = torch.arange(n).reshape(*shape)
    if channels_last and len(shape) > 1:
        idx = idx.permute(len(shape) - 1, *range(len(shape) - 1))
    perm = idx.reshape(-1).tolist()
    if sorted(perm) != list(range(n)):  # pragma: no cover - arange permuted is a permutation
        raise AdapterError(f"flatten order for {tuple(shape)} is not a permutation")
    return perm


def _flatten(t: Tensor, *, shape: Sequence[int], channels_last: bool = True) -> Tensor:
    _rank(t, 2, "flatten")
    if t.shape[0] != math.prod(shape):
        raise AdapterError(f"flatten: a kernel of {t.shape[0]} rows cannot follow a map of shape {tuple(shape)}")
    perm = torch.tensor(flatten_permutation(shape, channels_last), device=t.device)
    return t.t()[:, perm]


def reorder_gates(t: Tensor, *, order: str, to: str, axis: int = 0) -> Tensor:
    """Reorder equal gate blocks along ``axis`` from ``order`` to ``to`` (one letter a gate).

    Example:
        >>> reorder_gates(torch.arange(6.0), order="zrh", to="rzh").tolist()
        [2.0, 3.0, 0.0, 1.0, 4.0, 5.0]
    """
    if sorted(order) != sorted(to) or len(set(order)) != len(order):
        raise AdapterError(f"gates {order!r} and {to!r} are not one set of gates in two orders")
    if t.shape[axis] % len(order):
        raise AdapterError(f"gates: dim {axis} of size {t.shape[axis]} does not split into {len(order)} gates")
    blocks = t.chunk(len(order), dim=axis)
    return torch.cat([blocks[order.index(g)] for g in to], dim=axis)


def rope_unpermute(t: Tensor, *, heads: int) -> Tensor:
    """Undo llama.cpp's rotary row permutation of a q or k projection (rows ``(heads * head_dim)``).

    llama.cpp's converter reorders each head's rows from Hugging Face's
    rotate-half order (first half, second half) to interleaved pairs; this is
    its inverse.

    Example:
        >>> rope_unpermute(torch.tensor([[0.], [2.], [1.], [3.]]), heads=1).flatten().tolist()
        [0.0, 1.0, 2.0, 3.0]
    """
    rows = t.shape[0]
    if rows % (2 * heads):
        raise AdapterError(f"rope: {rows} rows do not split into {heads} heads of pairs")
    rest = t.shape[1:]
    return t.reshape(heads, rows // heads // 2, 2, *rest).transpose(1, 2).reshape(rows, *rest)


@register_adapter("rope")
def _rope(tensors: Sequence[Tensor], target_shape: tuple[int, ...], *, heads: int) -> Tensor:
    """llama.cpp's rotary row order of a q/k projection -> Hugging Face's (rotate-half) order.

    Options: ``heads``, the projection's number of heads (``n_head`` for q, ``n_head_kv`` for k).
    """
    return rope_unpermute(one_tensor(tensors, "rope"), heads=heads).contiguous()


def _rank(t: Tensor, rank: int, name: str, *, at_least: bool = False) -> None:
    if (t.dim() < rank) if at_least else (t.dim() != rank):
        raise AdapterError(f"layout {name} needs a {rank}{'+' if at_least else ''}-d tensor, got {tuple(t.shape)}")


_FUNCTIONS = {
    "identity": lambda t: t,
    "dense": _dense,
    "conv": lambda t: _last_two_first(t, "conv"),  # (*k, in, out) -> (out, in, *k)
    "conv_transpose": lambda t: _last_two_first(t, "conv_transpose"),  # (*k, out, in) -> (in, out, *k)
    "conv_transpose_io": lambda t, flip=False: _conv_transpose_io(t, flip),
    "depthwise": _depthwise,
    "heads_in": _heads_in,
    "heads_out": _heads_out,
    "flatten": _flatten,
    "gates": lambda t, **kw: reorder_gates(t, **kw),
    "rope": lambda t, **kw: rope_unpermute(t, **kw),
    "squeeze": lambda t, *, shape: t.reshape(shape),
    "transpose_gates": lambda t, **kw: reorder_gates(t.t(), **kw),
}

#: Every layout's name.
LAYOUTS: tuple[str, ...] = tuple(_FUNCTIONS)


def to_torch(tensor: Tensor, layout: Layout) -> Tensor:
    """``tensor`` in PyTorch's layout, as a contiguous tensor of its own.

    Raises:
        AdapterError: an unknown layout, or a tensor it does not fit.
    """
    fn = _FUNCTIONS.get(layout.name)
    if fn is None:
        raise AdapterError(f"unknown layout {layout.name!r}; the layouts are {', '.join(LAYOUTS)}")
    return fn(tensor, **dict(layout.args)).contiguous()


def out_shape(shape: Sequence[int], layout: Layout) -> tuple[int, ...]:
    """The shape :func:`to_torch` gives a tensor of ``shape``, without data (a meta tensor)."""
    return tuple(to_torch(torch.empty(tuple(shape), device="meta"), layout).shape)
