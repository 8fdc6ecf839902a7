"""One lazy :class:`Checkpoint` from any framework's tensors, in PyTorch's layout.

A reader lists :class:`SourceTensor` s: a PyTorch-style key, the file's own
name, the raw shape and dtype from the file's headers, a function that reads
the raw data, and the :class:`~weightsurgery.adapt.layouts.Layout` that the
file's evidence decided, or ``None`` with the reason it could not be decided.
:func:`build_checkpoint` turns them into a checkpoint whose metas already have
PyTorch's shapes (computed without data) and whose loader converts on read.

The checkpoint's metadata records, per key, what the matcher and the report
need: ``"framework"``, ``"order"`` (where the key order came from),
``"layouts"`` (key -> layout, arguments and evidence), ``"undecided"`` (key ->
reason; the planner never copies such a tensor), ``"source_names"`` (key ->
the file's own name) and ``"epsilon"`` (key -> the normalization epsilon the
source used).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from weightsurgery.adapt.layouts import Layout, out_shape, to_torch
from weightsurgery.errors import CorruptCheckpointError, EmptyCheckpointError
from weightsurgery.sources.checkpoint import Checkpoint, Origin, TensorMeta

__all__ = ["SourceTensor", "build_checkpoint", "numpy_dtype", "to_tensor"]


@dataclass(frozen=True)
class SourceTensor:
    """One tensor as a framework file holds it.

    Attributes:
        key: the PyTorch-style dotted key (``"conv1.weight"``).
        name: the file's own name for it (``"conv2d_3/kernel:0"``).
        shape: the raw shape, from the file's headers.
        dtype: the torch dtype.
        read: returns the raw data (a NumPy array or a tensor) in the file's layout.
        layout: how it becomes PyTorch's layout; ``None`` when the evidence cannot decide.
        reason: why the layout is undecided.
        epsilon: the epsilon of the normalization this tensor belongs to, if any.
    """

    key: str
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    read: Callable[[], Any]
    layout: Layout | None
    reason: str = ""
    epsilon: float | None = None


_BFLOAT16 = "bfloat16"


def numpy_dtype(dtype: Any) -> torch.dtype:
    """The torch dtype of a NumPy dtype (``bfloat16`` from ml_dtypes included).

    Example:
        >>> numpy_dtype(np.dtype("float16"))
        torch.float16
    """
    dtype = np.dtype(dtype)
    if dtype.name == _BFLOAT16:
        return torch.bfloat16
    if dtype == np.bool_:
        return torch.bool
    try:
        return torch.from_numpy(np.zeros((), dtype=dtype)).dtype
    except TypeError as exc:
        raise CorruptCheckpointError(f"tensor dtype {dtype} has no torch equivalent") from exc


def to_tensor(array: Any) -> torch.Tensor:
    """A tensor of its own memory from a NumPy array (any byte order, bfloat16 included) or a tensor."""
    if isinstance(array, torch.Tensor):
        return array.clone()
    array = np.asarray(array)
    if array.dtype.name == _BFLOAT16:
        return torch.from_numpy(np.ascontiguousarray(array).view(np.uint16).copy()).view(torch.bfloat16)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return torch.from_numpy(np.array(array, copy=True, order="C"))


def build_checkpoint(
    tensors: Iterable[SourceTensor],
    origin: Origin,
    *,
    framework: str,
    order: str,
    metadata: Mapping[str, Any] | None = None,
    closer: Callable[[], None] | None = None,
) -> Checkpoint:
    """A lazy checkpoint of ``tensors`` in PyTorch's layout, in the order given.

    Args:
        tensors: the file's tensors, in the order the file gives its layers.
        origin: what was opened.
        framework: ``"keras"``, ``"flax"``, ``"onnx"``, ``"gguf"``.
        order: where the order came from, in words, for the report.
        metadata: more metadata (architecture fields, skipped tensors).
        closer: releases the file.

    Raises:
        EmptyCheckpointError: no tensors.
        CorruptCheckpointError: two tensors map to one key.

    Example:
        >>> import numpy as np
        >>> from weightsurgery.sources.checkpoint import SourceKind
        >>> k = np.arange(6, dtype=np.float32).reshape(2, 3)   # Dense (in=2, out=3)
        >>> t = SourceTensor("fc.weight", "dense/kernel", (2, 3), torch.float32, lambda: k, Layout("dense"))
        >>> ckpt = build_checkpoint([t], Origin(SourceKind.KERAS, "m.keras"), framework="keras", order="config")
        >>> ckpt.metas["fc.weight"].shape, ckpt.load("fc.weight").shape
        ((3, 2), torch.Size([3, 2]))
    """
    by_key: dict[str, SourceTensor] = {}
    metas: dict[str, TensorMeta] = {}
    layouts: dict[str, dict[str, Any]] = {}
    undecided: dict[str, str] = {}
    epsilon: dict[str, float] = {}
    for t in tensors:
        if t.key in by_key:
            raise CorruptCheckpointError(
                f"{origin.location}: {by_key[t.key].name!r} and {t.name!r} both map to key {t.key!r}",
                source=origin.location,
            )
        by_key[t.key] = t
        if t.layout is None:
            metas[t.key] = TensorMeta(tuple(t.shape), t.dtype)
            undecided[t.key] = t.reason or "the file does not say how this tensor is laid out"
        else:
            metas[t.key] = TensorMeta(out_shape(t.shape, t.layout), t.dtype)
            layouts[t.key] = {"source": t.name, **t.layout.to_dict()}
        if t.epsilon is not None:
            epsilon[t.key] = t.epsilon
    if not by_key:
        raise EmptyCheckpointError(f"{origin.location} holds no weight tensors", source=origin.location)

    def load(key: str) -> torch.Tensor:
        t = by_key[key]
        raw = to_tensor(t.read())
        if tuple(raw.shape) != tuple(t.shape):
            raise CorruptCheckpointError(
                f"{origin.location}: {t.name!r} holds shape {tuple(raw.shape)}, its header says {t.shape}",
                source=origin.location,
            )
        return raw if t.layout is None else to_torch(raw, t.layout)

    meta = {
        "framework": framework,
        "order": order,
        "layouts": layouts,
        "undecided": undecided,
        "source_names": {k: t.name for k, t in by_key.items()},
        **({"epsilon": epsilon} if epsilon else {}),
        **dict(metadata or {}),
    }
    return Checkpoint(metas, load, origin, metadata=meta, closer=closer, owned=True)
