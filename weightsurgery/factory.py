"""Build a target model from a factory spec: ``timm:NAME``, ``torchvision:NAME``, ``transformers:CLASS`` or ``pkg.module:callable``.

A target is built with its parameters on the meta device by default, so that
constructing it costs no initialization: :func:`weightsurgery.transfer`
materializes only what it fills. Buffers stay real (see
:mod:`weightsurgery._meta`). A model that still ends up with a buffer on
``meta`` (computed from a parameter's device), or whose constructor reads a
parameter's value (``.item()``, ``.tolist()``), is rebuilt on the CPU.

A constructor's init never runs on ``meta``. :func:`build` therefore also
returns a :class:`ConstructorReplay`: the leftovers of a transfer get the
values the constructor gives them by building once more with only their
parameters real (see :mod:`weightsurgery.init`).

Which callable a spec names, the spec forms, and which specs are refused
because a spec runs code, is :mod:`weightsurgery.factory_specs`'s; this
module builds the model and replays its constructor.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from weightsurgery._meta import Registration, params_on_meta
from weightsurgery.errors import TargetError
from weightsurgery.factory_specs import factory_for

__all__ = ["BuiltTarget", "ConstructorReplay", "build", "build_target", "parse_kwargs"]

logger = logging.getLogger(__name__)


def build_target(spec: str | Callable[..., nn.Module], /, *, meta: bool = True, **kwargs: Any) -> nn.Module:
    """Build the model a spec names, without paying for its initialization.

    Args:
        spec: ``timm:NAME``, ``torchvision:NAME``, ``package.module:callable``,
            or a callable returning an ``nn.Module``.
        meta: build the parameters on the meta device (no memory, no init
            cost); buffers stay real. A model whose constructor needs its
            parameters' values is rebuilt on the CPU, with a log line.
        **kwargs: passed to the factory (``num_classes=10``, ``in_chans=1``...).

    Returns:
        The model, its parameters on the meta device when ``meta`` is true and it could be built so.

    Raises:
        TargetError: the spec has none of the accepted forms, names a model or
            callable that does not exist (the message lists the closest names),
            rejects the keyword arguments, raises while building (the original
            exception is chained), or does not return an ``nn.Module``.

    Example:
        >>> model = build_target("torchvision:resnet18", num_classes=10)
        >>> model.fc.weight.shape, model.fc.weight.device.type
        (torch.Size([10, 512]), 'meta')
        >>> build_target("torchvision:resnet1")
        Traceback (most recent call last):
        ...
        weightsurgery.errors.TargetError: torchvision has no model 'resnet1'; closest: resnet18, resnet152, resnet101, resnet50, resnet34
    """
    return build(spec, meta=meta, **kwargs).model


@dataclass(frozen=True)
class ConstructorReplay:
    """Gives chosen parameters of a meta-built model the values its constructor gives them.

    The constructor runs again with :func:`~weightsurgery._meta.params_on_meta`
    leaving real only the registrations that became those parameters in the
    first build. Whatever the constructor does to them then really happens:
    ``reset_parameters()``, ``nn.init.normal_(self.fc2.weight, std=0.01)``,
    ``self.apply(my_init)``, ``nn.Parameter(torch.ones(4))``, timm's
    ``init_weights``, transformers' ``post_init``. Every other parameter
    stays on ``meta``, so only the chosen ones cost init. If the second build
    does not line up with the first (a constructor that registers differently
    from run to run, or whose init reads a parameter left on ``meta``), the
    model is built once for real on the CPU instead, with a log line.

    Attributes:
        factory: the callable that built the model, with ``kwargs``.
        label: how messages name it.
        kwargs: the keyword arguments it was called with.
        keys: per registration (in call order), every state-dict key that parameter ended up under.
        signature: key -> (shape, dtype) of every parameter of the first build.

    Example:
        >>> def net() -> nn.Module:
        ...     model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        ...     nn.init.constant_(model[1].bias, 0.5)
        ...     return model
        >>> built = build(net)
        >>> built.model[1].bias.is_meta
        True
        >>> built.replay.values(["1.bias"], seed=0)["1.bias"].tolist()
        [0.5, 0.5]
    """

    factory: Callable[..., Any]
    label: str
    kwargs: dict[str, Any]
    keys: tuple[tuple[str, ...], ...]
    signature: dict[str, tuple[tuple[int, ...], torch.dtype]] = field(repr=False)

    @classmethod
    def record(
        cls, factory: Callable[..., Any], label: str, kwargs: dict[str, Any], model: nn.Module,
        registered: list[Registration],
    ) -> ConstructorReplay:
        """Remember how ``model`` was built: which registration became which key."""
        paths: dict[int, list[str]] = {}
        for path, mod in model.named_modules(remove_duplicate=False):
            paths.setdefault(id(mod), []).append(f"{path}." if path else "")
        keys = tuple(
            tuple(f"{prefix}{name}" for prefix in paths.get(id(mod), ()) if mod._parameters.get(name) is not None)
            for mod, name in registered
        )
        signature = {k: (tuple(p.shape), p.dtype) for k, p in model.named_parameters(remove_duplicate=False)}
        return cls(factory, label, dict(kwargs), keys, signature)

    def values(self, keys: Collection[str], *, seed: int) -> dict[str, torch.Tensor]:
        """The constructor's values of the parameters ``keys``, as new CPU tensors.

        Args:
            keys: parameter keys of the first build.
            seed: seeds the CPU RNG the constructor draws from (global RNG state is left as it was).

        Returns:
            key -> tensor, for every key.

        Raises:
            TargetError: a key is not a parameter of the model, or the model
                could not be built again.
        """
        wanted = set(keys)
        unknown = sorted(wanted - set(self.signature))
        if unknown:
            raise TargetError(f"{self.label}: {', '.join(unknown)} are not parameters of the model it builds")
        keep = {i for i, names in enumerate(self.keys) if wanted.intersection(names)}
        try:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                with params_on_meta(keep) as registered:
                    model = _call(self.factory, self.label, self.kwargs, on_meta=True)
            out = self._take(model, wanted, registrations=len(registered))
        except (TargetError, NotImplementedError, RuntimeError) as exc:
            out, reason = None, f"{type(exc).__name__}: {exc}"
        else:
            reason = "its second build registers its parameters differently"
        if out is not None:
            return out
        logger.info("%s: building it on the CPU for the constructor's values of %d tensor(s) (%s)",
                    self.label, len(wanted), reason)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            model = _call(self.factory, self.label, self.kwargs)
        out = self._take(model, wanted, registrations=None)
        if out is None:
            raise TargetError(f"{self.label}: built on the CPU, its parameters differ from the first build")
        return out

    def _take(self, model: nn.Module, wanted: set[str], *, registrations: int | None) -> dict[str, torch.Tensor] | None:
        if registrations is not None and registrations != len(self.keys):
            return None
        params = dict(model.named_parameters(remove_duplicate=False))
        if {k: (tuple(p.shape), p.dtype) for k, p in params.items()} != self.signature:
            return None
        if any(params[k].is_meta for k in wanted):
            return None
        out = {}
        for k in wanted:
            t = params[k].detach()
            whole = t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
            out[k] = t if whole else t.clone(memory_format=torch.contiguous_format)
        return out


@dataclass(frozen=True)
class BuiltTarget:
    """A model built from a factory, and how to get its constructor's values.

    Attributes:
        model: the model.
        replay: how to get the constructor's values of parameters left on
            ``meta``; ``None`` when the model was built for real (its
            parameters already hold them).
    """

    model: nn.Module
    replay: ConstructorReplay | None = None


def build(spec: str | Callable[..., nn.Module], /, *, meta: bool = True, **kwargs: Any) -> BuiltTarget:
    """:func:`build_target`, with the :class:`ConstructorReplay` of a model built on ``meta``.

    Example:
        >>> built = build(nn.Linear, in_features=2, out_features=3)
        >>> built.model.weight.is_meta, built.replay.keys
        (True, (('weight',), ('bias',)))
        >>> build(nn.Linear, meta=False, in_features=2, out_features=3).replay is None
        True
    """
    factory, label = factory_for(spec)
    if meta:
        try:
            with params_on_meta() as registered:
                model = _call(factory, label, kwargs, on_meta=True)
        except (NotImplementedError, RuntimeError) as exc:
            if "meta" not in str(exc):
                raise
            logger.info("%s cannot be built on the meta device (%s); building it on the CPU instead", label, exc)
        else:
            stuck = [name for name, b in model.named_buffers() if b.is_meta]
            if not stuck:
                return BuiltTarget(model, ConstructorReplay.record(factory, label, kwargs, model, registered))
            logger.info(
                "%s computes buffers from its parameters' device (%s); building it on the CPU instead",
                label, ", ".join(stuck[:3]),
            )
    return BuiltTarget(_call(factory, label, kwargs))


def parse_kwargs(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings (the CLI's ``--kw``) into factory keyword arguments.

    Values are read as Python literals (``10``, ``0.1``, ``True``, ``None``,
    ``(224, 224)``, ``'str'``); anything else is kept as a plain string.

    Args:
        items: strings of the form ``key=value``; ``key`` must be an identifier.

    Returns:
        The keyword arguments, in the order given (a later key overrides an earlier one).

    Raises:
        TargetError: an item has no ``=`` or its key is not a Python identifier.

    Example:
        >>> parse_kwargs(["num_classes=10", "drop_rate=0.1", "global_pool=avg", "img_size=(96, 96)"])
        {'num_classes': 10, 'drop_rate': 0.1, 'global_pool': 'avg', 'img_size': (96, 96)}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise TargetError(
                f"keyword argument {item!r} is not of the form key=value with key a Python identifier; "
                "write it like num_classes=10 or global_pool=avg"
            )
        try:
            out[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            out[key] = raw.strip()
    return out


def _call(factory: Callable[..., Any], label: str, kwargs: dict[str, Any], *, on_meta: bool = False) -> nn.Module:
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        if not kwargs:
            raise TargetError(f"target {label!r} failed to build: {exc}") from exc
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise TargetError(
            f"target {label!r} rejected the keyword arguments {given}: {exc}; drop or rename them"
        ) from exc
    except (NotImplementedError, RuntimeError) as exc:
        if on_meta and "meta" in str(exc):
            raise  # build_target retries on the CPU
        raise TargetError(f"target {label!r} failed to build: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise TargetError(
            f"target {label!r} failed to build: {type(exc).__name__}: {exc}; fix the factory or its arguments"
        ) from exc
    if not isinstance(model, nn.Module):
        raise TargetError(f"target {label!r} returned a {type(model).__name__}, not an nn.Module")
    return model
