"""Propose an adapter for a name-matched pair whose shapes differ, from metadata only.

:func:`propose_adapter` looks at shapes, key names, the target's module types
and the source's metadata, never at tensor data. It proposes an adapter only
when that adapter's conditions clearly hold, checked in this order:

0. ``squeeze``         the ranks differ and the shapes differ only by size-1 dims
                       (``(C, 1, 1)`` vs ``(C,)``, a 1x1 conv vs a ``Linear``), and neither
                       side is a ``Conv1D``; a same-rank move of a size-1 dim (``(1, C)`` vs
                       ``(C, 1)``, which for a ``Linear`` swaps inputs and outputs) is not proposed
1. ``transpose``       shape exactly reversed (2-D) and one side is a ``Conv1D``
2. ``pos_embed``       key ends in ``pos_embed``/``pos_embedding``/``position_embedding(s)``,
                       only the token count differs, and one prefix-token count
                       makes both sides square grids
3. ``patch_embed``     a conv under ``patch_embed``/``patch_embedding(s)``/``conv_proj``
                       whose kernel size alone differs
4. ``input_channels``  the first conv (``source_metadata["first_conv"]``, else the
                       target's first conv module) and only dim 1 differs
5. ``vocab``           only dim 0 differs on an ``nn.Embedding`` or a key named like
                       a token embedding / LM head (``wte``, ``embed_tokens``, ``lm_head``...)
6. ``head``            the classifier (``source_metadata["classifier"]``, else the
                       target's last ``nn.Linear``) and only dim 0 differs, and the user
                       passed ``classes=``; a class-count change without ``classes=`` is
                       left to init, because which classes to keep is the user's call

Anything else gets a reason string, which the planner puts in the report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from torch import nn

from weightsurgery.adapt.head import head_rows
from weightsurgery.adapt.posembed import infer_grids
from weightsurgery.adapt.squeeze import squeezable
from weightsurgery.match.target import TargetSpec, TargetTensor
from weightsurgery.sources.checkpoint import TensorMeta

__all__ = ["AdaptContext", "Proposal", "propose_adapter"]

Proposal = tuple[str, dict[str, Any]]

_POS_EMBED = re.compile(r"(?:^|\.)(?:pos_embed|pos_embedding|position_embeddings?)(?:\.weight)?$")
_PATCH_EMBED = re.compile(r"(?:^|\.)(?:patch_embed|patch_embedding|patch_embeddings|conv_proj)(?:\.|$)")
_VOCAB = re.compile(
    r"(?:^|\.)(?:wte|word_embeddings|embed_tokens|tok_embeddings|token_embedding|embed_in|embed_out|lm_head|embed)"
    r"\.(?:weight|bias)$"
)
_POSITIONAL = re.compile(r"pos|wpe")


@dataclass(frozen=True)
class AdaptContext:
    """What :func:`propose_adapter` sees.

    Attributes:
        target: the target description.
        source: source key -> shape and dtype.
        source_metadata: the checkpoint's metadata; read here: ``"classifier"``
            (module path, or a list of them), ``"first_conv"`` (module path),
            ``"label_names"`` (list of str) and ``"module_types"`` (source
            module path -> class name, to spot a source ``Conv1D``).
        classes: the user's class subset/reorder for the head: source indices or
            label names, in the target's class order.
        source_labels: the user's source label names (wins over ``label_names``).

    Example:
        >>> from torch import nn
        >>> target = TargetSpec.from_module(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2)))
        >>> ctx = AdaptContext(target, {})
        >>> ctx.first_conv, ctx.classifiers
        ('0', ('2',))
    """

    target: TargetSpec
    source: Mapping[str, TensorMeta]
    source_metadata: Mapping[str, Any] = field(default_factory=dict)
    classes: Sequence[int | str] | None = None
    source_labels: Sequence[str] | None = None

    @cached_property
    def first_conv(self) -> str | None:
        """The first conv's module path: from the source metadata, else the target's first conv module."""
        named = self.source_metadata.get("first_conv")
        if isinstance(named, str) and named:
            return named
        return next((t.module for t in self.target.tensors.values() if _is_conv(t)), None)

    @cached_property
    def classifiers(self) -> tuple[str, ...]:
        """The classifier module path(s): from the source metadata, else the target's last ``nn.Linear``."""
        named = self.source_metadata.get("classifier")
        if isinstance(named, str) and named:
            return (named,)
        if isinstance(named, (list, tuple)) and named:
            return tuple(str(n) for n in named)
        linears = [t.module for t in self.target.tensors.values() if issubclass(t.module_type, nn.Linear)]
        return (linears[-1],) if linears else ()

    @property
    def label_names(self) -> Sequence[str] | None:
        if self.source_labels is not None:
            return list(self.source_labels)
        names = self.source_metadata.get("label_names")
        return list(names) if isinstance(names, (list, tuple)) else None


def propose_adapter(target_key: str, source_key: str, ctx: AdaptContext) -> Proposal | str:
    """Pick the adapter for ``source_key -> target_key``, or say why none applies.

    Called for a name-matched pair under ``on_mismatch="adapt"``. When
    ``ctx.classes`` is set it also answers for a classifier pair of equal shape
    (a reorder), so a planner may ask for those too.

    Args:
        target_key: the target key (an alias is resolved to its canonical key).
        source_key: the matched source key.
        ctx: the metadata of both sides.

    Returns:
        ``(adapter_name, adapter_args)`` when an adapter's conditions clearly hold,
        else one line saying why none applies.

    Raises:
        AdapterError: ``classes=`` that cannot be honoured on the classifier
            (an unknown label name, an index out of range, too many classes).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> target = TargetSpec.from_module(nn.Sequential(nn.Conv2d(1, 8, 3)))
        >>> src = {"0.weight": TensorMeta((8, 3, 3, 3), torch.float32)}
        >>> propose_adapter("0.weight", "0.weight", AdaptContext(target, src))
        ('input_channels', {})
    """
    tt = ctx.target.tensors.get(ctx.target.canonical(target_key))
    sm = ctx.source.get(source_key)
    if tt is None or sm is None:
        missing = target_key if tt is None else source_key
        return f"{missing!r} is not a {'target' if tt is None else 'source'} key"
    t, s = tuple(tt.shape), tuple(sm.shape)
    src_module = source_key.rpartition(".")[0]
    if ctx.classes is not None and _is_classifier(tt, src_module, ctx) and _differ_in(s, t) <= {0}:
        return _head(tt, s, ctx.classes, ctx)
    if s == t:
        return f"shapes match {_fmt(t)}; no adapter needed"
    if len(s) != len(t) and squeezable(s, t) and not _conv1d(tt, source_key, ctx):
        return "squeeze", {}
    if len(s) != len(t):
        return f"{source_key} {_fmt(s)} and {target_key} {_fmt(t)} differ in rank; no adapter reshapes implicitly"
    for check in (_transpose, _pos_embed, _patch_embed, _input_channels, _vocab):
        answer = check(tt, source_key, s, ctx)
        if answer is not None:
            return answer
    if _differ_in(s, t) == {0} and _is_classifier(tt, src_module, ctx):
        return (
            f"class count differs (source {s[0]}, target {t[0]}) on the classifier {tt.module!r}; "
            "pass classes=[...] to keep a subset"
        )
    if len(s) == 2 and s == t[::-1]:
        return (
            f"{_fmt(s)} is {_fmt(t)} transposed but neither side is a Conv1D; "
            f"add AdaptRule({target_key!r}, 'transpose') if that is intended"
        )
    return f"no adapter's conditions hold for {source_key} {_fmt(s)} -> {target_key} {_fmt(t)}"


# --- the checks: None = not this family; str = this family, conditions fail; tuple = propose ---


def _transpose(tt: TargetTensor, source_key: str, s: tuple[int, ...], ctx: AdaptContext) -> Proposal | str | None:
    if len(s) != 2 or s != tuple(tt.shape)[::-1]:
        return None
    if _conv1d(tt, source_key, ctx):
        return "transpose", {}
    return None


def _pos_embed(tt: TargetTensor, source_key: str, s: tuple[int, ...], ctx: AdaptContext) -> Proposal | str | None:
    if not _POS_EMBED.search(tt.key):
        return None
    t = tuple(tt.shape)
    token_dim = 1 if len(t) == 3 and t[0] == s[0] == 1 else 0 if len(t) == 2 else None
    if token_dim is None or _differ_in(s, t) != {token_dim}:
        return f"position embedding {_fmt(s)} -> {_fmt(t)}: only the token count may differ"
    grids = infer_grids(s[token_dim], t[token_dim])
    if isinstance(grids, str):
        return f"position embedding: {grids}"
    prefix, old, new = grids
    return "pos_embed", {"num_prefix_tokens": prefix, "old_grid": list(old), "new_grid": list(new)}


def _patch_embed(tt: TargetTensor, source_key: str, s: tuple[int, ...], ctx: AdaptContext) -> Proposal | str | None:
    t = tuple(tt.shape)
    if not (_is_conv(tt) and len(t) == 4 and _PATCH_EMBED.search(tt.module + ".")):
        return None
    if s[:2] != t[:2]:
        return None
    return "patch_embed", {}


def _input_channels(tt: TargetTensor, source_key: str, s: tuple[int, ...], ctx: AdaptContext) -> Proposal | str | None:
    if _differ_in(s, tuple(tt.shape)) != {1} or not _is_conv(tt):
        return None
    first = ctx.first_conv
    if first not in (tt.module, source_key.rpartition(".")[0]):
        return f"input channels differ on {tt.module!r}, which is not the first conv ({first!r})"
    return "input_channels", {}


def _vocab(tt: TargetTensor, source_key: str, s: tuple[int, ...], ctx: AdaptContext) -> Proposal | str | None:
    if _differ_in(s, tuple(tt.shape)) != {0}:
        return None
    if _POSITIONAL.search(tt.module.rpartition(".")[2]):
        return None
    if issubclass(tt.module_type, nn.Embedding) or _VOCAB.search(tt.key):
        return "vocab", {"new_rows": "mean"}
    return None


def _head(tt: TargetTensor, s: tuple[int, ...], classes: Sequence[int | str], ctx: AdaptContext) -> Proposal:
    rows = head_rows(classes, num_source=s[0], num_target=tt.shape[0], label_names=ctx.label_names)
    return "head", {"rows": rows}


# --- helpers -----------------------------------------------------------------------------------


def _is_conv(tt: TargetTensor) -> bool:
    return issubclass(tt.module_type, nn.modules.conv._ConvNd) and tt.name == "weight"


def _conv1d(tt: TargetTensor, source_key: str, ctx: AdaptContext) -> bool:
    """Either side is a GPT-2 style ``Conv1D``, whose weight is stored transposed."""
    types = ctx.source_metadata.get("module_types")
    src_type = types.get(source_key.rpartition(".")[0]) if isinstance(types, Mapping) else None
    return tt.module_type.__name__ == "Conv1D" or src_type == "Conv1D"


def _is_classifier(tt: TargetTensor, src_module: str, ctx: AdaptContext) -> bool:
    return tt.name in ("weight", "bias") and bool({tt.module, src_module} & set(ctx.classifiers))


def _differ_in(a: tuple[int, ...], b: tuple[int, ...]) -> set[int]:
    if len(a) != len(b):
        return set(range(max(len(a), len(b))))
    return {i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y}


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"
