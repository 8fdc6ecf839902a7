"""Apply's guards for memory the target shares: with the source, and between its own tensors.

* **A source that aliases the target** (``transfer(model, model, rename=...)``):
  a staged tensor that is a view of target memory would change under the
  commit before it is copied, so apply stages a private copy
  (:func:`aliases_target`), found by address range, so a state dict of the
  model's own views counts too.
* **Target tensors that overlap** (two parameters that are views of one
  tensor, not tied by identity): copying them one after the other keeps only
  the last write. :func:`check_overlaps` replays the commit on a copy of the
  memory and raises :class:`~weightsurgery.errors.SharedMemoryConflictError`,
  naming both keys and both sources, unless every tensor ends up holding the
  value the report will claim for it. Nothing is changed when it raises.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

import torch
from torch import nn

from weightsurgery.errors import SharedMemoryConflictError
from weightsurgery.match.plan import Action, Plan
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.shared import memory_extent, overlapping

__all__ = ["aliases_target", "check_overlaps", "overlap_notes", "target_memory"]


def target_memory(current: Mapping[str, torch.Tensor]) -> list[tuple[str, int, int]]:
    """The memory the target's materialized tensors cover: sorted, disjoint ``(device, start, end)`` extents.

    Example:
        >>> import torch
        >>> w = torch.ones(2)
        >>> aliases_target(w[1:], target_memory({"w": w})), aliases_target(w.clone(), target_memory({"w": w}))
        (True, False)
    """
    merged: list[tuple[str, int, int]] = []
    for device, start, end in sorted(e for t in current.values() if (e := memory_extent(t)) is not None):
        if merged and merged[-1][0] == device and start < merged[-1][2]:
            merged[-1] = (device, merged[-1][1], max(end, merged[-1][2]))
        else:
            merged.append((device, start, end))
    return merged


def aliases_target(tensor: torch.Tensor, memory: list[tuple[str, int, int]]) -> bool:
    """Whether ``tensor``'s memory overlaps the target's (:func:`target_memory`)."""
    mine = memory_extent(tensor) if memory else None
    if mine is None:
        return False
    i = bisect.bisect_left(memory, (mine[0], mine[2]))  # extents before i start before our end
    return i > 0 and memory[i - 1][0] == mine[0] and memory[i - 1][2] > mine[1]


def check_overlaps(current: Mapping[str, torch.Tensor], staged: Mapping[str, torch.Tensor], plan: Plan) -> None:
    """Raise if writing ``staged`` in order leaves an overlapping target tensor with another value than claimed.

    A staged key must end up holding its staged value; a key that is not
    written must keep its current one.

    Args:
        current: target key -> the module's tensor, unchanged so far.
        staged: target key -> the value commit will copy in, in commit order.
        plan: the plan, to name where each value comes from.

    Raises:
        SharedMemoryConflictError: the pairs that conflict, with the source of each side.

    Example:
        >>> import torch
        >>> from weightsurgery.match.plan import Plan, PlanEntry
        >>> w = torch.zeros(2, 2)
        >>> plan = Plan({"w": PlanEntry("w", Action.LOAD, source="a"), "row": PlanEntry("row", Action.LOAD, source="b")})
        >>> check_overlaps({"w": w, "row": w[0]}, {"w": torch.ones(2, 2), "row": torch.ones(2)}, plan)  # agree
        >>> check_overlaps({"w": w, "row": w[0]}, {"w": torch.ones(2, 2), "row": torch.zeros(2)}, plan)
        Traceback (most recent call last):
        ...
        weightsurgery.errors.SharedMemoryConflictError: target tensors share memory ...
    """
    pairs = overlapping({k: t for k, t in current.items() if not t.is_meta})
    if not pairs:
        return
    keys = list(dict.fromkeys(k for pair in pairs for k in pair))
    copies: dict[tuple[str, int], torch.UntypedStorage] = {}
    views: dict[str, torch.Tensor] = {}
    for k in keys:
        t = current[k]
        storage = copies.setdefault(_where(t), t.untyped_storage().clone())
        views[k] = torch.empty(0, dtype=t.dtype, device=t.device).set_(storage, t.storage_offset(), t.shape, t.stride())
    expected = {k: staged[k] if k in staged else current[k].detach().clone() for k in keys}
    with torch.no_grad():
        for k, value in staged.items():
            if k in views:
                views[k].copy_(value)
    bad = {k for k in keys if not torch.equal(views[k], expected[k].to(views[k].device))}
    conflicts = [(a, b) for a, b in pairs if a in bad or b in bad]
    if not conflicts:
        return
    origin = {k: _origin(plan, k, k in staged) for pair in conflicts for k in pair}
    lines = [f"{a} ({origin[a]}) and {b} ({origin[b]})" for a, b in conflicts]
    raise SharedMemoryConflictError(
        "target tensors share memory (views of one tensor) but would get different values; writing one "
        "after the other would leave only the last, so nothing was changed:\n  " + "\n  ".join(lines)
        + "\nTie them by identity (b.weight = a.weight) so one follows the other, or make them separate tensors",
        keys=conflicts,
        sources=origin,
    )


def overlap_notes(module: nn.Module, target: TargetSpec, plan: Plan) -> list[str]:
    """For a dry run: the overlapping target tensors whose values apply will check, one note for all.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from weightsurgery.match.plan import Plan
        >>> m = nn.Module()
        >>> base = torch.zeros(2, 2)
        >>> m.full, m.row = nn.Parameter(base), nn.Parameter(base[0])
        >>> overlap_notes(m, TargetSpec.from_module(m), Plan({}))
        ['target tensors full and row share memory (views of one tensor): apply raises SharedMemoryConflictError unless the values they would get agree']
    """
    state = module.state_dict(keep_vars=True)
    pairs = overlapping({k: state[k] for k in target.tensors if k in state and not state[k].is_meta})
    if not pairs:
        return []
    listed = "; ".join(f"{a} and {b}" for a, b in pairs)
    return [f"target tensors {listed} share memory (views of one tensor): apply raises "
            "SharedMemoryConflictError unless the values they would get agree"]


def _origin(plan: Plan, key: str, written: bool) -> str:
    e = plan.entries.get(key)
    if e is not None and e.action in (Action.LOAD, Action.ADAPT) and e.source is not None:
        return f"from source {e.source!r}"
    return "from the fallback init" if written else "keeping its current values"


def _where(t: torch.Tensor) -> tuple[str, int]:
    return str(t.device), t.untyped_storage().data_ptr()
