"""Run a module's own initialization without touching the module.

The module's ``reset_parameters()`` (or ``_reset_parameters()``, as
``nn.MultiheadAttention`` has; or the function a caller names, such as a
transformers model's ``_init_weights``) runs on a shallow replica: the same class and
attributes, fresh CPU tensors for its own parameters and buffers, and no child
modules, so the reset can reach neither the real tensors nor another module's.
A reset that fails without children (``MultiheadAttention`` zeroes
``out_proj.bias``) is retried once on a replica whose direct children are
replicas too, still with blank tensors and no grandchildren: the cost stays
bounded by the module and its direct children, and nothing real is reachable.
It runs under a forked CPU RNG seeded from the caller's seed, so it neither
reads nor advances global RNG state.

Floating-point replica tensors start as NaN: a requested tensor the reset did
not fully write still holds NaN and is reported as not reset, rather than
returned half-initialized.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Collection

import torch
from torch import nn

__all__ = ["RESET_METHODS", "module_default", "work_dtype"]

logger = logging.getLogger(__name__)

RESET_METHODS = ("reset_parameters", "_reset_parameters")
"""The methods tried, in order, as a module's own initialization."""


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype init runs in: float32 for half-precision floats, else ``dtype`` itself.

    Initializing in float32 and casting keeps results the same on every device
    and avoids half-precision kernels CPUs lack.

    Example:
        >>> work_dtype(torch.bfloat16), work_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    if dtype.is_floating_point and dtype.itemsize < 4:
        return torch.float32
    return dtype


def module_default(
    owner: nn.Module, names: Collection[str], *, seed: int, init: Callable[[nn.Module], object] | None = None
) -> dict[str, torch.Tensor]:
    """Fresh values for ``owner``'s tensors ``names`` from the module's own reset.

    Args:
        owner: the module that directly owns the tensors; it is not modified.
        names: the tensor names on ``owner`` (``"weight"``, ``"running_mean"``).
        seed: seeds the CPU RNG the reset draws from.
        init: run ``init(replica)`` instead of the module's reset method
            (a transformers model's ``_init_weights``).

    Returns:
        name -> a new CPU tensor in :func:`work_dtype`, for every name the reset
        fully wrote. Names missing from the result were not reset: the module
        has no reset method, the reset raised on both replicas, or it left the
        tensor (partly) untouched.

    Example:
        >>> lin = nn.Linear(4, 2)
        >>> out = module_default(lin, ["bias"], seed=0)
        >>> bool(out["bias"].abs().max() <= 0.5), torch.equal(out["bias"], lin.bias)
        (True, False)
    """
    method = next((m for m in RESET_METHODS if callable(getattr(owner, m, None))), None)
    if init is None and method is None:
        logger.debug("%s has no reset method (%s)", type(owner).__name__, " or ".join(RESET_METHODS))
        return {}
    run = init if init is not None else (lambda replica: getattr(replica, str(method))())
    label = getattr(init, "__qualname__", "init") if init is not None else method
    for depth in (0, 1):
        replica = _replica(owner, depth=depth)
        if replica is not None and _run_reset(replica, run, label, seed=seed):
            break
    else:
        return {}
    out: dict[str, torch.Tensor] = {}
    for name in names:
        tensor = replica._parameters.get(name, replica._buffers.get(name))
        if tensor is None:
            continue
        tensor = tensor.detach()
        if tensor.is_floating_point() and bool(torch.isnan(tensor).any()):
            logger.debug("%s: %s left %r (partly) unset", type(owner).__name__, label, name)
            continue
        out[name] = tensor
    return out


def _replica(module: nn.Module, *, depth: int) -> nn.Module | None:
    """A shallow copy of ``module`` with blank CPU tensors and replicas of its children ``depth`` levels down."""
    try:
        replica = copy.copy(module)
    except Exception as exc:  # a __new__ that runs __init__ (FSDP2's FSDP<Module>), or a __reduce__ that refuses
        try:
            replica = object.__new__(type(module))
            vars(replica).update(vars(module))
        except Exception:
            logger.debug("cannot copy %s to reset it: %r", type(module).__name__, exc)
            return None
    children: dict[str, nn.Module | None] = {}
    if depth > 0:
        for name, child in module._modules.items():
            children[name] = None if child is None else _replica(child, depth=depth - 1)
            if child is not None and children[name] is None:
                return None
    vars(replica).update(
        _parameters={n: None if p is None else _blank_parameter(p) for n, p in module._parameters.items()},
        _buffers={n: None if b is None else _blank(b) for n, b in module._buffers.items()},
        _modules=children,
    )
    return replica


def _run_reset(replica: nn.Module, run: Callable[[nn.Module], object], label: str, *, seed: int) -> bool:
    """Run ``run(replica)`` under a forked CPU RNG seeded with ``seed``; whether it succeeded."""
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.default_generator.manual_seed(seed)
            run(replica)
    except Exception as exc:  # the module's own code: anything may go wrong on a replica
        logger.debug("%s: %s failed on a replica: %r", type(replica).__name__, label, exc)
        return False
    return True


def _blank(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU stand-in for ``tensor``: NaN if floating, else its values (zeros if on meta)."""
    if tensor.is_floating_point():
        return torch.full(tensor.shape, float("nan"), dtype=work_dtype(tensor.dtype))
    if tensor.is_meta:
        return torch.zeros(tensor.shape, dtype=tensor.dtype)
    return tensor.detach().to("cpu", copy=True)


def _blank_parameter(param: torch.Tensor) -> nn.Parameter:
    blank = _blank(param)
    return nn.Parameter(blank, requires_grad=param.requires_grad and blank.is_floating_point())
