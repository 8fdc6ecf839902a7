"""Build modules with their parameters on the meta device and their buffers real.

Parameters are what a transfer fills or initializes; building them on ``meta``
costs neither memory nor init time. Buffers stay real, because some of them
(non-persistent ones such as Swin's ``relative_position_index`` or BERT's
``position_ids``) are computed in the constructor, are not in any checkpoint,
and could never be recovered from ``meta``.

This is the technique of accelerate's ``init_empty_weights(include_buffers=False)``:
``Module.register_parameter`` is wrapped for the duration of the build. The
wrapper also records every registration, in order, and can leave chosen ones
real: a second build that keeps the registrations of a few leftover tensors
real runs the constructor's own init on exactly those (see
:class:`weightsurgery.factory.ConstructorReplay`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection, Hashable, Iterator

import torch
from torch import nn

from weightsurgery.sources.shared import tensor_identity

__all__ = ["Registration", "params_on_meta"]

Registration = tuple[nn.Module, str]
"""One ``register_parameter`` call: the module and the parameter's name on it."""

_lock = threading.Lock()


@contextlib.contextmanager
def params_on_meta(keep: Collection[int] = ()) -> Iterator[list[Registration]]:
    """Inside this context, every parameter a module registers moves to the meta device.

    Args:
        keep: indices (in registration order) of parameters to leave real.

    Yields:
        The registrations so far, ``(module, name)`` in call order, one per
        ``register_parameter`` call with a parameter (``None`` is not counted).

    Example:
        >>> with params_on_meta() as registered:
        ...     bn = nn.BatchNorm1d(3)
        >>> bn.weight.device.type, bn.running_var.device.type, [name for _, name in registered]
        ('meta', 'cpu', ['weight', 'bias'])
        >>> with params_on_meta(keep={1}):
        ...     bn = nn.BatchNorm1d(3)
        >>> bn.weight.device.type, bn.bias.tolist()
        ('meta', [0.0, 0.0, 0.0])
    """
    original = nn.Module.register_parameter
    registered: list[Registration] = []
    moved: dict[int, tuple[nn.Parameter, nn.Parameter]] = {}  # id(real) -> (real, meta): a tie stays a tie
    real: dict[int, nn.Parameter] = {}  # kept real; registered again (a tie), it stays real
    views: dict[Hashable, tuple[nn.Parameter, torch.Tensor]] = {}  # view identity -> (real, meta data)

    def register_parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(self, name, param)
        if param is None:
            return
        index = len(registered)
        registered.append((self, name))
        if param.is_meta or index in keep or id(param) in real:
            if index in keep:
                real[id(param)] = param
            return
        seen = moved.get(id(param))
        if seen is None or seen[0] is not param:
            # two Parameter objects over one view of a tensor stay two objects over one meta tensor
            view = views.setdefault(tensor_identity(param), (param, param.to("meta")))
            seen = (param, type(param)(view[1], requires_grad=param.requires_grad))
            moved[id(param)] = seen
        self._parameters[name] = seen[1]

    with _lock:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        try:
            yield registered
        finally:
            nn.Module.register_parameter = original  # type: ignore[method-assign]
