"""Read init specs from strings, spec objects and callables.

Strings are parsed with :mod:`ast` and only literal arguments are accepted
(numbers, strings, ``True``/``False``/``None``); nothing is ever evaluated.
Names follow :mod:`torch.nn.init`, with or without its trailing underscore::

    "zeros"   "constant(0.1)"   "trunc_normal(std=0.02)"
    "kaiming_normal(mode='fan_out', nonlinearity='relu')"   "reset"   "keep"
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

from weightsurgery.errors import InitSpecError
from weightsurgery.init.callables import CallableSpec
from weightsurgery.init.specs import SPECS, InitSpec

__all__ = ["SpecLike", "parse_spec", "valid_specs"]

SpecLike = str | InitSpec | Callable[..., Any]
"""What users may pass wherever one init spec is expected."""

_ALIASES = {"default": "reset"}  # the former name of "reset"


def valid_specs() -> str:
    """Every spec name with its signature, one per line, for help and error messages.

    Example:
        >>> print(valid_specs().splitlines()[0])
          constant(val)
    """
    return "\n".join(f"  {cls.signature()}" for cls in SPECS.values())


def parse_spec(spec: SpecLike | type[InitSpec]) -> InitSpec:
    """Turn a spec string, spec object, spec class or callable into an :class:`InitSpec`.

    Args:
        spec: ``"trunc_normal(std=0.02)"``, an :class:`InitSpec` (returned as is),
            an argument-free spec class such as ``Zeros``, or a callable
            ``fn(tensor)`` / ``fn(tensor, generator=...)`` that fills in place.

    Returns:
        The spec. Its ``describe()`` parses back to an equal spec.

    Raises:
        InitSpecError: an unknown name (the message lists every valid spec and
            its signature), a bad argument (it names the argument and the valid
            choices), or a string that is not a single call with literal arguments.

    Example:
        >>> parse_spec("trunc_normal(std=0.02)")
        TruncNormal(mean=0.0, std=0.02, a=-2.0, b=2.0)
        >>> parse_spec("constant(0.1)").describe()
        'constant(0.1)'
    """
    try:
        return parse_spec_brief(spec)
    except InitSpecError as exc:
        raise InitSpecError(f"{exc}\nValid init specs:\n{valid_specs()}") from None


def parse_spec_brief(spec: SpecLike | type[InitSpec]) -> InitSpec:
    """:func:`parse_spec` whose error message leaves out the list of valid specs.

    For callers that collect several problems and list the valid specs once.
    """
    if isinstance(spec, InitSpec):
        return spec
    if isinstance(spec, type) and issubclass(spec, InitSpec):
        return _build(spec, [], {}, text=spec.name)
    if isinstance(spec, str):
        return _parse_string(spec)
    if callable(spec):
        return CallableSpec(spec)
    raise InitSpecError(
        f"init spec {spec!r} has type {type(spec).__name__}; give a spec string such as "
        f"'trunc_normal(std=0.02)', an InitSpec, or a callable fn(tensor)"
    )


def _parse_string(text: str) -> InitSpec:
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise InitSpecError(f"init spec {text!r} is not valid syntax ({exc.msg})") from None
    if isinstance(node, ast.Name):
        name, args, kwargs = node.id, [], {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name = node.func.id
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise InitSpecError(f"init spec {text!r}: *args and **kwargs are not allowed; write each argument")
        args = [_literal(a, text) for a in node.args]
        kwargs = {k.arg: _literal(k.value, text) for k in node.keywords if k.arg is not None}
    else:
        raise InitSpecError(
            f"init spec {text!r} must be a spec name or one call with literal arguments, "
            f"like 'zeros' or 'trunc_normal(std=0.02)'"
        )
    name = _ALIASES.get(name, name)
    cls = SPECS.get(name) or SPECS.get(name.removesuffix("_"))
    if cls is None:
        close = difflib.get_close_matches(name, SPECS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InitSpecError(f"unknown init spec {name!r} in {text!r}{hint}")
    return _build(cls, args, kwargs, text=text)


def _literal(node: ast.expr, text: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise InitSpecError(
            f"init spec {text!r}: argument {ast.unparse(node)!r} is not a literal; "
            f"only numbers, strings, True, False and None are allowed"
        ) from None


def _build(cls: type[InitSpec], args: list[Any], kwargs: dict[str, Any], *, text: str) -> InitSpec:
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    if len(args) > len(names):
        raise InitSpecError(
            f"init spec {text!r}: {cls.name} takes at most {len(names)} positional argument(s), "
            f"got {len(args)}; signature {cls.signature()}"
        )
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        valid = ", ".join(names) if names else "none"
        raise InitSpecError(
            f"init spec {text!r}: {cls.name} has no argument {', '.join(map(repr, unknown))}; "
            f"valid arguments: {valid}; signature {cls.signature()}"
        )
    bound = dict(zip(names, args, strict=False))  # fewer args than names is fine
    twice = sorted(set(bound) & set(kwargs))
    if twice:
        raise InitSpecError(f"init spec {text!r}: argument {', '.join(map(repr, twice))} given twice")
    bound.update(kwargs)
    try:
        return cls(**bound)
    except TypeError:  # a required argument is missing
        raise InitSpecError(f"init spec {text!r}: missing a required argument; signature {cls.signature()}") from None
