"""What every init spec is: :class:`InitSpec` and :class:`TensorInit`, and the checks of their arguments.

A spec describes itself as the string the parser reads back
(:meth:`InitSpec.describe`), shows its signature for help and errors
(:meth:`InitSpec.signature`), and refuses at plan time a tensor it cannot
fill (:meth:`InitSpec.check`): a fan-based spec on a tensor of fewer than two
dimensions, a random one on an integer tensor. The concrete specs, one per
:mod:`torch.nn.init` function, are in :mod:`weightsurgery.init.specs`; the
``check_*`` helpers here are what their ``__post_init__`` runs, so that a bad
argument is refused, naming the spec's signature, when the spec is made.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import ClassVar

import torch

from weightsurgery.errors import InitSpecError

__all__ = ["InitSpec", "TensorInit", "check_bounds", "check_choice", "check_non_negative", "check_number"]


class InitSpec(abc.ABC):
    """What fills one tensor: a named spec with literal arguments.

    Subclasses are frozen dataclasses whose fields are the spec's arguments,
    in the positional order the parser accepts.
    """

    name: ClassVar[str]
    needs_fan: ClassVar[bool] = False  # needs a tensor with >= 2 dims (fan-in / fan-out)
    random: ClassVar[bool] = False  # draws random numbers, so needs a floating-point tensor

    def describe(self) -> str:
        """The canonical spec string; :func:`~weightsurgery.init.parse_spec` reads it back.

        Required arguments come first, by position; optional ones follow by
        keyword, and only where they differ from their default.

        Example:
            >>> from weightsurgery.init.specs import Constant, TruncNormal, Zeros
            >>> TruncNormal(std=0.02).describe()
            'trunc_normal(std=0.02)'
            >>> Constant(0.1).describe(), Zeros().describe()
            ('constant(0.1)', 'zeros')
        """
        args = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.default is dataclasses.MISSING:
                args.append(repr(value))
            elif value != f.default:
                args.append(f"{f.name}={value!r}")
        return f"{self.name}({', '.join(args)})" if args else self.name

    @classmethod
    def signature(cls) -> str:
        """The spec's call signature with defaults, for help and error messages.

        Example:
            >>> from weightsurgery.init.specs import KaimingNormal
            >>> KaimingNormal.signature()
            "kaiming_normal(a=0.0, mode='fan_in', nonlinearity='leaky_relu')"
        """
        parts = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if not f.init:
                continue
            parts.append(f.name if f.default is dataclasses.MISSING else f"{f.name}={f.default!r}")
        return f"{cls.name}({', '.join(parts)})" if parts else cls.name

    def check(self, shape: tuple[int, ...], *, key: str, dtype: torch.dtype | None = None) -> None:
        """Refuse a tensor this spec cannot fill, before anything is changed.

        Args:
            shape: the target tensor's shape.
            key: the target key, named in the message.
            dtype: the target tensor's dtype, if known.

        Raises:
            InitSpecError: a fan-based spec on a tensor with fewer than 2 dims, or
                a random spec on an integer or boolean tensor.

        Example:
            >>> from weightsurgery.init.specs import XavierUniform
            >>> XavierUniform().check((10,), key="fc.bias")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            weightsurgery.errors.InitSpecError: 'fc.bias' has shape (10,), but xavier_uniform needs ...
        """
        if self.needs_fan and len(shape) < 2:
            raise InitSpecError(
                f"{key!r} has shape {tuple(shape)}, but {self.name} needs at least 2 dims to compute "
                f"fan-in and fan-out; give it another spec by name, e.g. "
                f"{{{_suffix_glob(key)!r}: 'zeros', '*': {self.describe()!r}}}"
            )
        if self.random and dtype is not None and not dtype.is_floating_point:
            raise InitSpecError(
                f"{key!r} has dtype {dtype}, but {self.name} draws random floats; "
                f"use 'zeros', 'ones', 'constant(val)' or 'default' for it"
            )


class TensorInit(InitSpec):
    """A spec that fills a tensor by itself, without its module."""

    @abc.abstractmethod
    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        """Fill ``tensor`` in place, drawing random numbers from ``generator`` only."""


def _suffix_glob(key: str) -> str:
    return "*." + key.rsplit(".", 1)[-1] if "." in key else key


def check_number(spec: InitSpec, name: str) -> float:
    """Hold ``spec.<name>`` to a finite number, stored as a float; return it."""
    value = getattr(spec, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InitSpecError(
            f"{spec.name}: {name}={value!r} must be a finite number; signature {type(spec).signature()}"
        )
    number = float(value)
    object.__setattr__(spec, name, number)
    return number


def check_choice(spec: InitSpec, name: str, choices: tuple[str, ...]) -> None:
    """Hold ``spec.<name>`` to one of ``choices``."""
    value = getattr(spec, name)
    if value not in choices:
        raise InitSpecError(f"{spec.name}: {name}={value!r} is not one of {', '.join(map(repr, choices))}")


def check_bounds(spec: InitSpec, low: str, high: str) -> None:
    """Hold ``spec.<low>`` and ``spec.<high>`` to numbers with ``low < high``."""
    if not check_number(spec, low) < check_number(spec, high):
        raise InitSpecError(
            f"{spec.name}: needs {low} < {high}, got {low}={getattr(spec, low)!r}, {high}={getattr(spec, high)!r}"
        )


def check_non_negative(spec: InitSpec, name: str) -> None:
    """Hold ``spec.<name>`` to a number that is not negative."""
    if check_number(spec, name) < 0:
        raise InitSpecError(f"{spec.name}: {name}={getattr(spec, name)!r} must not be negative")
