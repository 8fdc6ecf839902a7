"""Compare two checkpoints key by key: keys only on one side, shape and dtype changes, value differences.

Both sides are resolved lazily and compared one tensor pair at a time, so two
large checkpoints never sit in memory together. Values are compared in float64
(complex128 for complex tensors).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from weightsurgery._reading import input_memory, load_data
from weightsurgery.sources import resolve

__all__ = ["CheckpointDiff", "TensorDiff", "compare_tensors", "diff_checkpoints"]


@dataclass(frozen=True)
class TensorDiff:
    """How one pair of same-shaped tensors differs.

    Attributes:
        max_abs: the largest ``|a - b|`` (``nan`` where only one side is ``nan``).
        rel: ``‖a - b‖₂ / max(‖a‖₂, ‖b‖₂)``, the relative size of the
            difference (0 when both are zero); robust to elements near zero.
        differing: how many elements differ by more than ``atol``.
        numel: the number of elements.
    """

    max_abs: float
    rel: float
    differing: int
    numel: int

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs": _num(self.max_abs), "rel": _num(self.rel), "differing": self.differing, "numel": self.numel}


@dataclass(frozen=True)
class CheckpointDiff:
    """The differences between checkpoints ``a`` and ``b``.

    Attributes:
        a: the first checkpoint, described.
        b: the second checkpoint, described.
        only_a: keys only ``a`` has, in ``a``'s order.
        only_b: keys only ``b`` has, in ``b``'s order.
        shapes: key -> (shape in ``a``, shape in ``b``) where they differ; values are not compared.
        dtypes: key -> (dtype in ``a``, dtype in ``b``) where they differ; values are compared.
        values: key -> :class:`TensorDiff` where same-shaped values differ by more than ``atol``.
        equal: keys whose values agree within ``atol``.
    """

    a: str
    b: str
    only_a: tuple[str, ...] = ()
    only_b: tuple[str, ...] = ()
    shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    dtypes: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    values: Mapping[str, TensorDiff] = field(default_factory=dict)
    equal: tuple[str, ...] = ()

    @property
    def identical(self) -> bool:
        """Same keys, shapes and dtypes, and values within ``atol``."""
        return not (self.only_a or self.only_b or self.shapes or self.dtypes or self.values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "identical": self.identical,
            "only_a": list(self.only_a),
            "only_b": list(self.only_b),
            "shapes": {k: {"a": list(sa), "b": list(sb)} for k, (sa, sb) in self.shapes.items()},
            "dtypes": {k: {"a": da, "b": db} for k, (da, db) in self.dtypes.items()},
            "values": {k: d.to_dict() for k, d in self.values.items()},
            "equal": list(self.equal),
        }


def diff_checkpoints(
    a: Any,
    b: Any,
    *,
    key_a: str | None = None,
    key_b: str | None = None,
    atol: float = 0.0,
    weights_only: bool = True,
    quiet: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> CheckpointDiff:
    """Compare two checkpoints of any supported format, one tensor pair at a time.

    Args:
        a: the first checkpoint (anything :func:`weightsurgery.sources.resolve` accepts).
        b: the second checkpoint.
        key_a: the container to take from ``a`` if it is nested.
        key_b: the container to take from ``b`` if it is nested.
        atol: values within this absolute difference count as equal.
        weights_only: refuse pickles that need code (the default).
        quiet: no download progress bars.
        progress: ``progress(done, total)`` as tensor pairs are compared.

    Returns:
        A :class:`CheckpointDiff`.

    Raises:
        ValueError: ``atol`` is negative.
        InputMemoryError: a tensor pair needs more memory than the process may allocate.
        SourceError: a checkpoint cannot be resolved or read (subclasses say why).

    Example:
        >>> import torch
        >>> d = diff_checkpoints({"w": torch.ones(2), "b": torch.zeros(1)}, {"w": torch.tensor([1.0, 1.5])})
        >>> d.only_a, d.values["w"].max_abs, d.identical
        (('b',), 0.5, False)
    """
    if atol < 0 or math.isnan(atol):
        raise ValueError(f"atol={atol} must be a non-negative number, e.g. atol=1e-6")
    with resolve(a, key=key_a, weights_only=weights_only, quiet=quiet) as ca, resolve(
        b, key=key_b, weights_only=weights_only, quiet=quiet
    ) as cb:
        common = [k for k in ca.keys() if k in cb.metas]
        shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        dtypes: dict[str, tuple[str, str]] = {}
        values: dict[str, TensorDiff] = {}
        equal: list[str] = []
        for i, name in enumerate(common):
            ma, mb = ca.metas[name], cb.metas[name]
            if ma.dtype != mb.dtype:
                dtypes[name] = (_dtype(ma.dtype), _dtype(mb.dtype))
            if ma.shape != mb.shape:
                shapes[name] = (ma.shape, mb.shape)
            else:
                ta, tb = load_data(ca, name), load_data(cb, name)
                with input_memory(f"{ca.origin.location} and {cb.origin.location}", name, doing="compare"):
                    found = compare_tensors(ta, tb, atol=atol)
                del ta, tb
                if found is None:
                    equal.append(name)
                else:
                    values[name] = found
            if progress is not None:
                progress(i + 1, len(common))
        return CheckpointDiff(
            a=ca.origin.describe(),
            b=cb.origin.describe(),
            only_a=tuple(k for k in ca.keys() if k not in cb.metas),
            only_b=tuple(k for k in cb.keys() if k not in ca.metas),
            shapes=shapes,
            dtypes=dtypes,
            values=values,
            equal=tuple(equal),
        )


def compare_tensors(a: torch.Tensor, b: torch.Tensor, *, atol: float = 0.0) -> TensorDiff | None:
    """``None`` when same-shaped ``a`` and ``b`` agree within ``atol`` (``nan`` equals ``nan``), else how they differ.

    Example:
        >>> compare_tensors(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, float("nan")])) is None
        True
        >>> compare_tensors(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 0.0])).rel
        0.8
    """
    wide = torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64
    x, y = a.detach().to("cpu", wide), b.detach().to("cpu", wide)
    delta = (x - y).abs()
    both_nan = torch.isnan(x) & torch.isnan(y)
    delta = torch.where(both_nan, torch.zeros_like(delta), delta)
    off = (delta > atol) | torch.isnan(delta)
    differing = int(off.sum())
    if differing == 0:
        return None
    max_abs = float(delta.max()) if not torch.isnan(delta).any() else math.nan
    finite = ~(torch.isnan(x) | torch.isnan(y))
    scale = max(float(torch.linalg.vector_norm(x[finite])), float(torch.linalg.vector_norm(y[finite])))
    rel = float(torch.linalg.vector_norm(delta[finite])) / scale if scale > 0 else 0.0
    return TensorDiff(max_abs=max_abs, rel=rel, differing=differing, numel=a.numel())


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _num(value: float) -> float | str:
    """JSON has no nan or inf: write them as strings."""
    return value if math.isfinite(value) else str(value)
