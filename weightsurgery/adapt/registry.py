"""The adapter registry: names -> small pure tensor functions.

An adapter is registered under a name with :func:`register_adapter` and run by
name with :func:`run_adapter`. A registered function has the signature::

    fn(tensors: tuple[Tensor, ...], target_shape: tuple[int, ...], *, <options>, [fill]) -> Tensor

where ``<options>`` are keyword-only and come from a plan entry's
``adapter_args`` (JSON-serialisable). An adapter that declares a ``fill``
parameter can take rows from an already-initialized tensor of the target's
shape (new classifier classes, new vocabulary rows); ``needs_fill(args)`` says
whether a given call wants one.

Adapters are pure: they never mutate their inputs. The result may be a view of
an input when nothing changes (resampling to the same grid), so a caller that
keeps it must copy it, as ``apply`` does.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from torch import Tensor

from weightsurgery.errors import AdapterError

__all__ = ["ADAPTERS", "Adapter", "get_adapter", "register_adapter", "run_adapter"]

logger = logging.getLogger(__name__)

AdapterFn = Callable[..., Tensor]
F = TypeVar("F", bound=AdapterFn)

_REGISTRY: dict[str, Adapter] = {}

#: Every registered adapter by name (read-only; add with :func:`register_adapter`).
ADAPTERS: Mapping[str, Adapter] = MappingProxyType(_REGISTRY)


def _never(args: Mapping[str, Any]) -> bool:
    return False


RowCount = Callable[[Mapping[str, Any], tuple[int, ...], tuple[int, ...]], int]


@dataclass(frozen=True)
class Adapter:
    """A registered adapter.

    Attributes:
        name: the registered name (what a plan entry's ``adapter`` holds).
        fn: the function, ``fn(tensors, target_shape, *, **args) -> Tensor``.
        doc: the first paragraph of ``fn``'s docstring.
        params: the keyword options ``fn`` accepts (without ``fill``).
        required: the options without a default.
        takes_fill: ``fn`` accepts ``fill=`` (rows from the fallback init).
        fill_predicate: ``args -> bool``: whether a call with ``args`` needs ``fill``.
        source_rows: ``(args, source_shape, target_shape) -> int``: how many
            target rows (dim 0) hold source values, for adapters that make new
            rows; ``None`` when every element comes from the source.
    """

    name: str
    fn: AdapterFn
    doc: str
    params: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()
    takes_fill: bool = False
    fill_predicate: Callable[[Mapping[str, Any]], bool] = _never
    source_rows: RowCount | None = None

    def needs_fill(self, args: Mapping[str, Any]) -> bool:
        """Whether running with ``args`` needs an initialized ``fill`` tensor.

        Example:
            >>> import weightsurgery.adapt
            >>> get_adapter("head").needs_fill({"rows": [2, -1]})
            True
            >>> get_adapter("transpose").needs_fill({})
            False
        """
        return self.takes_fill and bool(self.fill_predicate(args))

    def loaded_numel(self, args: Mapping[str, Any], source_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> int:
        """How many elements of the result come from the source (new rows do not).

        Example:
            >>> import weightsurgery.adapt
            >>> get_adapter("head").loaded_numel({"rows": [3, -1]}, (10, 8), (2, 8))
            8
            >>> get_adapter("transpose").loaded_numel({}, (2, 3), (3, 2))
            6
        """
        numel = 1
        for d in target_shape:
            numel *= d
        if self.source_rows is None or not target_shape or target_shape[0] == 0:
            return numel
        rows = max(0, min(int(self.source_rows(args, tuple(source_shape), tuple(target_shape))), target_shape[0]))
        return numel // target_shape[0] * rows


def register_adapter(
    name: str,
    *,
    needs_fill: Callable[[Mapping[str, Any]], bool] | None = None,
    source_rows: RowCount | None = None,
) -> Callable[[F], F]:
    """Register ``fn`` under ``name`` (a decorator).

    Args:
        name: the adapter's name; must be new.
        needs_fill: for adapters that accept ``fill=``: ``args -> bool``, whether
            a call needs it (default: always, if ``fn`` accepts ``fill``).
        source_rows: for adapters that make new rows: ``(args, source_shape,
            target_shape) -> int``, the target rows that hold source values
            (the report counts only those as loaded).

    Returns:
        A decorator that registers the function and returns it unchanged.

    Raises:
        AdapterError: ``name`` is already registered, or ``fn``'s options are
            not keyword-only.

    Example:
        >>> import torch
        >>> @register_adapter("negate_example")
        ... def _negate(tensors, target_shape):
        ...     '''Return ``-x``.'''
        ...     return -tensors[0]
        >>> run_adapter("negate_example", [torch.ones(2)], (2,), {}).tolist()
        [-1.0, -1.0]
        >>> _ = _REGISTRY.pop("negate_example")
    """

    def decorator(fn: F) -> F:
        if name in _REGISTRY:
            raise AdapterError(
                f"an adapter named {name!r} is already registered ({_REGISTRY[name].fn.__module__}); "
                "choose another name"
            )
        params = list(inspect.signature(fn).parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        options = [p for p in params if p.kind is p.KEYWORD_ONLY]
        if len(positional) != 2 or len(options) + 2 != len(params):
            raise AdapterError(
                f"adapter {name!r}: {fn.__qualname__} must take (tensors, target_shape, *, options...); "
                "make every option keyword-only"
            )
        takes_fill = any(p.name == "fill" for p in options)
        doc = inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        _REGISTRY[name] = Adapter(
            name=name,
            fn=fn,
            doc=doc,
            params=frozenset(p.name for p in options if p.name != "fill"),
            required=frozenset(p.name for p in options if p.default is p.empty and p.name != "fill"),
            takes_fill=takes_fill,
            fill_predicate=needs_fill or (lambda args: True),
            source_rows=source_rows,
        )
        return fn

    return decorator


def get_adapter(name: str) -> Adapter:
    """The adapter registered under ``name``.

    Raises:
        AdapterError: no adapter has that name; the message lists the registered ones.

    Example:
        >>> import weightsurgery.adapt
        >>> get_adapter("split").name
        'split'
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise AdapterError(
            f"no adapter named {name!r}; registered adapters: {known}. "
            "Register new ones with weightsurgery.adapt.register_adapter"
        ) from None


def run_adapter(
    name: str,
    tensors: Sequence[Tensor],
    target_shape: tuple[int, ...],
    args: Mapping[str, Any],
    *,
    fill: Tensor | None = None,
    key: str | None = None,
) -> Tensor:
    """Run adapter ``name`` on the source ``tensors``; the result has exactly ``target_shape``.

    Inputs are never mutated. Numerics that need it are computed in float32;
    the result has the source's dtype (casting to the target dtype is the
    caller's job).

    Args:
        name: a registered adapter name.
        tensors: the source tensors, in the order the plan lists them.
        target_shape: the shape the result must have.
        args: the adapter's options (a plan entry's ``adapter_args``).
        fill: a tensor of ``target_shape``, already initialized by the fallback
            init, that supplies rows the source does not have; needed when
            ``get_adapter(name).needs_fill(args)``.
        key: the target key, named in error messages.

    Returns:
        The adapted tensor.

    Raises:
        AdapterError: unknown adapter, unknown or missing options, a missing
            ``fill``, conditions that do not hold, or a result of the wrong shape.

    Example:
        >>> import torch, weightsurgery.adapt
        >>> w = torch.arange(6.0).reshape(2, 3)
        >>> run_adapter("transpose", [w], (3, 2), {}).shape
        torch.Size([3, 2])
    """
    adapter = get_adapter(name)
    where = f"{key}: " if key else ""
    target_shape = tuple(int(d) for d in target_shape)
    unknown = sorted(set(args) - adapter.params)
    if unknown:
        takes = ", ".join(sorted(adapter.params)) or "no options"
        raise AdapterError(f"{where}adapter {name!r} got unknown option(s) {', '.join(unknown)}; it takes {takes}")
    missing = sorted(adapter.required - set(args))
    if missing:
        raise AdapterError(f"{where}adapter {name!r} needs option(s) {', '.join(missing)} in adapter_args")
    kwargs = dict(args)
    if adapter.takes_fill:
        if fill is None and adapter.needs_fill(args):
            raise AdapterError(
                f"{where}adapter {name!r} with {dict(args)} creates new rows and needs fill= "
                f"(a tensor of shape {target_shape} from the fallback init)"
            )
        if fill is not None and tuple(fill.shape) != target_shape:
            raise AdapterError(f"{where}fill has shape {tuple(fill.shape)}, expected the target's {target_shape}")
        kwargs["fill"] = fill
    try:
        out = adapter.fn(tuple(tensors), target_shape, **kwargs)
    except AdapterError as exc:
        if where and not str(exc).startswith(where):
            raise AdapterError(f"{where}{exc}") from exc
        raise
    if tuple(out.shape) != target_shape:
        raise AdapterError(
            f"{where}adapter {name!r} returned shape {tuple(out.shape)} but the target needs {target_shape}; "
            "check adapter_args or pick another adapter"
        )
    logger.debug("adapter %s: %s -> %s", name, [tuple(t.shape) for t in tensors], target_shape)
    return out


def one_tensor(tensors: Sequence[Tensor], name: str, count: int = 1) -> Tensor:
    """The single source tensor of a one-input adapter (helper for adapter modules)."""
    if len(tensors) != count:
        raise AdapterError(
            f"adapter {name!r} takes {count} source tensor(s), got {len(tensors)}; fix the plan's sources"
        )
    return tensors[0]
