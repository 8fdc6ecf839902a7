"""Compute the fallback init for the target keys the plan leaves over.

:func:`compute_init` returns new tensors and never changes the module; apply
commits them together with the loaded ones. Only the requested keys are
initialized: two leftover tensors cost two small inits, not a whole model's.

What a leftover gets, in order:

* a spec a rule chose (``init="zeros"``, ``{"head.*": "trunc_normal(std=0.02)"}``);
* ``reset``: the model's own init for its module, on a replica: a
  transformers model's ``_init_weights(module)``, else the module's
  ``reset_parameters()``;
* ``keep`` (no rule names it): the values the constructor gave it. A tensor
  that is real already holds them, so nothing is computed or written. A
  parameter on ``meta`` (a factory built it there) gets them from the
  factory's :class:`~weightsurgery.factory.ConstructorReplay`, which runs the
  constructor again with only these parameters real; without one, it gets
  ``reset``.

Seeding: every tensor draws from its own generator, seeded from the base seed
and its key (a module's own reset: from the base seed and the module's path;
a constructor replay: from the base seed). A seeded result is therefore the
same on every run, on every device, whatever the global RNG state and
whichever other keys happened to load. Keeping draws nothing. Every init
runs on one thread, so the thread count does not change the bits either
(:mod:`weightsurgery.init.threads`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from weightsurgery._device import host_copy, staging_value
from weightsurgery.errors import PlanError, TargetError
from weightsurgery.init.module_default import module_default, work_dtype
from weightsurgery.init.rules import InitRules
from weightsurgery.init.seeding import base_seed, derive_seed, generator_for
from weightsurgery.init.threads import single_threaded
from weightsurgery.init.specs import Keep, Reset, TensorInit, TruncNormal, Zeros
from weightsurgery.match.target import TargetSpec, TargetTensor

__all__ = ["CONSTRUCTOR", "KEPT_CONSTRUCTOR_VALUES", "META_FALLBACK", "ConstructorValues", "InitResult", "compute_init"]

logger = logging.getLogger(__name__)

CONSTRUCTOR = "constructor"
"""The spec recorded for a kept tensor: it holds the values its constructor gave it."""

KEPT_CONSTRUCTOR_VALUES = "constructor (the module cannot reset itself)"
"""The spec recorded when a module's reset was asked for but cannot run, and
its tensor keeps the values its constructor gave it."""

META_FALLBACK = TruncNormal(std=0.02)
"""What ``reset`` falls back to on the meta device for floating tensors with
>= 2 dims when the module cannot reset itself; tensors with fewer dims, and
integer tensors, get zeros."""

ConstructorValues = Callable[..., dict[str, torch.Tensor]]
"""``values(keys, seed=...)``: the constructor's values of parameters on ``meta``
(:meth:`weightsurgery.factory.ConstructorReplay.values`)."""


@dataclass(frozen=True)
class InitResult:
    """The fallback init of a set of target keys.

    Attributes:
        tensors: key -> new tensor with the target's shape and dtype, on the
            host whatever the target's device (:func:`weightsurgery._device.staging_value`),
            for every key that gets written. A kept key that is real has none
            (unless asked for with ``materialize=True``).
        specs: key -> the spec that produced it (``"trunc_normal(std=0.02)"``,
            ``"reset"``, ``"constructor"``).
        rules: key -> the label of the rule that chose it (``"head.*"``,
            ``"Conv2d"``, ``"default"``).
        kept: the keys that hold (or get) their constructor's values.
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    specs: dict[str, str] = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)
    kept: tuple[str, ...] = ()


def compute_init(
    module: nn.Module,
    target: TargetSpec,
    keys: Iterable[str],
    rules: InitRules,
    *,
    seed: int | None,
    constructor: ConstructorValues | None = None,
    materialize: Collection[str] = (),
) -> InitResult:
    """Initialize ``keys`` of ``module`` out of place.

    Args:
        module: the target module; not modified.
        target: ``TargetSpec.from_module(module)``.
        keys: the target keys to initialize (tied aliases map to their canonical key).
        rules: chooses each key's spec (see :class:`InitRules`).
        seed: makes the result reproducible; ``None`` draws a base seed from
            torch's global RNG (only if something random runs), so
            ``torch.manual_seed`` still makes it reproducible.
        constructor: the constructor's values for kept parameters on ``meta``;
            without it they get ``reset``.
        materialize: keys whose kept tensor is returned (a copy) even when it
            is real: an adapter fills new rows from it.

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
        >>> res.specs, res.kept, list(res.tensors)
        ({'1.weight': 'constructor', '1.bias': 'zeros'}, ('1.weight',), ['1.bias'])
        >>> res = compute_init(model, target, ["1.weight"], InitRules.from_user("reset"), seed=0)
        >>> torch.equal(res.tensors["1.weight"], model[1].weight)
        False
    """
    with single_threaded():  # the same bits whatever the thread count (weightsurgery.init.threads)
        return _compute(module, target, keys, rules, seed=seed, constructor=constructor, materialize=materialize)


def _compute(
    module: nn.Module,
    target: TargetSpec,
    keys: Iterable[str],
    rules: InitRules,
    *,
    seed: int | None,
    constructor: ConstructorValues | None,
    materialize: Collection[str],
) -> InitResult:
    wanted = _canonical_keys(target, keys)
    chosen = rules.check({k: target.tensors[k] for k in wanted})
    if seed is not None:
        base_seed(seed)  # a bad seed fails before any work
    drawn: list[int] = []

    def base() -> int:  # drawn once, and only when something random runs
        if not drawn:
            drawn.append(base_seed(seed))
        return drawn[0]

    current = {k: _current(module, target.tensors[k]) for k in wanted}
    values: dict[str, torch.Tensor] = {}
    specs: dict[str, str] = {}
    kept: set[str] = set()
    resets: dict[str, list[TargetTensor]] = {}
    replay: list[str] = []
    for key in wanted:
        spec, _ = chosen[key]
        t = target.tensors[key]
        if isinstance(spec, TensorInit):
            values[key] = _fill(spec, t, generator_for(base(), key))
            specs[key] = spec.describe()
        elif isinstance(spec, Keep) and not current[key].is_meta:
            kept.add(key)
            specs[key] = CONSTRUCTOR
            if key in materialize:
                values[key] = host_copy(current[key])
        elif isinstance(spec, Keep) and constructor is not None and not t.is_buffer:
            replay.append(key)
        else:  # reset, or keep on meta with no constructor to replay
            resets.setdefault(t.module, []).append(t)

    if replay:
        got = _replay(constructor, replay, base)
        for key in replay:
            if key in got:
                values[key], specs[key] = got[key], CONSTRUCTOR
                kept.add(key)
            else:
                t = target.tensors[key]
                resets.setdefault(t.module, []).append(t)

    for path, owned in resets.items():
        owner = module.get_submodule(path)
        hook, label = _model_init(module, path)
        reset = module_default(owner, [t.name for t in owned], seed=derive_seed(base(), f"module:{path}"), init=hook)
        for t in owned:
            if t.name in reset:
                values[t.key], specs[t.key] = reset[t.name], label
            elif not current[t.key].is_meta:
                kept.add(t.key)
                specs[t.key] = KEPT_CONSTRUCTOR_VALUES
                if t.key in materialize:
                    values[t.key] = host_copy(current[t.key])
            else:
                values[t.key], specs[t.key] = _fallback(t, base())

    tensors: dict[str, torch.Tensor] = {}
    for key in wanted:
        if key not in values:
            continue
        tensors[key] = staging_value(values[key], target.tensors[key].dtype, current[key].device)  # commit moves it
    logger.debug("initialized %d tensor(s), kept %d", len(tensors) - len(kept & set(tensors)), len(kept))
    return InitResult(
        tensors=tensors,
        specs={k: specs[k] for k in wanted},
        rules={k: chosen[k][1] for k in wanted},
        kept=tuple(k for k in wanted if k in kept),
    )


def _replay(constructor: ConstructorValues | None, keys: Collection[str], base: Callable[[], int]) -> dict[str, torch.Tensor]:
    """The constructor's values of ``keys``, or none where it cannot give them (they get ``reset``)."""
    if constructor is None:
        return {}
    try:
        return constructor(keys, seed=derive_seed(base(), "constructor"))
    except TargetError as exc:
        logger.warning("cannot get the constructor's values of %d leftover tensor(s) (%s); resetting them instead",
                       len(keys), exc)
        return {}


def _model_init(root: nn.Module, path: str) -> tuple[Callable[[nn.Module], object] | None, str]:
    """The model's own per-module init for the module at ``path``, and the spec that names it.

    A transformers model initializes each module with its ``_init_weights``;
    the nearest enclosing ``PreTrainedModel`` is the one whose init applies
    (as transformers' own ``initialize_weights`` dispatches). Anything else
    uses the module's ``reset_parameters()``.
    """
    parts = path.split(".") if path else []
    for depth in range(len(parts), -1, -1):
        ancestor = root.get_submodule(".".join(parts[:depth]))
        if any(c.__name__ == "PreTrainedModel" for c in type(ancestor).__mro__) and callable(
            getattr(ancestor, "_init_weights", None)
        ):
            return ancestor._init_weights, f"{Reset.name} ({type(ancestor).__name__}._init_weights)"
    return None, Reset().describe()


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


def _fallback(t: TargetTensor, base: int) -> tuple[torch.Tensor, str]:
    """The ``reset`` of a module on ``meta`` that cannot reset itself."""
    spec: TensorInit = META_FALLBACK if len(t.shape) >= 2 and t.dtype.is_floating_point else Zeros()
    logger.debug("%s: module cannot reset itself and is on meta; using %s", t.key, spec.describe())
    return _fill(spec, t, generator_for(base, t.key)), spec.describe()
