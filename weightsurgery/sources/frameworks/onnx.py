"""ONNX models: the graph's initializers, each laid out as the node that reads it says.

Read with the ``onnx`` package (``pip install 'weightsurgery[onnx]'``); tensors
stored as external data are read from their files only when loaded. Each
floating-point initializer's layout comes from its uses (subgraphs of ``If`` and
``Loop`` included), never from its shape (:mod:`.onnx_uses`):

* ``Conv``, ``ConvTranspose``: ONNX's layout is PyTorch's;
* ``Gemm``: ``transB=1`` stores ``(out, in)`` as PyTorch does, ``transB=0``
  stores ``(in, out)`` and is transposed; ``MatMul(x, W)`` stores ``(in, out)``,
  and ``MatMul(x, Transpose(W))`` stores ``(out, in)``;
* a ``MatMul``/``Gemm`` whose input is a ``Flatten`` of a ``Transpose`` to
  channels-last (what Keras converters write) gets its rows permuted to
  PyTorch's ``(C, H, W)`` flatten order, the map's shape from ONNX shape inference;
* ``LSTM``/``GRU``/``RNN``: ``W``, ``R``, ``B`` split per direction and gate-reordered
  to ``nn.LSTM``/``nn.GRU``'s tensors (:mod:`.onnx_rnn`);
* ``BatchNormalization``, ``LayerNormalization``, ``PRelu`` (a ``(1, C, 1, 1)``
  slope becomes ``(C,)``), ``Gather`` (an embedding table);
* any other use: a 1-D tensor has one layout; in a file that PyTorch exported
  (``producer_name`` ``pytorch``) a named parameter keeps PyTorch's layout;
  anything else is undecided, with the reason.

Keys: an initializer with a parameter-like name keeps it (``features.0.weight``,
``conv2d_4/kernel:0`` -> ``conv2d_4.weight``); an anonymous one (``val_8``,
``onnx::Conv_123``, ``slope``) is named after the module of the node that reads
it (the exporter's name scopes, or the node's name) and its role there
(``fc.weight``, ``bn.running_mean``). Order: the graph's node order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from weightsurgery.errors import CorruptCheckpointError
from weightsurgery.sources.checkpoint import Checkpoint, Origin, SourceKind
from weightsurgery.sources.frameworks._build import SourceTensor, build_checkpoint, numpy_dtype
from weightsurgery.sources.frameworks._lazy import require
from weightsurgery.sources.frameworks.onnx_rnn import RNN_OPS, rnn_tensors
from weightsurgery.sources.frameworks.onnx_uses import Use, collect_uses, decide, key_for

__all__ = ["open_onnx"]


def open_onnx(path: Path, *, location: str) -> Checkpoint:
    """Open an ONNX model's initializers lazily, in PyTorch's layout.

    Raises:
        MissingExtraError: ``onnx`` is not installed.
        CorruptCheckpointError: not a readable ONNX model.

    Example:
        >>> import tempfile, numpy as np, onnx
        >>> from onnx import helper, numpy_helper, TensorProto
        >>> w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "fc/kernel:0")  # (in, out)
        >>> node = helper.make_node("MatMul", ["x", "fc/kernel:0"], ["y"], name="fc")
        >>> graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        ...                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
        >>> path = Path(tempfile.mkdtemp()) / "fc.onnx"
        >>> onnx.save(helper.make_model(graph), path)
        >>> ckpt = open_onnx(path, location=str(path))
        >>> ckpt.keys(), ckpt.metas["fc.weight"].shape
        (['fc.weight'], (3, 2))
    """
    onnx = require("onnx", "onnx", path)
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError, among others
        raise CorruptCheckpointError(f"{path} is not a readable ONNX model ({exc})", source=path) from exc
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    uses = collect_uses(graph, set(initializers))
    torch_made = model.producer_name == "pytorch"
    shapes = _ShapeInference(model)
    base = str(path.parent)
    tensors: list[SourceTensor] = []
    taken: set[str] = set()
    skipped: list[str] = []
    for name in [*uses, *(n for n in initializers if n not in uses)]:
        init = initializers[name]
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        except (KeyError, TypeError):
            skipped.append(name)
            continue
        if dtype.kind != "f":
            skipped.append(name)  # shapes, axes, indices: not weights
            continue
        shape = tuple(int(d) for d in init.dims)
        read = (lambda t=init: numpy_helper.to_array(t, base))
        found: list[Use] = uses.get(name, [])
        if found and all(u.op in RNN_OPS and u.index in (4, 5, 6) for u in found):
            skipped.append(name)  # sequence lengths, initial hidden and cell states: not weights
            continue
        rnn = [u for u in found if u.op in RNN_OPS and u.index in (1, 2, 3) and len(shape) in (2, 3)]
        if rnn and len(rnn) == len(found):  # LSTM/GRU/RNN weights: one PyTorch tensor per direction (and bias)
            u = rnn[0]
            for key, raw, part, layout, reason in rnn_tensors(u.op, u.module, u.ordinal, u.index, shape, u.attrs,
                                                              read, f"onnx {u}"):
                taken.add(key)
                tensors.append(SourceTensor(key, name, raw, numpy_dtype(dtype), part, layout, reason))
            continue
        for key, use_list in key_for(name, found, taken, torch_made):
            layout, reason = decide(name, shape, use_list, torch_made, shapes.shape_of)
            taken.add(key)
            tensors.append(SourceTensor(key, name, shape, numpy_dtype(dtype), read, layout, reason,
                                        epsilon=next((u.epsilon for u in use_list if u.epsilon is not None), None)))
    origin = Origin(SourceKind.ONNX, location, files=(str(path),), details={
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
    })
    meta = {"onnx_uses": {t.key: [str(u) for u in uses.get(t.name, [])] for t in tensors}}
    if skipped:
        meta["skipped"] = skipped
    return build_checkpoint(tensors, origin, framework="onnx", order="the ONNX graph's node order", metadata=meta)


class _ShapeInference:
    """ONNX's own shape inference, run once and only if a flatten's shape is asked for."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._shapes: dict[str, tuple[int | None, ...]] | None = None

    def shape_of(self, value: str) -> tuple[int | None, ...] | None:
        if self._shapes is None:
            import onnx

            self._shapes = {}
            try:
                inferred = onnx.shape_inference.infer_shapes(self._model)
            except Exception:  # noqa: BLE001 - no inferred shapes: every flatten stays undecided
                return None
            g = inferred.graph
            for info in [*g.value_info, *g.input, *g.output]:
                dims = info.type.tensor_type.shape.dim
                self._shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        return self._shapes.get(value)
