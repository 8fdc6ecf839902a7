"""What apply checks before the first write: the plan, the target's tensors, each tensor read.

* :func:`validate_plan`: the plan against both sides, from metadata alone.
* :func:`check_writable`: every target tensor that will be written can be
  written in place: dense and strided, no element sharing its memory with
  another (an ``expand()``ed buffer). Inference tensors (a submodule built
  under :func:`torch.inference_mode`) are writable: commit writes them inside
  inference mode.
* :func:`check_source_tensor`: a tensor just read has dense values of the
  shape its header promised: not sparse, not ``meta``, not quantized or
  nested, no complex values for a real target.

Each raises before anything is written, so the model is unchanged; every
message names the key, the file and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from weightsurgery.errors import CorruptCheckpointError, ModuleProtocolError, PlanError, UnsupportedTensorError
from weightsurgery.match.plan import Action, Plan, PlanEntry
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import Checkpoint

__all__ = ["check_cast", "check_source_tensor", "check_writable", "complete_plan", "validate_plan"]


def complete_plan(plan: Plan, target: TargetSpec) -> Plan:
    """Give every target key an entry: a re-applied or hand-edited plan may omit some."""
    missing = {k: PlanEntry(k, Action.INIT, evidence="not in the plan") for k in target.tensors if k not in plan.entries}
    missing.update(
        {a: PlanEntry(a, Action.TIED, alias_of=c, evidence=f"tied to {c}") for a, c in target.aliases.items()
         if a not in plan.entries}
    )
    return plan.with_entries(missing) if missing else plan


def validate_plan(plan: Plan, checkpoint: Checkpoint, target: TargetSpec) -> None:
    """Check the plan against both sides from metadata; raise one :class:`PlanError` listing every problem."""
    problems: list[str] = []
    for key, e in plan.entries.items():
        if key not in target.tensors and key not in target.aliases:
            problems.append(f"{key}: the plan names a target key the model does not have")
            continue
        if e.action is Action.TIED:
            if e.alias_of not in target.tensors:
                problems.append(f"{key}: tied to {e.alias_of!r}, which the model does not have")
            continue
        if e.action is Action.INIT:
            continue
        if key in target.aliases:
            problems.append(f"{key}: is tied to {target.aliases[key]}; load the canonical key instead")
            continue
        missing = [s for s in e.source_keys if s not in checkpoint.metas]
        if not e.source_keys or missing:
            problems.append(f"{key}: source key(s) {missing or '(none)'} not in {checkpoint.origin.describe()}")
            continue
        tshape = target.tensors[key].shape
        if e.action is Action.LOAD:
            sshape = checkpoint.metas[e.source_keys[0]].shape
            if sshape != tshape:
                problems.append(f"{key}: target shape {tshape} but source {e.source_keys[0]} has {sshape}")
        elif e.action is Action.ADAPT:
            from weightsurgery.adapt import get_adapter
            from weightsurgery.errors import AdapterError

            try:
                get_adapter(e.adapter or "")
            except AdapterError as exc:
                problems.append(f"{key}: {exc}")
    if problems:
        raise PlanError(
            f"the plan does not fit the target ({len(problems)} problem(s)); nothing was changed:\n  "
            + "\n  ".join(problems),
            problems=problems,
        )


def check_writable(current: Mapping[str, torch.Tensor], keys: Iterable[str], target: TargetSpec) -> None:
    """Refuse target tensors that an in-place write cannot fill (``meta`` ones are replaced, not written).

    Args:
        current: target key -> the module's tensor.
        keys: the keys commit will write.
        target: names each key's module.

    Raises:
        ModuleProtocolError: a sparse (or other non-strided) target tensor, or
            one whose elements share memory (``expand()``ed); names the first.

    Example:
        >>> m = torch.nn.Linear(2, 2)
        >>> m.register_buffer("scale", torch.ones(1).expand(2))
        >>> check_writable({"scale": m.scale}, ["scale"], TargetSpec.from_module(m))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        weightsurgery.errors.ModuleProtocolError: target tensor 'scale' of module '<root>' is an expand()ed view: ...
    """
    for key in keys:
        t = current[key]
        if t.is_meta:
            continue
        problem = None
        if t.layout is not torch.strided:
            problem = (f"is {_layout(t)}; a transfer writes dense values in place. Make it a dense tensor "
                       f"(.to_dense()) before the transfer, or exclude it (exclude={key!r})")
        elif any(stride == 0 and size > 1 for size, stride in zip(t.shape, t.stride())):
            problem = (f"is an expand()ed view: its {t.numel()} elements share {_distinct(t)} memory location(s), "
                       "so it cannot be written in place. Register a real tensor instead "
                       f"(.clone() or .contiguous() of it), or exclude it (exclude={key!r})")
        if problem is not None:
            module = target.tensors[key].module
            raise ModuleProtocolError(f"target tensor {key!r} of module {module or '<root>'!r} {problem}; "
                                      "nothing was changed", module=module or "<root>")


def check_source_tensor(tensor: torch.Tensor, key: str, checkpoint: Checkpoint) -> None:
    """Refuse a source tensor just read that has no dense values, or not the shape its header said.

    Raises:
        UnsupportedTensorError: sparse or another layout, ``meta``, quantized, nested.
        CorruptCheckpointError: the data's shape is not the one the metadata promised.

    Example:
        >>> from weightsurgery.sources import resolve
        >>> ckpt = resolve({"w": torch.eye(2).to_sparse()})
        >>> check_source_tensor(ckpt.load("w"), "w", ckpt)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        weightsurgery.errors.UnsupportedTensorError: source tensor 'w' in state-dict <mapping> is sparse (torch.sparse_coo); ...
    """
    where = f"source tensor {key!r} in {checkpoint.origin.describe()}"
    problem = None
    if tensor.is_meta:
        problem = ("is on the meta device: the source holds its shape but no data (saved from a model built on "
                   "meta before its weights were loaded). Save the model after loading its weights")
    elif tensor.layout is not torch.strided:
        problem = (f"is {_layout(tensor)}; model tensors are dense. Save it dense ({{k: v.to_dense()}}) "
                   "or pass a state dict of dense tensors")
    elif tensor.is_quantized:
        problem = f"is quantized ({tensor.dtype}); pass its dequantize()d values"
    elif tensor.is_nested:
        problem = "is a nested tensor; pass a dense tensor"
    if problem is not None:
        raise UnsupportedTensorError(f"{where} {problem}; nothing was changed", source=checkpoint.origin.location,
                                     key=key)
    meta = checkpoint.metas.get(key)
    if meta is not None and tuple(tensor.shape) != tuple(meta.shape):
        raise CorruptCheckpointError(
            f"{where} has shape {tuple(tensor.shape)}, but its header says {tuple(meta.shape)}: the file is "
            "corrupt or changed since it was opened; nothing was changed. Resolve it again, or re-download it",
            source=checkpoint.origin.location,
        )


def check_cast(staged: torch.Tensor, dst: torch.Tensor, e: PlanEntry, checkpoint: Checkpoint) -> None:
    """Refuse a value whose cast to the target's dtype would lose part of it: complex into real.

    Raises:
        UnsupportedTensorError: complex values for a real target (the cast would drop the imaginary part).
    """
    if staged.is_complex() and not dst.is_complex():
        key = e.source_keys[0] if e.source_keys else e.target
        raise UnsupportedTensorError(
            f"source tensor {key!r} in {checkpoint.origin.describe()} is {str(staged.dtype).removeprefix('torch.')} "
            f"but target {e.target!r} is {str(dst.dtype).removeprefix('torch.')}: casting would drop the "
            "imaginary part; nothing was changed. Pass its .real (or .abs()) explicitly",
            source=checkpoint.origin.location, key=key,
        )


def _layout(t: torch.Tensor) -> str:
    kind = "sparse" if t.layout is not torch.strided and "sparse" in str(t.layout) else "not strided"
    return f"{kind} ({t.layout})"


def _distinct(t: torch.Tensor) -> int:
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n
