"""Wrapper components anywhere in a key: DDP, ``torch.compile``, FSDP, activation checkpointing, PEFT.

Training code wraps modules, and each wrapper adds a component to every key
below it, not only in front:

- ``nn.DataParallel`` / DDP of a submodule: ``encoder.module.layer.0.weight``;
- ``torch.compile`` of a submodule: ``encoder._orig_mod.layer.0.weight``;
- FSDP and ``checkpoint_wrapper``: ``layers.0._fsdp_wrapped_module.attn...``,
  ``layer1._checkpoint_wrapped_module.0.conv1.weight``;
- PEFT: ``base_model.model.<path>.base_layer.weight`` for a layer that LoRA
  wraps, beside ``<path>.lora_A.<adapter>.weight`` and ``lora_B``; a saved
  adapter file (``adapter_model.safetensors``) leaves the adapter name out;
  ``modules_to_save`` keeps ``<module>.original_module`` beside a trainable
  ``<module>.modules_to_save.<adapter>``: both take a plain weight, and a plain
  target takes the trained copy.

:func:`match_wrappers` runs right after ``prefix``. It removes these components
(and PEFT's leading ``base_model.model.``) on both sides and pairs keys whose
unwrapped names agree, when each unwrapped name is unique on its side. So a
wrapped target takes a plain checkpoint and a wrapped checkpoint fills a plain
model, in both directions.

PEFT adapter tensors (``lora_A``, ``lora_B``, ...) of a target have no source
when the checkpoint holds no adapter tensors: they are closed as leftovers with
that reason, so no later strategy fills them with a same-shaped stranger. A
PEFT source into a plain model loads the **base weights**: the LoRA deltas are
not merged (their scale ``lora_alpha / r`` is not in a state dict) and are
reported unused; merge first (``merge_and_unload()``) to keep them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

from weightsurgery.match.base import Abstain, Match, MatchContext, StrategyResult

__all__ = ["ADAPTER_COMPONENTS", "WRAPPER_COMPONENTS", "is_adapter_tensor", "match_wrappers", "unwrap"]

#: Key components that a wrapper inserts, at any depth.
WRAPPER_COMPONENTS = frozenset(
    {
        "module",
        "_orig_mod",
        "_fsdp_wrapped_module",
        "_checkpoint_wrapped_module",
        "_forward_module",
        "base_layer",
        "original_module",
        "modules_to_save",
    }
)

#: Components that mark a PEFT adapter's own tensors.
ADAPTER_COMPONENTS = frozenset(
    {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"}
)

_PEFT_ROOT = ("base_model", "model")
#: A key that :func:`unwrap` changes or that is an adapter tensor matches this (a quick test, in C).
_MARKED = re.compile(
    r"^base_model\.model\.|(?:^|\.)(?:"
    + "|".join(map(re.escape, sorted(WRAPPER_COMPONENTS | ADAPTER_COMPONENTS)))
    + r")\."
)
_BASE = frozenset({"base_layer"})
_SAVED = "modules_to_save"  # PEFT's trainable copy of a module: <module>.modules_to_save.<adapter>.<tensor>


def unwrap(key: str) -> str:
    """``key`` without wrapper components (and without PEFT's leading ``base_model.model.``).

    Example:
        >>> unwrap("base_model.model.encoder.layer.0.attention.self.query.base_layer.weight")
        'encoder.layer.0.attention.self.query.weight'
        >>> unwrap("layer1._checkpoint_wrapped_module.0.conv1.weight")
        'layer1.0.conv1.weight'
        >>> unwrap("module._orig_mod.fc.weight")
        'fc.weight'
        >>> unwrap("base_model.model.q.lora_A.default.weight"), unwrap("emb.lora_embedding_A.default")
        ('q.lora_A.weight', 'emb.lora_embedding_A')
        >>> unwrap("base_model.model.classifier.modules_to_save.default.weight")
        'classifier.weight'
    """
    parts = key.split(".")
    if tuple(parts[:2]) == _PEFT_ROOT and len(parts) > 2:
        parts = parts[2:]
    kept = [
        p
        for i, p in enumerate(parts[:-1])
        if p not in WRAPPER_COMPONENTS and not _adapter_name(parts, i) and not (i and parts[i - 1] == _SAVED)
    ]
    return ".".join([*kept, parts[-1]] if not _adapter_name(parts, len(parts) - 1) else kept)


def _adapter_name(parts: list[str], i: int) -> bool:
    """``parts[i]`` names a PEFT adapter (``lora_A.default.weight``), which saved adapter files leave out."""
    return i > 0 and parts[i - 1] in ADAPTER_COMPONENTS and (i < len(parts) - 1 or parts[i] not in ("weight", "bias"))


def is_adapter_tensor(key: str) -> bool:
    """Whether ``key`` is a PEFT adapter's own tensor (``...lora_B.default.weight``)."""
    return not ADAPTER_COMPONENTS.isdisjoint(key.split(".")[:-1])


def _owner(key: str, components: frozenset[str]) -> str | None:
    """The module path in front of the first of ``components`` in ``key``, if any."""
    parts = key.split(".")[:-1]
    for i, p in enumerate(parts):
        if p in components:
            return ".".join(parts[:i])
    return None


def _kind(key: str) -> str:
    parts = key.split(".")[:-1]
    return "original" if "original_module" in parts else "saved" if "modules_to_save" in parts else "plain"


def _modules_to_save(ts: list[str], ss: list[str]) -> list[Match] | None:
    """Pairs for PEFT's ``modules_to_save`` (``original_module`` beside ``modules_to_save.<adapter>``), or None.

    Into a PEFT target both copies take the plain weight (PEFT starts the trainable
    copy from the original); from a PEFT source a plain target takes the trained copy.
    """
    tk, sk = {_kind(t): t for t in ts}, {_kind(s): s for s in ss}
    if len(tk) != len(ts) or len(sk) != len(ss):
        return None
    if set(tk) == set(sk):
        return [Match(tk[k], sk[k], "wrappers", f"PEFT modules_to_save: {k} to {k}") for k in tk]
    if set(sk) == {"plain"} and "plain" not in tk:
        note = "PEFT modules_to_save: the original and its trainable copy both start from the plain weight"
        return [Match(t, sk["plain"], "wrappers", note, copy=len(tk) > 1) for t in tk.values()]
    if set(tk) == {"plain"} and "saved" in sk:
        note = "PEFT modules_to_save: the trained copy (the original_module stays unused)"
        return [Match(tk["plain"], sk["saved"], "wrappers", note)]
    return None


def _removed(key: str) -> str:
    parts = key.split(".")
    out = [p for p in parts[:-1] if p in WRAPPER_COMPONENTS]
    if tuple(parts[:2]) == _PEFT_ROOT and len(parts) > 2:
        out.insert(0, "base_model.model")
    return ", ".join(f"{p!r}" for p in dict.fromkeys(out))


def _by_unwrapped(keys: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for k in keys:
        out[unwrap(k)].append(k)
    return out


def match_wrappers(ctx: MatchContext) -> StrategyResult:
    """Pair keys whose names agree once wrapper components are removed on both sides.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from weightsurgery.match.base import MatchContext
        >>> from weightsurgery.match.target import TargetSpec
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> target = TargetSpec.from_module(nn.Sequential(nn.Linear(2, 2)))
        >>> src = {"0._checkpoint_wrapped_module.weight": TensorMeta((2, 2), torch.float32)}
        >>> result = match_wrappers(MatchContext(src, target, ["0.weight", "0.bias"], list(src)))
        >>> [(m.target, m.source, m.evidence) for m in result.matches]
        [('0.weight', '0._checkpoint_wrapped_module.weight', "unwrapped '_checkpoint_wrapped_module' (source)")]
    """
    if not any(map(_MARKED.search, ctx.open_targets)) and not any(map(_MARKED.search, ctx.open_sources)):
        return StrategyResult()  # no open key holds a wrapper or adapter component: nothing to unwrap
    with_delta = {_owner(s, ADAPTER_COMPONENTS) for s in ctx.source} - {None}
    targets = _by_unwrapped(ctx.open_targets)
    sources = _by_unwrapped(ctx.open_sources)
    matches: list[Match] = []
    abstentions: list[Abstain] = []
    for name, ts in targets.items():
        ss = sources.get(name)
        if not ss or (len(ts) == 1 and ts == ss):
            continue
        if len(ts) > 1 or len(ss) > 1:
            saved = _modules_to_save(ts, ss)
            if saved is not None:
                matches += saved
                continue
            for t in ts:
                reason = f"ambiguous once wrappers are removed: {', '.join(ss)} all read as {name}"
                if len(ts) > 1:
                    reason += f", as do the target keys {', '.join(x for x in ts if x != t)}"
                abstentions.append(Abstain(t, reason, tuple(ss), "wrappers"))
            continue
        t, s = ts[0], ss[0]
        sides = [f"{_removed(k)} ({side})" for k, side in ((t, "target"), (s, "source")) if _removed(k)]
        evidence = "unwrapped " + ", ".join(sides)
        if _owner(s, _BASE) in with_delta and _owner(t, ADAPTER_COMPONENTS | _BASE) is None:
            evidence += "; the base weight only: the source's LoRA delta on it is not merged (merge_and_unload() keeps it)"
        matches.append(Match(t, s, "wrappers", evidence))
    if not with_delta:
        claimed = {m.target for m in matches}
        abstentions += [
            Abstain(
                t,
                "a PEFT adapter tensor: the source holds no adapter tensors, so it has no counterpart",
                strategy="wrappers",
                final=True,
            )
            for t in ctx.open_targets
            if t not in claimed and is_adapter_tensor(t)
        ]
    return StrategyResult(matches, abstentions)
