"""Keras layers: which variables a layer class holds, and how each becomes PyTorch's tensor.

The layout of a Keras variable is fixed by its layer's class (from the model
config), never read off its shape: a ``Conv2D`` kernel is ``(kh, kw, in, out)``
even when it is square, a ``Dense`` kernel is ``(in, out)`` even when
``in == out``. :func:`layer_tensors` maps one layer's variables to PyTorch keys
and :class:`~weightsurgery.adapt.layouts.Layout` s:

==========================  ==============================================  ==========================
Keras class                 variables (in order)                            PyTorch keys
==========================  ==============================================  ==========================
``Dense``                   ``kernel`` (in, out), ``bias``                  ``weight`` (out, in), ``bias``
``Conv1D/2D/3D``            ``kernel`` (*k, in/g, out), ``bias``            ``weight`` (out, in/g, *k)
``Conv*Transpose``          ``kernel`` (*k, out, in), ``bias``              ``weight`` (in, out, *k)
``DepthwiseConv*``          ``kernel`` (*k, in, mult), ``bias``             ``weight`` (in*mult, 1, *k)
``SeparableConv*``          ``depthwise_kernel``, ``pointwise_kernel``,     ``depthwise.weight``,
                            ``bias``                                        ``pointwise.{weight,bias}``
``BatchNormalization``      ``gamma beta moving_mean moving_variance``      ``weight bias running_mean running_var``
``LayerNormalization``      ``gamma beta``                                  ``weight bias``
``Embedding``               ``embeddings``                                  ``weight``
``PReLU``                   ``alpha`` (1, .., C)                            ``weight`` (C,)
``LSTM``                    ``kernel recurrent_kernel bias`` (gates         ``weight_ih_l0 weight_hh_l0 bias_ih_l0``
                            i,f,c,o = torch's i,f,g,o)                      and a zero ``bias_hh_l0``
``GRU`` (``reset_after``)   ``kernel recurrent_kernel bias`` (2, 3u)        the same, gates z,r,h -> r,z,n
``SimpleRNN``               ``kernel recurrent_kernel bias``                as ``LSTM``
==========================  ==============================================  ==========================

A ``Dense`` whose input is a ``Flatten`` of a channels-last map of known shape
gets the ``flatten`` layout: its rows are permuted from ``(H, W, C)`` order to
PyTorch's ``(C, H, W)``. Any other class, a ``GRU`` without ``reset_after``,
or a flattened map of unknown shape leaves its variables undecided, with the
reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from weightsurgery.adapt.layouts import Layout

__all__ = ["KerasVar", "VAR_NAMES", "layer_tensors", "leaf_name"]

#: The variables each layer class creates, in the order Keras 3 saves them (``vars/0``, ``vars/1``...).
VAR_NAMES: Mapping[str, tuple[str, ...]] = {
    "Dense": ("kernel", "bias"),
    "Conv1D": ("kernel", "bias"),
    "Conv2D": ("kernel", "bias"),
    "Conv3D": ("kernel", "bias"),
    "Conv1DTranspose": ("kernel", "bias"),
    "Conv2DTranspose": ("kernel", "bias"),
    "Conv3DTranspose": ("kernel", "bias"),
    "DepthwiseConv1D": ("kernel", "bias"),
    "DepthwiseConv2D": ("kernel", "bias"),
    "SeparableConv1D": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "LayerNormalization": ("gamma", "beta"),
    "Embedding": ("embeddings",),
    "PReLU": ("alpha",),
    "LSTM": ("kernel", "recurrent_kernel", "bias"),
    "GRU": ("kernel", "recurrent_kernel", "bias"),
    "SimpleRNN": ("kernel", "recurrent_kernel", "bias"),
}

_RECURRENT = {"LSTM": "i,f,c,o (torch's i,f,g,o)", "GRU": "z,r,h", "SimpleRNN": "one gate"}
_NORM_LEAVES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


@dataclass(frozen=True)
class KerasVar:
    """One saved variable of a layer: its name, shape, dtype and reader."""

    name: str
    shape: tuple[int, ...]
    dtype: Any
    read: Callable[[], Any]


@dataclass(frozen=True)
class Planned:
    """One PyTorch tensor a layer variable becomes (a reader makes a ``SourceTensor`` of it)."""

    leaf: str
    var: KerasVar
    layout: Layout | None
    reason: str = ""
    read: Callable[[], Any] | None = None
    shape: tuple[int, ...] | None = None
    epsilon: float | None = None


def leaf_name(weight_name: str) -> str:
    """The variable's own name in a Keras 2 weight name: ``"model/conv2d_1/kernel:0"`` -> ``"kernel"``.

    Example:
        >>> leaf_name("sequential/dense/kernel:0")
        'kernel'
    """
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def _enabled_vars(cls: str, config: Mapping[str, Any]) -> tuple[str, ...]:
    names = VAR_NAMES.get(cls, ())
    if cls == "BatchNormalization" or cls == "LayerNormalization":
        names = tuple(n for n in names if (n != "gamma" or config.get("scale", True))
                      and (n != "beta" or config.get("center", True)))
    elif "bias" in names and not config.get("use_bias", True):
        names = tuple(n for n in names if n != "bias")
    return names


def name_vars(cls: str, config: Mapping[str, Any], count: int) -> tuple[str, ...] | None:
    """The names of a Keras 3 layer's ``count`` saved variables, or ``None`` when the class does not say."""
    names = _enabled_vars(cls, config)
    return names if len(names) == count else None


def layer_tensors(
    cls: str,
    layer: str,
    config: Mapping[str, Any],
    variables: Sequence[KerasVar],
    *,
    flattened: Sequence[int] | str | None = None,
) -> list[Planned]:
    """The PyTorch tensors of one Keras layer.

    Args:
        cls: the layer's class name (``"Conv2D"``).
        layer: the layer's name, for the evidence.
        config: the layer's config (``use_bias``, ``epsilon``, ``reset_after``...).
        variables: its variables, by their Keras names.
        flattened: for a ``Dense``: the shape of the map a channels-last
            ``Flatten`` before it flattened (without the batch), or a reason
            why that shape is unknown.

    Returns:
        One :class:`Planned` per PyTorch tensor.

    Example:
        >>> v = KerasVar("kernel", (3, 3, 8, 8), "float32", lambda: None)
        >>> [p.layout.name for p in layer_tensors("Conv2D", "c", {}, [v])]
        ['conv']
    """
    what = f"keras {cls} {layer!r}"
    by_name = {v.name: v for v in variables}
    if cls in ("Dense",) and isinstance(flattened, str):
        return [Planned(_torch_leaf(v.name), v, None if v.name == "kernel" else Layout("identity", evidence=what),
                        reason=flattened if v.name == "kernel" else "") for v in variables]
    if cls in _RECURRENT:
        return _recurrent(cls, what, config, by_name)
    out: list[Planned] = []
    for v in variables:
        leaf, layout = _torch_leaf(v.name), _layout(cls, v, what, flattened)
        if isinstance(layout, str):
            out.append(Planned(leaf, v, None, reason=layout))
            continue
        if cls.startswith("SeparableConv"):
            leaf = {"depthwise_kernel": "depthwise.weight", "pointwise_kernel": "pointwise.weight",
                    "bias": "pointwise.bias"}[v.name]
        eps = config.get("epsilon") if cls.endswith("Normalization") else None
        out.append(Planned(leaf, v, layout, epsilon=float(eps) if eps is not None else None))
    return out


def _torch_leaf(name: str) -> str:
    if name in ("kernel", "embeddings", "alpha"):
        return "weight"
    return _NORM_LEAVES.get(name, name)


def _layout(cls: str, v: KerasVar, what: str, flattened: Sequence[int] | str | None) -> Layout | str:
    if v.name not in VAR_NAMES.get(cls, ()):
        return f"{what}: variable {v.name!r} is not one of {cls}'s own, so its layout is unknown"
    if len(v.shape) <= 1 and cls != "PReLU":
        return Layout("identity", evidence=what)
    if cls == "Dense":
        if flattened is not None and len(flattened) > 1:
            return Layout("flatten", {"shape": list(flattened), "channels_last": True},
                          evidence=f"{what} after a channels-last Flatten of {tuple(flattened)}")
        return Layout("dense", evidence=what)
    if cls in ("Conv1D", "Conv2D", "Conv3D") or v.name == "pointwise_kernel":
        return Layout("conv", evidence=what)
    if cls.endswith("Transpose"):
        return Layout("conv_transpose", evidence=what)
    if cls.startswith("DepthwiseConv") or v.name == "depthwise_kernel":
        return Layout("depthwise", evidence=what)
    if cls == "Embedding":
        return Layout("identity", evidence=what)
    if cls == "PReLU":
        if any(d != 1 for d in v.shape[:-1]):
            return f"{what}: alpha {v.shape} has a slope per position (no shared_axes); torch's PReLU has one per channel"
        return Layout("squeeze", {"shape": [v.shape[-1]]}, evidence=f"{what}: alpha (.., C) -> (C,)")
    return f"{what}: no layout is known for {v.name!r}"


def _recurrent(cls: str, what: str, config: Mapping[str, Any], by_name: Mapping[str, KerasVar]) -> list[Planned]:
    gates = _RECURRENT[cls]
    if cls == "GRU" and not config.get("reset_after", True):
        return [Planned(f"{v.name}", v, None, reason=(
            f"{what}: reset_after=False applies the reset gate before the recurrent matmul; torch's GRU applies it "
            "after (reset_after=True), so no layout of these weights computes the same")) for v in by_name.values()]
    if config.get("go_backwards"):
        return [Planned(v.name, v, None, reason=f"{what}: go_backwards=True reads the sequence reversed")
                for v in by_name.values()]
    evidence = f"{what}, gates {gates}"
    reorder = {"order": "zrh", "to": "rzh"} if cls == "GRU" else None
    out: list[Planned] = []
    for name, leaf in (("kernel", "weight_ih_l0"), ("recurrent_kernel", "weight_hh_l0")):
        if name in by_name:
            layout = Layout("transpose_gates", reorder, evidence) if reorder else Layout("dense", evidence=evidence)
            out.append(Planned(leaf, by_name[name], layout))
    bias = by_name.get("bias")
    if bias is None:
        return out
    gate_layout = Layout("gates", reorder, evidence) if reorder else Layout("identity", evidence=evidence)
    if cls == "GRU":  # reset_after: (2, 3u), the input and the recurrent bias
        for row, leaf in ((0, "bias_ih_l0"), (1, "bias_hh_l0")):
            out.append(Planned(leaf, bias, gate_layout, read=_row(bias, row), shape=tuple(bias.shape[1:])))
        return out
    out.append(Planned("bias_ih_l0", bias, gate_layout))
    zero = f"{evidence}: Keras has one bias, torch two that add up; bias_hh_l0 is zero"
    out.append(Planned("bias_hh_l0", bias, Layout("identity", evidence=zero),
                       read=lambda: np.zeros(bias.shape, dtype=np.dtype(bias.dtype))))
    return out


def _row(var: KerasVar, row: int) -> Callable[[], Any]:
    return lambda: np.asarray(var.read())[row]
