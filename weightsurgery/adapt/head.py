"""Classifier heads: keep a subset of classes, reorder them, or grow the head.

A head is a linear layer ``logits = x @ W.T + b`` with one row of ``W`` and one
entry of ``b`` per class. Selecting rows ``rows`` of both gives a head whose
logits are exactly the source's logits for those classes, in that order:
``logits'[i] = logits[rows[i]]``. A row marked ``-1`` is a new class; it comes
from ``fill``, the target's fallback init.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from weightsurgery.adapt.registry import one_tensor, register_adapter
from weightsurgery.errors import AdapterError

__all__ = ["head_rows", "select_rows"]

NEW_ROW = -1


def select_rows(tensor: Tensor, rows: Sequence[int], *, fill: Tensor | None = None) -> Tensor:
    """Rows ``rows`` of ``tensor`` (along dim 0), with ``-1`` rows taken from ``fill``.

    ``out[i] = tensor[rows[i]]`` if ``rows[i] >= 0`` else ``fill[i]``. Works for a
    head's weight ``(C, D)`` and bias ``(C,)`` alike, so both stay consistent.

    Args:
        tensor: the source head tensor, classes along dim 0.
        rows: for each target class, the source class index, or ``-1`` for a new class.
        fill: a tensor of the result's shape supplying the new rows.

    Returns:
        A new tensor of shape ``(len(rows), *tensor.shape[1:])`` and ``tensor``'s dtype.

    Raises:
        AdapterError: an index out of range, or ``-1`` rows without ``fill``.

    Example:
        >>> import torch
        >>> select_rows(torch.tensor([10.0, 11.0, 12.0]), [2, 0]).tolist()
        [12.0, 10.0]
        >>> select_rows(torch.tensor([10.0, 11.0]), [1, -1], fill=torch.zeros(2)).tolist()
        [11.0, 0.0]
    """
    n = tensor.shape[0] if tensor.dim() else 0
    bad = [r for r in rows if not NEW_ROW <= r < n]
    if bad:
        raise AdapterError(f"class index(es) {bad} out of range for a source head of {n} classes (0..{n - 1})")
    index = torch.tensor([max(r, 0) for r in rows], dtype=torch.long, device=tensor.device)
    out = tensor.index_select(0, index)
    new = [i for i, r in enumerate(rows) if r == NEW_ROW]
    if new:
        if fill is None:
            raise AdapterError(f"{len(new)} new class row(s) need fill= from the fallback init")
        pos = torch.tensor(new, dtype=torch.long, device=tensor.device)
        out[pos] = fill.to(device=tensor.device, dtype=tensor.dtype).index_select(0, pos)
    return out


def head_rows(
    classes: Sequence[int | str],
    *,
    num_source: int,
    num_target: int,
    label_names: Sequence[str] | None = None,
) -> list[int]:
    """Turn the user's ``classes`` into a row list for :func:`select_rows`.

    ``classes[i]`` names the source class for target class ``i``: an index into
    the source classes, or a label name looked up in ``label_names``. A target
    with more classes than ``classes`` grows: the remaining rows are new (``-1``).

    Args:
        classes: source class indices or label names, in the target's order.
        num_source: classes in the source head.
        num_target: classes in the target head.
        label_names: the source's label names, for string entries.

    Returns:
        ``num_target`` source indices, ``-1`` for new classes.

    Raises:
        AdapterError: more classes than the target holds, an index out of range,
            or a label name that is not in ``label_names`` (the closest names are given).

    Example:
        >>> head_rows(["cat", 0], num_source=3, num_target=3, label_names=["dog", "cat", "fox"])
        [1, 0, -1]
    """
    if len(classes) > num_target:
        raise AdapterError(
            f"classes= lists {len(classes)} classes but the target head has {num_target}; "
            "build the target with num_classes=len(classes)"
        )
    index = {name: i for i, name in enumerate(label_names or ())}
    rows: list[int] = []
    for c in classes:
        if isinstance(c, str):
            if not index:
                raise AdapterError(
                    f"classes= names label {c!r} but the source has no label names; "
                    "pass source_labels=[...] or give class indices"
                )
            if c not in index:
                close = difflib.get_close_matches(c, list(index), n=3)
                hint = f"; closest: {', '.join(map(repr, close))}" if close else ""
                raise AdapterError(f"classes= names label {c!r}, which is not a source label{hint}")
            rows.append(index[c])
        elif isinstance(c, int) and not isinstance(c, bool):
            if not 0 <= c < num_source:
                raise AdapterError(f"classes= holds index {c}, out of range for a source head of {num_source} classes")
            rows.append(c)
        else:
            raise AdapterError(f"classes= entries must be int indices or str label names, got {c!r}")
    return rows + [NEW_ROW] * (num_target - len(rows))


def _has_new_rows(args: Mapping[str, Any]) -> bool:
    return NEW_ROW in args.get("rows", ())


def _source_rows(args: Mapping[str, Any], source_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> int:
    return sum(1 for r in args.get("rows", ()) if int(r) != NEW_ROW)


@register_adapter("head", needs_fill=_has_new_rows, source_rows=_source_rows)
def _head(
    tensors: Sequence[Tensor], target_shape: tuple[int, ...], *, rows: Sequence[int], fill: Tensor | None = None
) -> Tensor:
    """Classifier head subset/reorder/grow: ``out[i] = src[rows[i]]``, ``-1`` rows from ``fill``.

    Options: ``rows``, one source class index (or ``-1``) per target class.
    """
    src = one_tensor(tensors, "head")
    if len(rows) != target_shape[0] or tuple(src.shape[1:]) != tuple(target_shape[1:]):
        raise AdapterError(
            f"head: {len(rows)} rows of {tuple(src.shape[1:])} do not make the target shape {target_shape}"
        )
    return select_rows(src, [int(r) for r in rows], fill=fill)
