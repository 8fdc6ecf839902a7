"""Compute the fallback init for the target keys the plan leaves over.

:func:`compute_init` returns new tensors and never changes the module; apply
commits them together with the loaded ones. Only the requested keys are
initialized: two leftover tensors cost two small inits, not a whole model's.

Seeding: every tensor draws from its own generator, seeded from the base seed
and its key (a module's own reset: from the base seed and the module's path).
A seeded result is therefore the same on every run, on every device, whatever
the global RNG state and whichever other keys happened to load.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from weightsurgery.errors import PlanError
from weightsurgery.init.module_default import module_default, work_dtype
from weightsurgery.init.rules import InitRules
from weightsurgery.init.seeding import base_seed, derive_seed, generator_for
from weightsurgery.init.specs import Default, TensorInit, TruncNormal, Zeros
from weightsurgery.match.target import TargetSpec, TargetTensor

__all__ = ["KEPT_CONSTRUCTOR_VALUES", "META_FALLBACK", "InitResult", "compute_init"]

logger = logging.getLogger(__name__)

KEPT_CONSTRUCTOR_VALUES = "default(kept constructor values)"
"""The spec recorded when a module's reset could not run but its tensor already
holds the values its constructor gave it, which is the module's own init."""

META_FALLBACK = TruncNormal(std=0.02)
"""What ``default`` falls back to on the meta device for floating tensors with
>= 2 dims when the module cannot reset itself; tensors with fewer dims, and
integer tensors, get zeros."""


@dataclass(frozen=True)
class InitResult:
    """The fallback init of a set of target keys.

    Attributes:
        tensors: key -> new tensor with the target's shape and dtype, on the
            target tensor's device (CPU where the target is on ``meta``).
        specs: key -> the spec that produced it (``"trunc_normal(std=0.02)"``,
            ``"default"``, ``"default(kept constructor values)"``).
        rules: key -> the label of the rule that chose the spec (``"head.*"``,
            ``"Conv2d"``, ``"default"``).
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    specs: dict[str, str] = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)


def compute_init(
    module: nn.Module,
    target: TargetSpec,
    keys: Iterable[str],
    rules: InitRules,
    *,
    seed: int | None,
) -> InitResult:
    """Initialize ``keys`` of ``module`` out of place.

    Args:
        module: the target module; not modified.
        target: ``TargetSpec.from_module(module)``.
        keys: the target keys to initialize (tied aliases map to their canonical key).
        rules: chooses each key's spec (see :class:`InitRules`).
        seed: makes the result reproducible; ``None`` draws a base seed from
            torch's global RNG, so ``torch.manual_seed`` still makes it reproducible.

    Returns:
        The new tensors, the spec each got and the rule that chose it, in the
        order of ``keys``.

    Raises:
        PlanError: a key that ``target`` does not describe, or that ``module`` lacks.
        InitSpecMismatchError: a chosen spec cannot fill its tensor (see
            :meth:`InitRules.check`).
        InitSpecError: ``seed`` is neither an int nor ``None``.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> target = TargetSpec.from_module(model)
        >>> res = compute_init(model, target, ["1.weight", "1.bias"],
        ...                    InitRules.from_user({"*.bias": "zeros"}), seed=0)
        >>> res.specs
        {'1.weight': 'default', '1.bias': 'zeros'}
        >>> torch.equal(res.tensors["1.weight"], model[1].weight)
        False
    """
    wanted = _canonical_keys(target, keys)
    chosen = rules.check({k: target.tensors[k] for k in wanted})
    base = base_seed(seed)
    current = {k: _current(module, target.tensors[k]) for k in wanted}

    values: dict[str, torch.Tensor] = {}
    specs: dict[str, str] = {}
    by_module: dict[str, list[TargetTensor]] = {}
    for key in wanted:
        spec, _ = chosen[key]
        t = target.tensors[key]
        if isinstance(spec, TensorInit):
            values[key] = _fill(spec, t, generator_for(base, key))
            specs[key] = spec.describe()
        else:
            by_module.setdefault(t.module, []).append(t)

    for path, owned in by_module.items():
        reset = module_default(
            module.get_submodule(path), [t.name for t in owned], seed=derive_seed(base, f"module:{path}")
        )
        for t in owned:
            if t.name in reset:
                values[t.key], specs[t.key] = reset[t.name], Default().describe()
            else:
                values[t.key], specs[t.key] = _fallback(t, current[t.key], base)

    tensors: dict[str, torch.Tensor] = {}
    for key in wanted:
        device = current[key].device
        if device.type == "meta":
            device = torch.device("cpu")
        tensors[key] = values[key].to(device=device, dtype=target.tensors[key].dtype)
    logger.debug("initialized %d tensor(s) (base seed %d)", len(tensors), base)
    return InitResult(tensors=tensors, specs={k: specs[k] for k in wanted}, rules={k: chosen[k][1] for k in wanted})


def _canonical_keys(target: TargetSpec, keys: Iterable[str]) -> list[str]:
    wanted = list(dict.fromkeys(target.canonical(k) for k in keys))
    unknown = [k for k in wanted if k not in target.tensors]
    if unknown:
        raise PlanError(
            f"cannot initialize {', '.join(map(repr, unknown))}: not a key of the target; "
            f"build the plan from TargetSpec.from_module(model) of this same model",
            problems=[f"{k}: not a target key" for k in unknown],
        )
    return wanted


def _current(module: nn.Module, t: TargetTensor) -> torch.Tensor:
    try:
        owner = module.get_submodule(t.module)
    except AttributeError:
        owner = None
    table = (owner._buffers if t.is_buffer else owner._parameters) if owner is not None else {}
    tensor = table.get(t.name)
    if tensor is None:
        raise PlanError(
            f"{t.key!r}: the module has no tensor {t.name!r} at {t.module or '<root>'!r}; "
            f"the TargetSpec was built from another model, rebuild it with TargetSpec.from_module",
            problems=[f"{t.key}: missing from the module"],
        )
    return tensor


def _fill(spec: TensorInit, t: TargetTensor, generator: torch.Generator) -> torch.Tensor:
    out = torch.empty(t.shape, dtype=work_dtype(t.dtype))
    spec(out, generator=generator)
    return out


def _fallback(t: TargetTensor, current: torch.Tensor, base: int) -> tuple[torch.Tensor, str]:
    """The ``default`` of a module that cannot reset itself."""
    if not current.is_meta:
        return current.detach().clone(), KEPT_CONSTRUCTOR_VALUES
    spec: TensorInit = META_FALLBACK if len(t.shape) >= 2 and t.dtype.is_floating_point else Zeros()
    logger.debug("%s: module cannot reset itself and is on meta; using %s", t.key, spec.describe())
    return _fill(spec, t, generator_for(base, t.key)), spec.describe()
