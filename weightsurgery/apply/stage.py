"""Stage: every value commit will write, computed without touching the module.

Each source tensor is read, checked (:func:`~.validate.check_source_tensor`),
adapted and cast to the target's dtype. An error here (a truncated file, an
adapter, an interrupt) leaves the module bit-for-bit unchanged. A staged tensor
that shares memory with the target (a source that is the target itself) is
copied first (:mod:`weightsurgery._memory`).

Staged values stay on the host whatever the target's device
(:func:`weightsurgery._device.staging_value`): a model on CUDA is not copied a
second time onto the device before commit, which streams each value there in
turn, and staging never calls into CUDA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from weightsurgery._device import HOST, staging_value
from weightsurgery._memory import aliases_target, target_memory
from weightsurgery.apply.validate import check_cast, check_source_tensor
from weightsurgery.match.plan import Action, PlanEntry
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import Checkpoint

__all__ = ["Staged", "fill_keys", "stage"]

Progress = Callable[[int, int], None]


@dataclass
class Staged:
    """What staging produced.

    Attributes:
        tensors: target key -> the value to write, in commit order.
        casts: target key -> (source dtype, target dtype) where they differ.
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    casts: dict[str, tuple[str, str]] = field(default_factory=dict)


def fill_keys(copies: list[PlanEntry]) -> list[str]:
    """Adapted keys that gain new rows (a grown head, a grown vocabulary): the fallback init fills them.

    New rows no rule names keep the constructor's values, as a whole leftover does.
    """
    from weightsurgery.adapt import get_adapter

    return [e.target for e in copies if e.action is Action.ADAPT and get_adapter(e.adapter or "").needs_fill(e.adapter_args)]


def stage(
    copies: list[PlanEntry],
    checkpoint: Checkpoint,
    target: TargetSpec,
    current: dict[str, torch.Tensor],
    fills: dict[str, torch.Tensor],
    *,
    progress: Progress | None = None,
    total: int = 0,
) -> Staged:
    """Read, check, adapt and cast the value of every entry in ``copies``.

    Args:
        copies: the plan's LOAD and ADAPT entries.
        checkpoint: where the values are read from.
        target: the target's spec.
        current: target key -> the module's tensor (for dtype, device, memory).
        fills: target key -> the init of an adapted key's new rows.
        progress: called as ``progress(done, total)`` after each tensor.
        total: the ``total`` passed to ``progress``.
    """
    out = Staged()
    memory = [] if checkpoint.owned else target_memory(current)  # a source that is the target
    for i, e in enumerate(copies):
        dst = current[e.target]
        tensor, sources = _read(checkpoint, e, target, fills.get(e.target))
        if tensor.dtype != dst.dtype:
            out.casts[e.target] = (str(tensor.dtype).removeprefix("torch."), str(dst.dtype).removeprefix("torch."))
        check_cast(tensor, dst, e, checkpoint)
        value = _cast(tensor, dst, sources, owned=checkpoint.owned)
        if aliases_target(value, memory):  # commit would overwrite it before reading it
            value = value.to(device=HOST, copy=True)
        out.tensors[e.target] = value
        if progress is not None:
            progress(i + 1, total)
    return out


def _read(
    checkpoint: Checkpoint, e: PlanEntry, target: TargetSpec, fill: torch.Tensor | None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    tensors = []
    for s in e.source_keys:
        tensors.append(checkpoint.load(s))
        check_source_tensor(tensors[-1], s, checkpoint)
    if e.action is Action.LOAD:
        return tensors[0], tensors
    from weightsurgery.adapt import run_adapter

    shape = target.tensors[e.target].shape
    return run_adapter(e.adapter or "", tensors, shape, e.adapter_args, fill=fill, key=e.target), tensors


def _cast(tensor: torch.Tensor, dst: torch.Tensor, sources: list[torch.Tensor], *, owned: bool) -> torch.Tensor:
    """Cast ``tensor`` to ``dst``'s dtype, on the host (:func:`~weightsurgery._device.staging_value`).

    A materialized ``dst`` is filled by ``copy_`` at commit, which copies
    anyway. A ``meta`` ``dst`` is replaced by the staged tensor itself, so it
    must own its memory: never a view of a memory-mapped file, never a slice
    of a bigger tensor.
    """
    out = staging_value(tensor, dst.dtype, dst.device)
    if dst.is_meta:
        ptr = out.untyped_storage().data_ptr()
        aliased = any(ptr == s.untyped_storage().data_ptr() for s in sources)
        whole = out.is_contiguous() and out.untyped_storage().nbytes() == out.numel() * out.element_size()
        if aliased and not (owned and whole) or not whole:
            out = out.clone(memory_format=torch.contiguous_format)
    return out
