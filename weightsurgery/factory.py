"""Build a target model from a factory spec: ``timm:NAME``, ``torchvision:NAME``, ``transformers:CLASS`` or ``pkg.module:callable``.

``transformers:CLASS`` (``transformers:AutoModelForCausalLM``, ``transformers:LlamaForCausalLM``)
builds ``CLASS.from_config(config)`` (a model class: ``CLASS(config)``); ``config`` is a keyword argument (a config
object, a folder holding ``config.json`` or a hub repo id), and
:func:`weightsurgery.transfer` passes the source's own ``config.json`` when
none is given.

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

The spec forms, in the order they are tried:

1. a callable (a class or a function returning an ``nn.Module``), called with the kwargs;
2. ``timm:NAME`` (``NAME`` may carry a pretrained tag, ``resnet50.a1_in1k``),
   built with ``timm.create_model(NAME, pretrained=False, **kwargs)``;
3. ``torchvision:NAME``, built with ``torchvision.models.get_model(NAME, weights=None, **kwargs)``;
4. ``package.module:attribute`` (``attribute`` may be dotted, ``Class.from_config``),
   imported with :mod:`importlib` and called with the kwargs.

**A spec runs code**, the way ``python -c "import package.module;
package.module.attribute(**kwargs)"`` does: importing the module runs it, and
the callable runs with the keyword arguments given. Give only specs you
would run yourself. A callable from Python's standard library (``os:system``,
``subprocess:run``, ``builtins:eval``, ``shutil:rmtree``...) is refused: a
model factory never lives there. A module name must be a dotted Python name
(``pkg.models``), never a path (``../models``).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import logging
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from weightsurgery._meta import Registration, params_on_meta
from weightsurgery.errors import TargetError

__all__ = ["BuiltTarget", "ConstructorReplay", "build", "build_target", "parse_kwargs"]

logger = logging.getLogger(__name__)

SPEC_FORMS = "'timm:NAME', 'torchvision:NAME', 'transformers:CLASS' or 'package.module:callable'"


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
    factory, label = _factory_for(spec)
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


def _factory_for(spec: str | Callable[..., nn.Module]) -> tuple[Callable[..., Any], str]:
    """The callable behind ``spec`` and a label naming it in messages."""
    if callable(spec):
        return spec, getattr(spec, "__qualname__", repr(spec))
    if not isinstance(spec, str):
        raise TargetError(f"a target must be a callable or a spec string {SPEC_FORMS}, not {type(spec).__name__}")
    prefix, sep, name = spec.partition(":")
    if not sep or not prefix or not name:
        raise TargetError(f"target {spec!r} is not a factory spec; write it as {SPEC_FORMS}")
    if prefix == "timm":
        return _timm_factory(name), spec
    if prefix == "torchvision":
        return _torchvision_factory(name), spec
    if prefix == "transformers":
        return _transformers_factory(name, spec), spec
    return _import_factory(prefix, name, spec), spec


def _timm_factory(name: str) -> Callable[..., Any]:
    import timm
    from timm.models import split_model_name_tag

    arch, _tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        closest = _closest(arch, timm.list_models(), listing="timm.list_models()")
        raise TargetError(f"timm has no model {arch!r}; closest: {closest}")

    def create(**kwargs: Any) -> nn.Module:
        return timm.create_model(name, pretrained=False, **kwargs)

    return create


def _torchvision_factory(name: str) -> Callable[..., Any]:
    from torchvision import models

    if name not in models.list_models():
        closest = _closest(name, models.list_models(), listing="torchvision.models.list_models()")
        raise TargetError(f"torchvision has no model {name!r}; closest: {closest}")

    def create(**kwargs: Any) -> nn.Module:
        return models.get_model(name, weights=None, **kwargs)

    return create


def _transformers_factory(name: str, spec: str) -> Callable[..., Any]:
    """``CLASS.from_config(config, **kwargs)`` for an Auto class (``AutoModelForCausalLM``), else ``CLASS(config)``."""
    import transformers

    cls = getattr(transformers, name, None)
    if not isinstance(cls, type):
        names = [n for n in dir(transformers) if n.startswith("AutoModel") or n.endswith(("ForCausalLM", "Model"))]
        raise TargetError(f"target {spec!r}: transformers has no model class {name!r}; "
                          f"closest: {_closest(name, names, listing='transformers.AutoModel*')}")

    def create(config: Any = None, **kwargs: Any) -> nn.Module:
        if config is None:
            raise TargetError(
                f"target {spec!r} needs a config: pass target_kwargs={{'config': PATH_OR_REPO}} (a folder with "
                "config.json, a config.json file or a hub repo id), or transfer from a folder holding config.json"
            )
        if not isinstance(config, transformers.PretrainedConfig):
            config = transformers.AutoConfig.from_pretrained(str(config))
        make = getattr(cls, "from_config", None)  # the Auto classes; a model class is built from its config
        return make(config, **kwargs) if callable(make) else cls(config, **kwargs)

    return create


def _import_factory(module_name: str, attr_path: str, spec: str) -> Callable[..., Any]:
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise TargetError(
            f"target {spec!r}: {module_name!r} is not a module name; a TARGET names an importable module "
            f"(pkg.models:build_net), not a file: add its folder to PYTHONPATH (accepted forms: {SPEC_FORMS})"
        )
    if not all(part.isidentifier() for part in attr_path.split(".")):
        raise TargetError(
            f"target {spec!r}: {attr_path!r} is not an attribute name; write it like pkg.models:build_net"
        )
    _refuse_stdlib(module_name, spec)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and not module_name.startswith(exc.name):
            raise  # the module exists but one of its own imports is missing: that is its bug, shown as is
        raise TargetError(
            f"target {spec!r}: module {module_name!r} cannot be imported; check the spelling, "
            f"install it, or add its folder to PYTHONPATH (accepted forms: {SPEC_FORMS})"
        ) from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            owner = getattr(obj, "__name__", module_name)
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise TargetError(
                f"target {spec!r}: {owner!r} has no attribute {part!r}; "
                f"closest: {_closest(part, names, listing=f'dir({owner})')}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise TargetError(f"target {spec!r} names a {type(obj).__name__}, not a callable that returns an nn.Module")
    _refuse_stdlib(_defined_in(obj), spec)
    return obj


def _refuse_stdlib(module_name: str | None, spec: str) -> None:
    """A TARGET runs code; one from the standard library (``os:system``) is never a model factory."""
    root = (module_name or "").split(".")[0]
    if root in sys.stdlib_module_names or root == "__main__":
        raise TargetError(
            f"target {spec!r} is refused: it comes from Python's standard library ({module_name}), where no "
            f"model factory lives, and a TARGET runs code. Name your model's factory ({SPEC_FORMS})"
        )


def _defined_in(obj: Any) -> str | None:
    """The module that defines a callable, through ``functools.partial`` and bound methods."""
    for _ in range(100):
        inner = getattr(obj, "func", None) or getattr(obj, "__func__", None)
        if inner is None or inner is obj:
            break
        obj = inner
    return getattr(obj, "__module__", None)


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


def _closest(name: str, choices: Sequence[str], *, listing: str) -> str:
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    return ", ".join(close) if close else f"none close (list them with {listing})"
