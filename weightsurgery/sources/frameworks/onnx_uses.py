"""Where an ONNX graph reads each initializer, and the layout and key that follow from it.

:func:`collect_uses` walks the graph (and the subgraphs of ``If``/``Loop``/
``Scan``) in node order and records each read of an initializer as a
:class:`Use`: the node's type, name and module, the input slot, its
attributes, a ``Transpose`` the tensor passes through first, and, for a
``MatMul``/``Gemm``, the channels-last ``Transpose`` whose output a
``Flatten`` before it flattened. :func:`decide` turns the uses into one
:class:`~weightsurgery.adapt.layouts.Layout` (or a reason it is undecided),
and :func:`key_for` names the PyTorch keys.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from weightsurgery.adapt.layouts import Layout

__all__ = ["Use", "collect_uses", "decide", "key_for"]

_ROLES: Mapping[tuple[str, int], str] = {
    ("Conv", 1): "weight", ("Conv", 2): "bias", ("ConvTranspose", 1): "weight", ("ConvTranspose", 2): "bias",
    ("Gemm", 1): "weight", ("Gemm", 2): "bias", ("MatMul", 1): "weight", ("Gather", 0): "weight",
    ("BatchNormalization", 1): "weight", ("BatchNormalization", 2): "bias",
    ("BatchNormalization", 3): "running_mean", ("BatchNormalization", 4): "running_var",
    ("LayerNormalization", 1): "weight", ("LayerNormalization", 2): "bias",
    ("InstanceNormalization", 1): "weight", ("InstanceNormalization", 2): "bias", ("PRelu", 1): "weight",
}
_KERAS_LEAVES = {"kernel": "weight", "gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                 "moving_variance": "running_var", "embeddings": "weight", "alpha": "weight"}
_CHANNELS_LAST = ([0, 2, 1], [0, 2, 3, 1], [0, 2, 3, 4, 1])


@dataclass(frozen=True)
class Use:
    """One read of an initializer by a node."""

    op: str
    node: str
    module: str
    index: int
    attrs: Mapping[str, Any] = field(default_factory=dict)
    transposed: tuple[int, ...] | None = None
    flattened: str | None = None  # the channels-last value a Flatten before this MatMul/Gemm flattened
    ordinal: int = 0  # how many nodes of this type came before it in its module (a recurrent layer's index)

    @property
    def role(self) -> str | None:
        return _ROLES.get((self.op, self.index))

    @property
    def epsilon(self) -> float | None:
        if self.op in ("BatchNormalization", "LayerNormalization", "InstanceNormalization"):
            return float(self.attrs.get("epsilon", 1e-5))
        return None

    def __str__(self) -> str:
        attrs = ", ".join(f"{k}={v}" for k, v in self.attrs.items() if k in ("transA", "transB", "epsilon", "group"))
        via = f" via Transpose{list(self.transposed)}" if self.transposed is not None else ""
        return f"{self.op}{f'({attrs})' if attrs else ''} {self.node!r} input {self.index}{via}"


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        if a.type in (1, 2, 3, 6, 7):  # FLOAT, INT, STRING, FLOATS, INTS
            value = helper.get_attribute_value(a)
            out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def node_module(node: Any) -> str:
    """The module a node belongs to: the exporter's name scopes, else its name's path, else its name.

    Example:
        >>> class N:
        ...     name, metadata_props = "/features/features.0/Conv", []
        >>> node_module(N())
        'features.features.0'
    """
    props = {p.key: p.value for p in getattr(node, "metadata_props", [])}
    scopes = props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            parts = [s for s in ast.literal_eval(scopes)[1:-1] if s]
        except (ValueError, SyntaxError):
            parts = []
        if parts:
            cumulative = all(b.startswith(a + ".") for a, b in zip(parts, parts[1:]))
            return parts[-1] if cumulative else ".".join(parts)
    name = node.name or ""
    if "/" in name:
        return ".".join(p for p in name.split("/")[:-1] if p)
    return name.replace(":", "_")


def collect_uses(graph: Any, names: set[str]) -> dict[str, list[Use]]:
    """Initializer name -> its reads, in the graph's node order (first reads first)."""
    producers: dict[str, Any] = {}
    nodes = list(_walk(graph))
    for node in nodes:
        for out in node.output:
            producers[out] = node
    passthrough: dict[str, tuple[str, tuple[int, ...] | None]] = {}
    for node in nodes:
        if node.op_type in ("Transpose", "Identity", "Cast") and node.input and node.input[0] in names:
            perm = tuple(_attrs(node).get("perm", ())) if node.op_type == "Transpose" else None
            passthrough[node.output[0]] = (node.input[0], perm)
    uses: dict[str, list[Use]] = {}
    seen: dict[tuple[str, str], int] = {}
    for node in nodes:
        if node.op_type in ("Transpose", "Identity", "Cast") and node.output and node.output[0] in passthrough:
            continue
        attrs, module = _attrs(node), node_module(node)
        ordinal = seen.get((module, node.op_type), 0)
        seen[(module, node.op_type)] = ordinal + 1
        for index, value in enumerate(node.input):
            if value in names:
                name, perm = value, None
            elif value in passthrough:
                name, perm = passthrough[value]
            else:
                continue
            flat = _flattened(node, producers) if node.op_type in ("MatMul", "Gemm") and index == 1 else None
            uses.setdefault(name, []).append(Use(node.op_type, node.name, module, index, attrs, perm, flat, ordinal))
    return uses


def _walk(graph: Any) -> Iterable[Any]:
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.type == 5:  # GRAPH
                yield from _walk(a.g)
            elif a.type == 10:  # GRAPHS
                for g in a.graphs:
                    yield from _walk(g)


def _flattened(node: Any, producers: Mapping[str, Any]) -> str | None:
    flatten = producers.get(node.input[0])
    if flatten is None or flatten.op_type not in ("Flatten", "Reshape"):
        return None
    transpose = producers.get(flatten.input[0])
    if transpose is None or transpose.op_type != "Transpose":
        return None
    perm = list(_attrs(transpose).get("perm", ()))
    return transpose.output[0] if perm in _CHANNELS_LAST else None


_ANONYMOUS = re.compile(r"^(onnx::|_?val_\d+$)")


def _named(name: str, torch_made: bool = False) -> bool:
    """A parameter's own name, not one an exporter made up (``val_8``, ``onnx::Conv_12``)."""
    if _ANONYMOUS.match(name):
        return False
    return torch_made or "." in name or "/" in name


def clean(name: str) -> str:
    """A PyTorch-style key from an initializer's name: ``conv2d_4/kernel:0`` -> ``conv2d_4.weight``.

    Example:
        >>> clean("dense_3/bias:0"), clean("features.0.weight")
        ('dense_3.bias', 'features.0.weight')
    """
    name = re.sub(r":\d+$", "", name).replace("/", ".").strip(".")
    module, _, leaf = name.rpartition(".")
    if module and leaf in _KERAS_LEAVES:
        return f"{module}.{_KERAS_LEAVES[leaf]}"
    return name


def key_for(name: str, uses: Sequence[Use], taken: set[str], torch_made: bool = False) -> list[tuple[str, list[Use]]]:
    """The PyTorch key(s) of one initializer, each with the uses it stands for.

    One initializer read in two roles (an exporter that stored a BatchNorm's
    zero bias and zero running mean once) gives one key per role.
    """
    by_role: dict[str, list[Use]] = {}
    for u in uses:
        if u.role is not None and u.module:
            by_role.setdefault(f"{u.module}.{u.role}", []).append(u)
    if _named(name, torch_made):
        primary = clean(name)
        leaf = primary.rpartition(".")[2]
        groups = list(by_role.items())
        main = next((k for k, v in groups if k == primary), None) or next(
            (k for k, v in groups if v[0].role == leaf), None) or (groups[0][0] if groups else None)
        extra = {k: v for k, v in groups if k != main and k != primary and k not in taken}  # one tensor, two roles
        mine = [u for u in uses if not any(u in v for v in extra.values())]
        return [(primary, mine or list(uses)), *extra.items()]
    out: list[tuple[str, list[Use]]] = []
    for key, group in by_role.items():
        if key not in taken and all(key != k for k, _ in out):
            out.append((key, group))
    rest = [u for u in uses if not any(u in g for _, g in out)]
    if not out or rest:
        out.append((clean(name) if clean(name) not in taken else name, rest or list(uses)))
    return out


def decide(
    name: str, shape: tuple[int, ...], uses: Sequence[Use], torch_made: bool,
    shape_of: Callable[[str], tuple[int | None, ...] | None],
) -> tuple[Layout | None, str]:
    """The initializer's layout from its uses, or ``(None, reason)``."""
    if not uses:
        return _fallback(name, shape, torch_made, "read by no node")
    decided: list[Layout] = []
    for u in uses:
        layout = _one(name, shape, u, torch_made, shape_of)
        if isinstance(layout, str):
            return None, layout
        decided.append(layout)
    first = decided[0]
    if any((d.name, dict(d.args)) != (first.name, dict(first.args)) for d in decided[1:]):
        return None, f"onnx initializer {name!r}: its uses disagree on its layout ({', '.join(map(str, uses))})"
    return first, ""


def _fallback(name: str, shape: tuple[int, ...], torch_made: bool, why: str) -> tuple[Layout | None, str]:
    if len(shape) <= 1:
        return Layout("identity", evidence=f"onnx {name!r} is 1-d: one layout"), ""
    if torch_made and _named(name, torch_made):
        return Layout("identity", evidence=f"onnx {name!r}: exported by PyTorch, a parameter keeps its layout"), ""
    return None, (f"onnx initializer {name!r} {shape}: {why}, which fixes no layout; a square tensor would fit "
                  "either way, so it is not copied")


def _one(name: str, shape: tuple[int, ...], u: Use, torch_made: bool,
         shape_of: Callable[[str], tuple[int | None, ...] | None]) -> Layout | str:
    what = f"onnx {u}"
    rank = len(shape)
    if u.op in ("Conv", "ConvTranspose") and u.index in (1, 2) and u.transposed is None:
        return Layout("identity", evidence=f"{what}: ONNX's {u.op} layout is PyTorch's")
    if u.role in ("bias", "running_mean", "running_var") and rank == 1 or u.op in (
            "BatchNormalization", "LayerNormalization", "InstanceNormalization") and rank == 1:
        return Layout("identity", evidence=what)
    if u.op in ("MatMul", "Gemm") and u.index == 1 and rank == 2:
        stored_out_in = (u.attrs.get("transB", 0) == 1) if u.op == "Gemm" else False
        if u.transposed is not None:
            stored_out_in = not stored_out_in if list(u.transposed) == [1, 0] else stored_out_in
        if u.flattened is not None:
            if stored_out_in:
                return f"{what}: a flattened channels-last map into an (out, in) weight is not supported"
            mapped = shape_of(u.flattened)
            if not mapped or any(d is None for d in mapped[1:]) or len(mapped) < 3:
                return (f"{what} reads a Flatten of a channels-last Transpose whose shape ONNX shape inference "
                        "cannot fix, so the row order cannot be decided")
            return Layout("flatten", {"shape": [int(d) for d in mapped[1:]], "channels_last": True},
                          evidence=f"{what} after a Flatten of channels-last {tuple(mapped[1:])}")
        if stored_out_in:
            return Layout("identity", evidence=f"{what} stores (out, in)")
        return Layout("dense", evidence=f"{what} stores (in, out)")
    if u.op == "Gemm" and u.index == 2 and rank == 2 and shape[0] == 1:
        return Layout("squeeze", {"shape": [shape[1]]}, evidence=f"{what}: a (1, out) bias")
    if u.op == "PRelu" and u.index == 1:
        per_channel = rank <= 1 or (rank == 2 and shape[0] == 1) or (rank == 3 and shape[1:] == (1, 1)) or (
            rank == 4 and shape[0] == 1 and shape[2:] == (1, 1))  # broadcast against (N, C, ...)
        if per_channel:
            channels = shape[1] if rank in (2, 4) else (shape[0] if shape else 1)
            return Layout("squeeze", {"shape": [channels]}, evidence=f"{what}: one slope per channel")
        return f"{what}: a slope of shape {shape} is not one per channel"
    if u.op == "Gather" and u.index == 0 and rank == 2:
        return Layout("identity", evidence=f"{what}: an embedding table (rows, dim)")
    layout, reason = _fallback(name, shape, torch_made, f"read by {u}")
    return layout if layout is not None else reason
