"""Non-persistent buffers of a model built on ``meta``: computed again by their own module.

A rotary embedding's ``inv_freq`` or a causal mask is not in any state dict,
so no checkpoint fills it; on a model built under ``torch.device("meta")`` it
is left on ``meta``. It is computed the way its module computes it: a
transformers model's ``_init_weights(module)`` (which recomputes rotary
buffers) or the module's own ``reset_parameters()``, run on a replica
(:func:`~weightsurgery.init.module_default.module_default`), never on the
model. A buffer neither computes is named in a warning: it is not filled with
zeros or left uninitialized behind the user's back.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

__all__ = ["meta_buffers", "recompute_buffers"]

logger = logging.getLogger(__name__)


def meta_buffers(module: nn.Module) -> dict[str, list[str]]:
    """Module path -> names of its non-persistent buffers still on ``meta``.

    Example:
        >>> with torch.device("meta"):
        ...     m = nn.Module()
        ...     m.register_buffer("mask", torch.ones(2), persistent=False)
        >>> meta_buffers(m)
        {'': ['mask']}
    """
    out: dict[str, list[str]] = {}
    for path, mod in module.named_modules():
        names = [n for n, b in mod._buffers.items()
                 if b is not None and b.is_meta and n in getattr(mod, "_non_persistent_buffers_set", ())]
        if names:
            out[path] = names
    return out


def recompute_buffers(module: nn.Module, wanted: dict[str, list[str]], *, seed: int) -> tuple[
        dict[tuple[str, str], torch.Tensor], list[str]]:
    """Compute ``wanted`` buffers by their modules' own code, without touching ``module``.

    Returns:
        ``(path, name) -> value`` (CPU, the buffer's dtype) for every buffer computed,
        and the ``path.name`` of those no module code computed.
    """
    from weightsurgery.init.engine import _model_init
    from weightsurgery.init.module_default import module_default
    from weightsurgery.init.seeding import derive_seed

    values: dict[tuple[str, str], torch.Tensor] = {}
    missing: list[str] = []
    for path, names in wanted.items():
        owner = module.get_submodule(path)
        hook, _ = _model_init(module, path)
        got = module_default(owner, names, seed=derive_seed(seed, f"buffers:{path}"), init=hook)
        for name in names:
            if name in got:
                values[(path, name)] = got[name].to(owner._buffers[name].dtype)
            else:
                missing.append(f"{path}.{name}" if path else name)
    if missing:
        logger.warning(
            "non-persistent buffer(s) %s are on meta and neither their module's reset_parameters() nor the "
            "model's _init_weights computes them; they stay on meta: compute them yourself (rebuild that module "
            "on the CPU) before using the model", ", ".join(missing))
    return values, missing


def set_buffers(module: nn.Module, values: dict[tuple[str, str], torch.Tensor], device: torch.device) -> None:
    """Put the computed buffers in place (on ``device``)."""
    for (path, name), value in values.items():
        module.get_submodule(path)._buffers[name] = value.to(device)
