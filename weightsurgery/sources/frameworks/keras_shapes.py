"""Feature-map shapes through a Keras config, for files that do not store them.

A legacy ``.h5`` config stores the input shape but not each layer's, and the
row order of a ``Dense`` after a ``Flatten`` needs the flattened map's shape.
:func:`infer_shapes` carries the input shape through the layers whose output
shape their config fixes (convolutions, pooling, padding, element-wise
layers), channels-last. A layer it does not know ends the chain: its output,
and everything after it, stays unknown, so no order is ever guessed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["infer_shapes"]

Shape = tuple[int, ...]
_ELEMENTWISE = {
    "BatchNormalization", "LayerNormalization", "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
    "ActivityRegularization", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
}
_CONV = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D")
_POOL = ("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
         "MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D")


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),) * n


def _length(n: int, k: int, s: int, d: int, padding: str) -> int:
    if padding in ("same", "causal"):
        return math.ceil(n / s)
    return (n - (k - 1) * d - 1) // s + 1


def _conv(cls: str, cfg: Mapping[str, Any], shape: Shape) -> Shape | None:
    spatial, channels = shape[:-1], shape[-1]
    n = len(spatial)
    k, s = _tuple(cfg.get("kernel_size", 1), n), _tuple(cfg.get("strides", 1), n)
    d = _tuple(cfg.get("dilation_rate", 1), n)
    padding = cfg.get("padding", "valid")
    out = tuple(_length(spatial[i], k[i], s[i], d[i], padding) for i in range(n))
    if cls.startswith("Depthwise"):
        return (*out, channels * int(cfg.get("depth_multiplier", 1)))
    return (*out, int(cfg["filters"]))


def _pool(cfg: Mapping[str, Any], shape: Shape) -> Shape:
    spatial, n = shape[:-1], len(shape) - 1
    k = _tuple(cfg.get("pool_size", 2), n)
    s = _tuple(cfg.get("strides") or k, n)
    padding = cfg.get("padding", "valid")
    return (*(_length(spatial[i], k[i], s[i], 1, padding) for i in range(n)), shape[-1])


def _zero_padding(cfg: Mapping[str, Any], shape: Shape) -> Shape:
    n = len(shape) - 1
    pad = cfg.get("padding", 1)
    pairs = [(pad, pad)] * n if isinstance(pad, int) else [p if isinstance(p, (list, tuple)) else (p, p) for p in pad]
    return (*(shape[i] + sum(pairs[i]) for i in range(n)), shape[-1])


def _output(cls: str, cfg: Mapping[str, Any], shape: Shape) -> Shape | None:
    if cfg.get("data_format", "channels_last") == "channels_first":
        return None
    if cls in _ELEMENTWISE:
        return shape
    if cls in _CONV and len(shape) >= 2:
        return _conv(cls, cfg, shape)
    if cls in _POOL and len(shape) >= 2:
        return _pool(cfg, shape)
    if cls.startswith("ZeroPadding") and len(shape) >= 2:
        return _zero_padding(cfg, shape)
    if cls == "Flatten":
        return (math.prod(shape),)
    return None


def infer_shapes(
    layers: Sequence[Mapping[str, Any]], inbound: Callable[[Mapping[str, Any]], list[str]]
) -> dict[str, Shape]:
    """Layer name -> its output shape without the batch, for the layers whose shape the config fixes.

    Args:
        layers: the config's layers, in order.
        inbound: the names of the layers feeding a layer (empty in a Sequential config).

    Example:
        >>> layers = [{"class_name": "InputLayer", "config": {"name": "in", "batch_shape": [None, 8, 8, 3]}},
        ...           {"class_name": "Conv2D", "config": {"name": "c", "filters": 4, "kernel_size": 3, "padding": "same"}},
        ...           {"class_name": "MaxPooling2D", "config": {"name": "p", "pool_size": [2, 2]}}]
        >>> infer_shapes(layers, lambda layer: [])["p"]
        (4, 4, 4)
    """
    shapes: dict[str, Shape] = {}
    previous: Shape | None = None
    for layer in layers:
        cfg = layer.get("config", {})
        name = str(cfg.get("name"))
        given = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        sources = inbound(layer)
        if layer.get("class_name") == "InputLayer" or (given and not sources and previous is None):
            if given and all(d is not None for d in given[1:]):
                previous = tuple(int(d) for d in given[1:])
                if layer.get("class_name") == "InputLayer":
                    shapes[name] = previous
                    continue
            elif layer.get("class_name") == "InputLayer":
                previous = None
                continue
        shape = shapes.get(sources[0]) if sources else previous
        out = _output(str(layer.get("class_name")), cfg, shape) if shape is not None else None
        if out is not None:
            shapes[name] = out
        previous = out
    return shapes
