"""Init specs: how a tensor the transfer could not load gets filled.

Each spec is a frozen dataclass named after the :mod:`torch.nn.init` function
it calls, with the same arguments and defaults. A spec fills a tensor in place
with an explicit ``generator`` so that seeding never touches global RNG state,
and describes itself as the string the parser reads back
(``"trunc_normal(std=0.02)"``).

Specs that need a fan (``xavier_*``, ``kaiming_*``, ``orthogonal``) refuse
tensors with fewer than two dimensions at plan time (:meth:`InitSpec.check`)
rather than at apply time: route biases elsewhere with a rule such as
``{"*.bias": "zeros", "*": "kaiming_normal(mode='fan_out')"}``.

:class:`Reset` and :class:`Keep` are special. ``reset`` stands for the
owning module's own initialization, ``keep`` for the values the module's
constructor gave the tensor; :func:`weightsurgery.init.compute_init`, which
knows the module, carries both out. ``keep`` is what a leftover gets when no
rule names it.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch.nn import init as nn_init

from weightsurgery.errors import InitSpecError
from weightsurgery.init.threads import orthogonal_

__all__ = [
    "SPECS",
    "Constant",
    "Default",
    "FanMode",
    "InitSpec",
    "KaimingNormal",
    "KaimingUniform",
    "Nonlinearity",
    "Normal",
    "Ones",
    "Orthogonal",
    "Keep",
    "Reset",
    "TensorInit",
    "TruncNormal",
    "Uniform",
    "XavierNormal",
    "XavierUniform",
    "Zeros",
]

FanMode = Literal["fan_in", "fan_out"]
Nonlinearity = Literal[
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
]


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


def _number(spec: InitSpec, name: str) -> float:
    value = getattr(spec, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InitSpecError(
            f"{spec.name}: {name}={value!r} must be a finite number; signature {type(spec).signature()}"
        )
    number = float(value)
    object.__setattr__(spec, name, number)
    return number


def _choice(spec: InitSpec, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(spec, name)
    if value not in choices:
        raise InitSpecError(f"{spec.name}: {name}={value!r} is not one of {', '.join(map(repr, choices))}")


def _bounds(spec: InitSpec, low: str, high: str) -> None:
    if not _number(spec, low) < _number(spec, high):
        raise InitSpecError(
            f"{spec.name}: needs {low} < {high}, got {low}={getattr(spec, low)!r}, {high}={getattr(spec, high)!r}"
        )


def _non_negative(spec: InitSpec, name: str) -> None:
    if _number(spec, name) < 0:
        raise InitSpecError(f"{spec.name}: {name}={getattr(spec, name)!r} must not be negative")


@dataclass(frozen=True)
class Constant(TensorInit):
    """Fill with ``val`` (:func:`torch.nn.init.constant_`).

    Example:
        >>> t = torch.empty(2)
        >>> Constant(0.5)(t, generator=torch.Generator())
        >>> t.tolist()
        [0.5, 0.5]
    """

    name: ClassVar[str] = "constant"
    val: float

    def __post_init__(self) -> None:
        _number(self, "val")

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        nn_init.constant_(tensor, self.val)


@dataclass(frozen=True)
class Zeros(TensorInit):
    """Fill with zeros (:func:`torch.nn.init.zeros_`)."""

    name: ClassVar[str] = "zeros"

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        nn_init.zeros_(tensor)


@dataclass(frozen=True)
class Ones(TensorInit):
    """Fill with ones (:func:`torch.nn.init.ones_`)."""

    name: ClassVar[str] = "ones"

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        nn_init.ones_(tensor)


@dataclass(frozen=True)
class Uniform(TensorInit):
    """Draw from U(a, b) (:func:`torch.nn.init.uniform_`)."""

    name: ClassVar[str] = "uniform"
    random: ClassVar[bool] = True
    a: float = 0.0
    b: float = 1.0

    def __post_init__(self) -> None:
        _bounds(self, "a", "b")

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        nn_init.uniform_(tensor, self.a, self.b, generator=generator)


@dataclass(frozen=True)
class Normal(TensorInit):
    """Draw from N(mean, std²) (:func:`torch.nn.init.normal_`)."""

    name: ClassVar[str] = "normal"
    random: ClassVar[bool] = True
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        _number(self, "mean")
        _non_negative(self, "std")

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        nn_init.normal_(tensor, self.mean, self.std, generator=generator)


@dataclass(frozen=True)
class TruncNormal(TensorInit):
    """Draw from N(mean, std²) truncated to [a, b] (:func:`torch.nn.init.trunc_normal_`).

    As in torch, ``a`` and ``b`` are absolute bounds, not multiples of ``std``.

    Example:
        >>> t = torch.empty(1000)
        >>> TruncNormal(std=0.02)(t, generator=torch.Generator().manual_seed(0))
        >>> bool(t.abs().max() < 0.1)
        True
    """

    name: ClassVar[str] = "trunc_normal"
    random: ClassVar[bool] = True
    mean: float = 0.0
    std: float = 1.0
    a: float = -2.0
    b: float = 2.0

    def __post_init__(self) -> None:
        _number(self, "mean")
        _non_negative(self, "std")
        _bounds(self, "a", "b")

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        nn_init.trunc_normal_(tensor, self.mean, self.std, self.a, self.b, generator=generator)


@dataclass(frozen=True)
class XavierUniform(TensorInit):
    """Glorot uniform (:func:`torch.nn.init.xavier_uniform_`); needs >= 2 dims."""

    name: ClassVar[str] = "xavier_uniform"
    needs_fan: ClassVar[bool] = True
    random: ClassVar[bool] = True
    gain: float = 1.0

    def __post_init__(self) -> None:
        _number(self, "gain")

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        nn_init.xavier_uniform_(tensor, self.gain, generator=generator)


@dataclass(frozen=True)
class XavierNormal(TensorInit):
    """Glorot normal (:func:`torch.nn.init.xavier_normal_`); needs >= 2 dims."""

    name: ClassVar[str] = "xavier_normal"
    needs_fan: ClassVar[bool] = True
    random: ClassVar[bool] = True
    gain: float = 1.0

    def __post_init__(self) -> None:
        _number(self, "gain")

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        nn_init.xavier_normal_(tensor, self.gain, generator=generator)


def _check_kaiming(spec: KaimingUniform | KaimingNormal) -> None:
    _number(spec, "a")
    _choice(spec, "mode", get_args(FanMode))
    _choice(spec, "nonlinearity", get_args(Nonlinearity))


@dataclass(frozen=True)
class KaimingUniform(TensorInit):
    """He uniform (:func:`torch.nn.init.kaiming_uniform_`); needs >= 2 dims."""

    name: ClassVar[str] = "kaiming_uniform"
    needs_fan: ClassVar[bool] = True
    random: ClassVar[bool] = True
    a: float = 0.0
    mode: FanMode = "fan_in"
    nonlinearity: Nonlinearity = "leaky_relu"

    def __post_init__(self) -> None:
        _check_kaiming(self)

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        nn_init.kaiming_uniform_(tensor, self.a, self.mode, self.nonlinearity, generator=generator)


@dataclass(frozen=True)
class KaimingNormal(TensorInit):
    """He normal (:func:`torch.nn.init.kaiming_normal_`); needs >= 2 dims.

    Example:
        >>> KaimingNormal(mode="fan_out", nonlinearity="relu").describe()
        "kaiming_normal(mode='fan_out', nonlinearity='relu')"
    """

    name: ClassVar[str] = "kaiming_normal"
    needs_fan: ClassVar[bool] = True
    random: ClassVar[bool] = True
    a: float = 0.0
    mode: FanMode = "fan_in"
    nonlinearity: Nonlinearity = "leaky_relu"

    def __post_init__(self) -> None:
        _check_kaiming(self)

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        nn_init.kaiming_normal_(tensor, self.a, self.mode, self.nonlinearity, generator=generator)


@dataclass(frozen=True)
class Orthogonal(TensorInit):
    """A (semi-)orthogonal matrix (:func:`torch.nn.init.orthogonal_`); needs >= 2 dims.

    Its QR runs in float64 on one thread, so a seed gives the same bits
    whatever the thread count (:mod:`weightsurgery.init.threads`).
    """

    name: ClassVar[str] = "orthogonal"
    needs_fan: ClassVar[bool] = True
    random: ClassVar[bool] = True
    gain: float = 1.0

    def __post_init__(self) -> None:
        _number(self, "gain")

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        orthogonal_(tensor, self.gain, generator=generator)


@dataclass(frozen=True)
class Reset(InitSpec):
    """The owning module's own initialization: its ``reset_parameters()``.

    On a transformers model, the model's ``_init_weights(module)`` instead, as
    transformers initializes its modules. Carried out by
    :func:`weightsurgery.init.compute_init`, which runs it on a detached
    replica of the module so loaded siblings keep their values. Fits any
    tensor, buffers included. ``"default"`` is read as ``"reset"``.
    """

    name: ClassVar[str] = "reset"


Default = Reset
"""The former name of :class:`Reset`."""


@dataclass(frozen=True)
class Keep(InitSpec):
    """The values the module's constructor gave the tensor.

    What a leftover gets when no rule names it. On a built model nothing is
    written; on a model a factory built on the meta device, the constructor's
    values are computed for exactly these tensors (see
    :class:`weightsurgery.factory.ConstructorReplay`). Name it in a rule to
    exempt tensors from a broader one: ``{"*.lora_B.*": "keep", "*": "reset"}``.
    """

    name: ClassVar[str] = "keep"


SPECS: dict[str, type[InitSpec]] = {
    cls.name: cls
    for cls in (
        Constant,
        Zeros,
        Ones,
        Uniform,
        Normal,
        TruncNormal,
        XavierUniform,
        XavierNormal,
        KaimingUniform,
        KaimingNormal,
        Orthogonal,
        Reset,
        Keep,
    )
}
"""Every spec the string parser knows, by name."""
