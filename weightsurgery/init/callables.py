"""User functions as init specs: ``fn(tensor)`` or ``fn(tensor, generator=...)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from weightsurgery.errors import InitSpecError
from weightsurgery.init.specs import TensorInit

__all__ = ["CallableSpec"]


@dataclass(frozen=True)
class CallableSpec(TensorInit):
    """A user function that fills a tensor in place: ``fn(tensor)`` or ``fn(tensor, generator=...)``.

    A function without a ``generator`` parameter runs with torch's global CPU
    RNG forked and seeded from the generator, so seeding still makes it
    reproducible and global RNG state is left as it was. (The engine always
    initializes on CPU and moves the result to the target's device.)

    Example:
        >>> spec = CallableSpec(torch.nn.init.zeros_)
        >>> spec.describe(), spec.takes_generator
        ('torch.nn.init.zeros_', False)
    """

    fn: Callable[..., Any]
    takes_generator: bool = field(init=False, compare=False)

    name: ClassVar[str] = "callable"

    def __post_init__(self) -> None:
        label = _qualified_name(self.fn)
        try:
            sig = inspect.signature(self.fn)
        except (TypeError, ValueError):  # some builtins have no signature: assume fn(tensor)
            object.__setattr__(self, "takes_generator", False)
            return
        try:
            sig.bind(torch.empty(0))
        except TypeError as exc:
            raise InitSpecError(
                f"init callable {label} must accept the tensor as its only required argument "
                f"(fn(tensor) or fn(tensor, generator=...)); its signature is {sig}"
            ) from exc
        params = sig.parameters.values()
        takes = any(p.kind is p.VAR_KEYWORD for p in params) or (
            "generator" in sig.parameters and sig.parameters["generator"].kind is not inspect.Parameter.POSITIONAL_ONLY
        )
        object.__setattr__(self, "takes_generator", takes)

    def describe(self) -> str:
        return _qualified_name(self.fn)

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        if self.takes_generator:
            self.fn(tensor, generator=generator)
            return
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            self.fn(tensor)


def _qualified_name(fn: Callable[..., Any]) -> str:
    qualname = getattr(fn, "__qualname__", None)
    if qualname is None:
        return repr(fn)
    module = getattr(fn, "__module__", None)
    return f"{module}.{qualname}" if module else qualname
