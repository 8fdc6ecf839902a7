"""Recognize optimizer state, so that its moments never pass for model weights.

An optimizer's per-parameter slots (Adam's ``exp_avg`` and ``exp_avg_sq``,
SGD's ``momentum_buffer``...) have exactly the shapes of the weights they
belong to, so a matcher that saw them could load a moment into the model.
Training checkpoints hold them in three forms, all recognized here:

* under a container key that names optimizer state (:data:`OPTIMIZER_KEYS`:
  ``optimizer``, ``optimizer_states``, ``optim``...), in any layout;
* as a mapping in ``torch.optim.Optimizer.state_dict()``'s layout, under any
  key: ``{"state": {0: {"exp_avg": ...}}, "param_groups": [...]}``
  (:func:`is_optimizer_state`), or one parameter's slots alone
  (``{"exp_avg": ..., "exp_avg_sq": ..., "step": ...}``, :func:`is_slot_mapping`);
* flattened into a flat state dict beside the weights: ``state.0.exp_avg``,
  ``optimizer.state.3.momentum_buffer``, ``optim.param_groups.0.lr``
  (:func:`is_optimizer_key`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["OPTIMIZER_KEYS", "SLOT_NAMES", "is_optimizer_key", "is_optimizer_state", "is_slot_mapping"]

OPTIMIZER_KEYS: frozenset[str] = frozenset(
    {
        "optimizer",
        "optimizers",
        "optimizer_state",
        "optimizer_states",
        "optimizer_state_dict",
        "optim",
        "optims",
        "optim_state",
        "optim_states",
        "optim_state_dict",
        "opt_state",
        "opt_state_dict",
    }
)
"""Container keys (compared lower-cased) under which training scripts save optimizer state."""

SLOT_NAMES: frozenset[str] = frozenset(
    {
        "step",
        "exp_avg",  # Adam, AdamW, NAdam, RAdam, Lamb
        "exp_avg_sq",
        "max_exp_avg_sq",  # amsgrad
        "exp_inf",  # Adamax
        "momentum_buffer",  # SGD
        "square_avg",  # RMSprop, Adadelta
        "grad_avg",  # centered RMSprop
        "acc_delta",  # Adadelta
        "sum",  # Adagrad
        "mu_product",  # NAdam
        "eta",  # ASGD
        "mu",
        "ax",
        "prev",  # Rprop
        "step_size",
        "exp_avg_sq_row",  # Adafactor
        "exp_avg_sq_col",
    }
)
"""Per-parameter slot names of the optimizers in ``torch.optim`` (and Adafactor)."""

_MOMENTS = SLOT_NAMES - {"step"}
_FLATTENED = re.compile(r"(?:^|\.)(?:state\.\d+\.(\w+)|param_groups\.\d+(?:\.\w+)+)$")


def is_optimizer_state(mapping: Mapping[object, object]) -> bool:
    """A mapping in ``Optimizer.state_dict()``'s layout: ``state`` and ``param_groups``.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9)
        >>> is_optimizer_state(opt.state_dict()), is_optimizer_state({"state": {}})
        (True, False)
    """
    return "state" in mapping and "param_groups" in mapping


def is_slot_mapping(mapping: Mapping[object, object]) -> bool:
    """One parameter's optimizer slots: every string key a slot name, and a moment among them.

    Example:
        >>> import torch
        >>> is_slot_mapping({"step": torch.tensor(3.0), "exp_avg": torch.ones(2), "exp_avg_sq": torch.ones(2)})
        True
        >>> is_slot_mapping({"weight": torch.ones(2), "exp_avg": torch.ones(2)})
        False
    """
    names = [k for k in mapping if isinstance(k, str)]
    return bool(names) and set(names) <= SLOT_NAMES and bool(set(names) & _MOMENTS)


def is_optimizer_key(key: str) -> bool:
    """A flat key that is flattened optimizer state, not a weight.

    True when its first component names optimizer state (:data:`OPTIMIZER_KEYS`),
    when it ends in ``state.<index>.<slot>`` with a slot of :data:`SLOT_NAMES`,
    or when it sits under ``param_groups.<index>``.

    Example:
        >>> [is_optimizer_key(k) for k in ("state.0.exp_avg", "optimizer.state.3.momentum_buffer",
        ...                                 "optim.param_groups.0.lr", "encoder.state.0.weight", "fc.weight")]
        [True, True, True, False, False]
    """
    if key[:3].lower() == "opt" and key.partition(".")[0].lower() in OPTIMIZER_KEYS:  # every name starts so
        return True
    if "state." not in key and "param_groups." not in key:
        return False
    m = _FLATTENED.search(key)
    return m is not None and (m.group(1) is None or m.group(1) in SLOT_NAMES)
