"""Flax's naming conventions, and the PyTorch layout each Flax variable has by them.

Flax stores no layer classes, but its names carry them: an unnamed submodule is
``ClassName_N`` (``Dense_0``, ``Conv_1``, ``ConvTranspose_0``,
``MultiHeadDotProductAttention_0``), and every built-in layer names its
variables the same way (``kernel``, ``bias``, ``scale``, ``embedding``; a
BatchNorm's statistics ``mean``/``var`` in ``batch_stats``):

==============================================  =====================================  ===================
Flax variable                                   layout                                 PyTorch leaf
==============================================  =====================================  ===================
2-d ``kernel`` (any ``Dense``: ``(in, out)``)   ``dense``                              ``weight``
``kernel`` of ``Conv_N`` ``(*k, in/g, out)``    ``conv``                               ``weight``
``kernel`` of ``ConvTranspose_N``               ``conv_transpose_io``, kernel flipped  ``weight``
``query/key/value`` kernel ``(D, heads, hd)``   ``heads_in`` (bias ``(heads, hd)``)     ``weight``, ``bias``
``out`` kernel ``(heads, hd, D)``               ``heads_out``                          ``weight``
``scale``, ``bias``, ``embedding``              as stored                              ``weight``, ``bias``
``batch_stats`` ``mean``, ``var``               as stored                              ``running_mean/var``
==============================================  =====================================  ===================

Anything else (a kernel of more than 2 dims in a module renamed by the user,
where ``Conv`` and ``ConvTranspose`` both store ``(*k, in, out)``; a
``DenseGeneral``; a variable of a custom module such as ``w``) is undecided,
with the reason.
"""

from __future__ import annotations

import re

from weightsurgery.adapt.layouts import Layout

__all__ = ["flax_tensor"]

_AUTO = re.compile(r"^([A-Z][A-Za-z0-9]*)_\d+$")
_LEAVES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_STATS = {"mean": "running_mean", "var": "running_var"}
_HEADS_IN = ("query", "key", "value")


def module_class(name: str) -> str | None:
    """The class of an unnamed Flax submodule: ``Conv_3`` -> ``Conv``; a user's name -> ``None``.

    Example:
        >>> module_class("ConvTranspose_0"), module_class("patch_embed")
        ('ConvTranspose', None)
    """
    m = _AUTO.match(name)
    return m.group(1) if m else None


def flax_tensor(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[str, Layout | None, str]:
    """The PyTorch key, layout (or ``None``) and reason of one Flax variable at ``path``.

    Args:
        path: the variable's path, collection first: ``("params", "Dense_0", "kernel")``.
        shape: its shape.

    Example:
        >>> key, layout, _ = flax_tensor(("params", "Dense_0", "kernel"), (4, 8))
        >>> key, layout.name
        ('Dense_0.weight', 'dense')
    """
    collection, *modules, leaf = path
    module = ".".join(modules)
    owner = modules[-1] if modules else ""
    cls = module_class(owner)
    what = f"flax {'/'.join(path)}"
    if collection == "batch_stats" and leaf in _STATS:
        return f"{module}.{_STATS[leaf]}", Layout("identity", evidence=f"{what}: BatchNorm statistics"), ""
    torch_leaf = _LEAVES.get(leaf)
    key = f"{module}.{torch_leaf or leaf}" if module else (torch_leaf or leaf)
    if torch_leaf is None:
        return key, None, (f"{what} {shape}: {leaf!r} is not a name Flax's own layers use (kernel, bias, scale, "
                           "embedding), so its layout is unknown; a square tensor would fit either way")
    if leaf != "kernel":
        if owner in _HEADS_IN and leaf == "bias" and len(shape) == 2:
            return key, Layout("heads_in", evidence=f"{what}: attention bias (heads, head_dim)"), ""
        if len(shape) <= 1 or leaf == "embedding":
            return key, Layout("identity", evidence=what), ""
        return key, None, f"{what} {shape}: a {len(shape)}-d {leaf!r} has no known layout"
    if owner in _HEADS_IN and len(shape) == 3:
        return key, Layout("heads_in", evidence=f"{what}: attention projection (D, heads, head_dim)"), ""
    if owner == "out" and len(shape) == 3:
        return key, Layout("heads_out", evidence=f"{what}: attention output (heads, head_dim, D)"), ""
    if len(shape) == 2 and cls in (None, "Dense", "DenseGeneral"):
        return key, Layout("dense", evidence=f"{what}: Flax's 2-d kernel is (in, out)"), ""
    if len(shape) >= 3 and cls == "Conv":
        return key, Layout("conv", evidence=f"{what}: Flax Conv kernel (*k, in, out)"), ""
    if len(shape) >= 3 and cls == "ConvTranspose":
        return key, Layout("conv_transpose_io", {"flip": True},
                           evidence=f"{what}: Flax ConvTranspose kernel (*k, in, out), not spatially flipped"), ""
    return key, None, (f"flax {'/'.join(path)} {shape}: module {owner!r} does not name its class, and Flax's Conv "
                       "and ConvTranspose both store kernels (*k, in, out), so the layout cannot be decided")
