"""ONNX's ``LSTM``/``GRU``/``RNN`` operators: their stacked weights split into PyTorch's per-direction tensors.

ONNX stores ``W`` as ``(directions, gates*hidden, input)``, ``R`` as
``(directions, gates*hidden, hidden)`` and ``B`` as ``(directions, 2*gates*hidden)``
(the input biases, then the recurrent ones), with gates in ONNX's order:
``LSTM`` i,o,f,c and ``GRU`` z,r,h. PyTorch's ``nn.LSTM`` wants i,f,g,o and
``nn.GRU`` r,z,n, one tensor per direction (``weight_ih_l{k}``, ``_reverse``).
A ``GRU`` with ``linear_before_reset=0`` applies its reset gate before the
recurrent matmul, which ``nn.GRU`` does not: undecided. The layer index ``k``
counts the operator's nodes in one module, in graph order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from weightsurgery.adapt.layouts import Layout

__all__ = ["RNN_OPS", "rnn_tensors"]

#: ONNX recurrent operators -> (their gate order, torch's gate order), one letter a gate.
RNN_OPS: dict[str, tuple[str, str]] = {"LSTM": ("iofc", "ifco"), "GRU": ("zrh", "rzh"), "RNN": ("h", "h")}
_LEAVES = {1: "weight_ih", 2: "weight_hh"}


def rnn_tensors(
    op: str, module: str, layer: int, index: int, shape: tuple[int, ...], attrs: dict[str, Any],
    read: Callable[[], Any], what: str,
) -> list[tuple[str, tuple[int, ...], Callable[[], Any], Layout | None, str]]:
    """``(key, raw shape, read, layout, reason)`` for each PyTorch tensor one ``W``/``R``/``B`` input holds.

    Example:
        >>> import numpy as np
        >>> w = np.zeros((2, 8, 3))   # LSTM, both directions, hidden 2, input 3
        >>> [t[0] for t in rnn_tensors("LSTM", "lstm", 0, 1, w.shape, {}, lambda: w, "")]
        ['lstm.weight_ih_l0', 'lstm.weight_ih_l0_reverse']
    """
    order, to = RNN_OPS[op]
    prefix = f"{module}." if module else ""
    reason = ""
    if op == "GRU" and not attrs.get("linear_before_reset", 0):
        reason = (f"{what}: linear_before_reset=0 applies the reset gate before the recurrent matmul; torch's GRU "
                  "applies it after, so no layout of these weights computes the same")
    layout = None if reason else Layout("gates", {"order": order, "to": to}, evidence=f"{what}, gates {order} -> {to}")
    out = []
    for d in range(shape[0]):
        suffix = f"_l{layer}{'_reverse' if d else ''}"
        if index in _LEAVES:
            out.append((f"{prefix}{_LEAVES[index]}{suffix}", tuple(shape[1:]), _row(read, d), layout, reason))
        else:  # B: the input biases, then the recurrent ones
            half = shape[1] // 2
            for leaf, part in (("bias_ih", slice(0, half)), ("bias_hh", slice(half, None))):
                out.append((f"{prefix}{leaf}{suffix}", (half,), _row(read, d, part), layout, reason))
    return out


def _row(read: Callable[[], Any], d: int, part: slice = slice(None)) -> Callable[[], Any]:
    return lambda: read()[d][part]
