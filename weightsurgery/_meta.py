"""Build modules with their parameters on the meta device and their buffers real.

Parameters are what a transfer fills or initializes; building them on ``meta``
costs neither memory nor init time. Buffers stay real, because some of them
(non-persistent ones such as Swin's ``relative_position_index`` or BERT's
``position_ids``) are computed in the constructor, are not in any checkpoint,
and could never be recovered from ``meta``.

This is the technique of accelerate's ``init_empty_weights(include_buffers=False)``:
``Module.register_parameter`` is wrapped for the duration of the build.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["params_on_meta"]

_lock = threading.Lock()


@contextlib.contextmanager
def params_on_meta() -> Iterator[None]:
    """Inside this context, every parameter a module registers moves to the meta device.

    Example:
        >>> with params_on_meta():
        ...     bn = nn.BatchNorm1d(3)
        >>> bn.weight.device.type, bn.running_var.device.type
        ('meta', 'cpu')
    """
    original = nn.Module.register_parameter

    def register_parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(self, name, param)
        if param is not None and not param.is_meta:
            kwargs = {"requires_grad": param.requires_grad}
            self._parameters[name] = type(param)(param.to("meta"), **kwargs)

    with _lock:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        try:
            yield
        finally:
            nn.Module.register_parameter = original  # type: ignore[method-assign]
