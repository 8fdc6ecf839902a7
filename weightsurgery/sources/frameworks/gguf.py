"""GGUF files (llama.cpp's format), read and dequantized with the ``gguf`` package's own routines.

``pip install 'weightsurgery[gguf]'``. The file is memory-mapped by
``gguf.GGUFReader``; a tensor is dequantized (``gguf.quants.dequantize``, any
quantization type the package knows) only when loaded. GGML lists dims
fastest-first, so a ``(ne0=in, ne1=out)`` matrix is PyTorch's ``(out, in)``:
every tensor keeps its layout, with one exception:

* llama.cpp's converter permutes the rows of a ``llama`` model's q and k
  projections for its interleaved rotary embedding. Whether a target rotates
  halves (Hugging Face) or pairs (Meta's original code) is not in the file, so
  these tensors are undecided in the checkpoint; the ``aliases`` strategy
  decides them from the target's naming (:mod:`weightsurgery.match.aliases`).

Keys are GGUF's own (``blk.0.attn_q.weight``), in the file's order.
``metadata["name_candidates"]`` lists, per key, the names the ``gguf``
package's tensor map knows for it in other libraries (``model.layers.0.self_attn.q_proj.weight``),
and ``metadata["gguf"]`` the architecture fields (``general.architecture``,
``llama.block_count``, head counts, ``rope.freq_base``, the norm epsilon).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightsurgery.adapt.layouts import Layout
from weightsurgery.errors import CorruptCheckpointError
from weightsurgery.sources.checkpoint import Checkpoint, Origin, SourceKind
from weightsurgery.sources.frameworks._build import SourceTensor, build_checkpoint
from weightsurgery.sources.frameworks._lazy import require

__all__ = ["ROPE_PERMUTED", "open_gguf"]

#: Architectures whose q/k rows llama.cpp's converter permutes for an interleaved rotary embedding.
ROPE_PERMUTED: frozenset[str] = frozenset({"llama", "granite", "granitemoe"})


def open_gguf(path: Path, *, location: str) -> Checkpoint:
    """Open a GGUF file lazily: tensors dequantized on load, architecture metadata read at once.

    Raises:
        MissingExtraError: ``gguf`` is not installed.
        CorruptCheckpointError: not a readable GGUF file.

    Example:
        >>> import tempfile, gguf
        >>> path = Path(tempfile.mkdtemp()) / "tiny.gguf"
        >>> w = gguf.GGUFWriter(str(path), "llama")
        >>> w.add_tensor("output_norm.weight", np.ones(4, np.float32))
        >>> w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
        >>> open_gguf(path, location=str(path)).keys()
        ['output_norm.weight']
    """
    gguf = require("gguf", "gguf", path)
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except (ValueError, OSError, KeyError) as exc:
        raise CorruptCheckpointError(f"{path} is not a readable GGUF file ({exc})", source=path) from exc
    fields = _fields(reader)
    arch = str(fields.get("general.architecture", ""))
    heads = {"q": fields.get(f"{arch}.attention.head_count"), "k": fields.get(f"{arch}.attention.head_count_kv")}
    heads["k"] = heads["k"] or heads["q"]
    eps = fields.get(f"{arch}.attention.layer_norm_rms_epsilon", fields.get(f"{arch}.attention.layer_norm_epsilon"))
    candidates = _candidates(gguf, arch, fields.get(f"{arch}.block_count"))
    tensors: list[SourceTensor] = []
    resolvable: dict[str, dict[str, Any]] = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        qtype = gguf.GGMLQuantizationType(int(t.tensor_type))
        dtype = {"F32": torch.float32, "F16": torch.float16}.get(qtype.name, torch.float32)
        read = (lambda t=t, q=qtype, s=shape: _dequantize(gguf, t, q, s))
        layout: Layout | None = Layout("identity", evidence=f"gguf {qtype.name} {t.name}: ggml (ne0=in, ne1=out) "
                                                            "is PyTorch's (out, in)")
        reason = ""
        role = t.name.split(".")[-2] if t.name.count(".") >= 2 else ""
        if arch in ROPE_PERMUTED and role in ("attn_q", "attn_k") and len(shape) == 2:
            n = heads["q" if role == "attn_q" else "k"]
            layout = None
            reason = (f"gguf {t.name}: llama.cpp stores a {arch} model's {role[-1]} rows permuted for its interleaved "
                      f"rotary embedding ({n} heads); whether the target rotates halves (Hugging Face) or pairs "
                      "(Meta) is not in the file; the aliases strategy decides it from the target's names")
            if n:
                resolvable[t.name] = {"adapter": "rope", "heads": int(n)}
        norm = role.endswith("norm") or t.name.startswith("output_norm")
        tensors.append(SourceTensor(t.name, t.name, shape, dtype, read, layout, reason,
                                    epsilon=float(eps) if norm and eps is not None else None))
    origin = Origin(SourceKind.GGUF, location, files=(str(path),), details={
        "architecture": arch, "name": fields.get("general.name"), "file_type": fields.get("general.file_type")})
    meta = {"gguf": {k: v for k, v in fields.items() if not k.startswith("tokenizer.")},
            "name_candidates": {t.key: candidates(t.key) for t in tensors}, "resolvable": resolvable}
    return build_checkpoint(tensors, origin, framework="gguf", order="the GGUF file's tensor order", metadata=meta,
                            closer=lambda: _release(reader))


def _release(reader: Any) -> None:
    reader.data = None  # the memory map goes with its last reference


def _dequantize(gguf: Any, t: Any, qtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    if qtype.name in ("F32", "F16"):
        return np.asarray(t.data).reshape(shape)
    return gguf.quants.dequantize(np.asarray(t.data), qtype).reshape(shape).astype(np.float32, copy=False)


def _fields(reader: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name.startswith("tokenizer.ggml."):
            continue
        try:
            value = field.contents()
        except (AttributeError, ValueError, IndexError):
            continue
        out[name] = value.item() if isinstance(value, np.generic) else value
    return out


def _candidates(gguf: Any, arch: str, blocks: Any) -> Any:
    """``key -> [names other libraries give it]``, from the gguf package's own tensor map."""
    arches = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in arches:
        return lambda key: []
    mapping: Mapping[str, tuple[Any, str]] = gguf.get_tensor_name_map(arches[arch], int(blocks or 0)).mapping
    inverse: dict[str, list[str]] = {}
    for other, (_, name) in mapping.items():
        inverse.setdefault(name, []).append(other)

    def lookup(key: str) -> list[str]:
        base, dot, suffix = key.rpartition(".")
        return [f"{o}{dot}{suffix}" for o in inverse.get(base, ())] if base else []

    return lookup
