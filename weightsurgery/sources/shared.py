"""Names that share one tensor: the single notion used by sources, the target and convert.

Two names **share** a tensor when they are the same object (tied parameters of
a module), or views of the same bytes with the same dtype, shape, strides and
offset (what ``torch.load`` gives back for tied weights). A safetensors file
stores such a tensor once and records each dropped name in its metadata as
``{alias: kept}`` (``safetensors.torch.save_model``, ``weightsurgery.convert``):
:func:`metadata_aliases` reads that convention back.

Views that overlap only partly (``w`` and ``w[0]``) are not shared: writing one
changes part of the other. :func:`overlapping` finds such pairs.

Groups are lists of names in the order given; the first name is the canonical one.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "alias_map",
    "memory_extent",
    "metadata_aliases",
    "overlapping",
    "same_view",
    "shared_groups",
    "tensor_identity",
    "unused_sources",
]


def tensor_identity(t: torch.Tensor) -> Hashable:
    """Equal for two tensors exactly when they share one tensor (:func:`same_view`).

    Meta tensors hold no data, but views of one meta tensor share its storage
    object: two parameters a constructor made over one tensor stay one on meta.

    Example:
        >>> import torch
        >>> w = torch.ones(3)
        >>> tensor_identity(w) == tensor_identity(w[:]), tensor_identity(w) == tensor_identity(w[1:])
        (True, False)
    """
    local = getattr(t, "_local_tensor", None)
    if local is not None and type(t).__name__ == "DTensor":  # its data_ptr() is 0: its shard tells it apart
        return ("dtensor", tensor_identity(local), tuple(t.shape), str(t.placements))
    key = _view_key(t)
    if key is not None:
        return key
    if t.is_meta and t.layout is torch.strided:  # no data, but a storage that views share (a factory on meta)
        return ("meta", t.untyped_storage()._cdata, t.storage_offset(), t.dtype, tuple(t.shape), t.stride())
    return ("id", id(t))


def same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are the same object or view exactly the same bytes the same way.

    Example:
        >>> import torch
        >>> w = torch.zeros(2, 3)
        >>> same_view(w, w.view(2, 3)), same_view(w, w[0]), same_view(w, w.clone())
        (True, False, False)
    """
    return a is b or tensor_identity(a) == tensor_identity(b)


def shared_groups(tensors: Mapping[str, Any]) -> list[list[str]]:
    """Groups of names that share one tensor (see the module docstring), each of two names or more.

    Tensors without data are compared by storage object (meta) or identity.
    Entries that are not tensors are skipped.

    Example:
        >>> import torch
        >>> w = torch.ones(2, 2)
        >>> shared_groups({"embed": w, "head": w.view(2, 2), "other": torch.ones(2, 2), "row": w[0]})
        [['embed', 'head']]
    """
    groups: dict[object, list[str]] = {}
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        groups.setdefault(tensor_identity(tensor), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def metadata_aliases(metadata: Mapping[str, Any], keys: Collection[str]) -> dict[str, str]:
    """``{alias: kept}`` entries of a safetensors header: an alias not stored, naming a key that is.

    Example:
        >>> metadata_aliases({"format": "pt", "lm_head.weight": "wte.weight"}, ["wte.weight"])
        {'lm_head.weight': 'wte.weight'}
    """
    return {
        alias: kept
        for alias, kept in metadata.items()
        if isinstance(kept, str) and kept in keys and alias not in keys
    }


def alias_map(groups: Iterable[Sequence[str]]) -> dict[str, str]:
    """Every non-canonical name -> the canonical (first) name of its group.

    Example:
        >>> alias_map([["embed", "head", "out"]])
        {'head': 'embed', 'out': 'embed'}
    """
    return {name: group[0] for group in groups for name in group[1:]}


def unused_sources(
    read: Iterable[str], keys: Iterable[str], groups: Iterable[Sequence[str]] = ()
) -> tuple[str, ...]:
    """Source keys that nothing read, counting a key as read when any name of its shared tensor was.

    A same-architecture transfer into a tied target reads ``wte.weight`` once;
    the source's ``lm_head.weight``, the same tensor, was used too.

    Args:
        read: the source keys the plan reads.
        keys: every source key, in source order.
        groups: the source's shared groups (:func:`shared_groups`, ``Checkpoint.metadata["tied"]``).

    Example:
        >>> unused_sources(["wte"], ["wte", "lm_head", "extra"], [["wte", "lm_head"]])
        ('extra',)
    """
    used = set(read)
    for group in groups:
        if used.intersection(group):
            used.update(group)
    return tuple(k for k in keys if k not in used)


def overlapping(tensors: Mapping[str, torch.Tensor]) -> list[tuple[str, str]]:
    """Pairs of names whose memory extents overlap without being the same view.

    The extent test is conservative: interleaved views (``w[:, 0]`` and
    ``w[:, 1]``) are listed although no element is shared, so a caller checks
    values, not just this list. Disjoint views of one flat buffer are not listed.

    Example:
        >>> import torch
        >>> w = torch.zeros(4, 2)
        >>> overlapping({"w": w, "first": w[0], "tail": w[2:], "same": w.view(4, 2), "mid": w[1]})
        [('w', 'first'), ('w', 'tail'), ('w', 'mid'), ('first', 'same'), ('tail', 'same'), ('same', 'mid')]
    """
    order = {name: i for i, name in enumerate(tensors)}
    extents = sorted(
        (e[0], e[1], e[2], name) for name, t in tensors.items() if (e := memory_extent(t)) is not None
    )
    pairs: list[tuple[str, str]] = []
    for i, (device, _, end, a) in enumerate(extents):
        j = i + 1
        while j < len(extents) and extents[j][0] == device and extents[j][1] < end:  # no slice: O(n) when disjoint
            b = extents[j][3]
            if not same_view(tensors[a], tensors[b]):
                pairs.append((a, b) if order[a] < order[b] else (b, a))
            j += 1
    return sorted(pairs, key=lambda p: (order[p[0]], order[p[1]]))


def memory_extent(t: torch.Tensor) -> tuple[str, int, int] | None:
    """``(device, first byte, one past the last byte)`` a tensor can touch; ``None`` without data.

    Live allocations never overlap, so two tensors whose extents overlap view one block of memory.

    Example:
        >>> import torch
        >>> w = torch.zeros(4, dtype=torch.float32)
        >>> start, end = memory_extent(w)[1:]
        >>> end - start, memory_extent(w[2:])[1] - start
        (16, 8)
    """
    if _view_key(t) is None:
        return None
    last = 0
    for n, stride in zip(t.shape, t.stride()):
        last += (n - 1) * stride
    start = t.data_ptr()
    return str(t.device), start, start + (last + 1) * t.element_size()


def _view_key(t: torch.Tensor) -> tuple[object, ...] | None:
    """What identifies a view of real memory; ``None`` for meta tensors and tensors without data.

    ``data_ptr()`` is the storage's address plus the offset, so with the
    dtype, shape and strides it pins the view down (and costs far less than
    asking for the storage).
    """
    if t.is_meta or t.layout is not torch.strided or t.numel() == 0:
        return None
    try:
        ptr = t.data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without plain storage
        return None
    return (t.device, ptr, t.dtype, tuple(t.shape), t.stride())
