"""Resolve a factory spec (``timm:NAME``, ``transformers:CLASS``, ``pkg.module:callable``...) to its callable.

:func:`factory_for` only finds the callable and checks it may run;
:mod:`weightsurgery.factory` calls it to build the model (on the meta device)
and replays its constructor.

``transformers:CLASS`` (``transformers:AutoModelForCausalLM``, ``transformers:LlamaForCausalLM``)
builds ``CLASS.from_config(config)`` (a model class: ``CLASS(config)``); ``config`` is a keyword argument (a config
object, a folder holding ``config.json`` or a hub repo id), and
:func:`weightsurgery.transfer` passes the source's own ``config.json`` when
none is given.

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

import difflib
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from weightsurgery.errors import TargetError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["SPEC_FORMS", "factory_for"]

SPEC_FORMS = "'timm:NAME', 'torchvision:NAME', 'transformers:CLASS' or 'package.module:callable'"
"""The accepted spec forms, as messages name them."""


def factory_for(spec: str | Callable[..., nn.Module]) -> tuple[Callable[..., Any], str]:
    """The callable behind ``spec`` and a label naming it in messages; nothing is built.

    Args:
        spec: a callable, or a spec string in one of the forms above.

    Returns:
        The callable (called later with the keyword arguments) and its label:
        the spec string, or a callable's qualified name.

    Raises:
        TargetError: the spec has none of the forms, names a model, module or
            attribute that does not exist (the closest names are listed), names
            something that is not callable, or comes from the standard library.

    Example:
        >>> factory, label = factory_for("torch.nn:Linear")
        >>> factory.__name__, label
        ('Linear', 'torch.nn:Linear')
        >>> factory_for("os:system")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        weightsurgery.errors.TargetError: target 'os:system' is refused: it comes from Python's standard library (os)...
    """
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


def _closest(name: str, choices: Sequence[str], *, listing: str) -> str:
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    return ", ".join(close) if close else f"none close (list them with {listing})"
