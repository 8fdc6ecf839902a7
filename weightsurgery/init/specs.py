"""Init specs: how a tensor the transfer could not load gets filled.

Each spec is a frozen dataclass named after the :mod:`torch.nn.init` function
it calls, with the same arguments and defaults. A spec fills a tensor in place
with an explicit ``generator`` so that seeding never touches global RNG state,
and describes itself as the string the parser reads back
(``"trunc_normal(std=0.02)"``).

What every spec shares (describing itself, its signature, refusing a tensor it
cannot fill) is :class:`~weightsurgery.init.spec_base.InitSpec`'s, in
:mod:`weightsurgery.init.spec_base`; :class:`InitSpec` and :class:`TensorInit`
are re-exported here.

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

from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch.nn import init as nn_init

from weightsurgery.init.spec_base import (
    InitSpec,
    TensorInit,
    check_bounds,
    check_choice,
    check_non_negative,
    check_number,
)
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
        check_number(self, "val")

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
        check_bounds(self, "a", "b")

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
        check_number(self, "mean")
        check_non_negative(self, "std")

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
        check_number(self, "mean")
        check_non_negative(self, "std")
        check_bounds(self, "a", "b")

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        nn_init.trunc_normal_(tensor, self.mean, self.std, self.a, self.b, generator=generator)


@dataclass(frozen=True)
class _GainSpec(TensorInit):
    """A fan-based random spec whose one argument is a ``gain``: Xavier's and the orthogonal one."""

    needs_fan: ClassVar[bool] = True
    random: ClassVar[bool] = True
    gain: float = 1.0

    def __post_init__(self) -> None:
        check_number(self, "gain")


@dataclass(frozen=True)
class XavierUniform(_GainSpec):
    """Glorot uniform (:func:`torch.nn.init.xavier_uniform_`); needs >= 2 dims."""

    name: ClassVar[str] = "xavier_uniform"

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        nn_init.xavier_uniform_(tensor, self.gain, generator=generator)


@dataclass(frozen=True)
class XavierNormal(_GainSpec):
    """Glorot normal (:func:`torch.nn.init.xavier_normal_`); needs >= 2 dims."""

    name: ClassVar[str] = "xavier_normal"

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        nn_init.xavier_normal_(tensor, self.gain, generator=generator)


@dataclass(frozen=True)
class _KaimingSpec(TensorInit):
    """He's specs: the negative slope ``a``, the fan ``mode`` and the ``nonlinearity`` the gain is for."""

    needs_fan: ClassVar[bool] = True
    random: ClassVar[bool] = True
    a: float = 0.0
    mode: FanMode = "fan_in"
    nonlinearity: Nonlinearity = "leaky_relu"

    def __post_init__(self) -> None:
        check_number(self, "a")
        check_choice(self, "mode", get_args(FanMode))
        check_choice(self, "nonlinearity", get_args(Nonlinearity))


@dataclass(frozen=True)
class KaimingUniform(_KaimingSpec):
    """He uniform (:func:`torch.nn.init.kaiming_uniform_`); needs >= 2 dims."""

    name: ClassVar[str] = "kaiming_uniform"

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        nn_init.kaiming_uniform_(tensor, self.a, self.mode, self.nonlinearity, generator=generator)


@dataclass(frozen=True)
class KaimingNormal(_KaimingSpec):
    """He normal (:func:`torch.nn.init.kaiming_normal_`); needs >= 2 dims.

    Example:
        >>> KaimingNormal(mode="fan_out", nonlinearity="relu").describe()
        "kaiming_normal(mode='fan_out', nonlinearity='relu')"
    """

    name: ClassVar[str] = "kaiming_normal"

    def __call__(self, tensor: torch.Tensor, *, generator: torch.Generator) -> None:
        nn_init.kaiming_normal_(tensor, self.a, self.mode, self.nonlinearity, generator=generator)


@dataclass(frozen=True)
class Orthogonal(_GainSpec):
    """A (semi-)orthogonal matrix (:func:`torch.nn.init.orthogonal_`); needs >= 2 dims.

    Its QR runs in float64 on one thread, so a seed gives the same bits
    whatever the thread count (:mod:`weightsurgery.init.threads`).
    """

    name: ClassVar[str] = "orthogonal"

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
