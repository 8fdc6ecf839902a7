"""``aliases``: a source that knows the names other libraries give its tensors.

A GGUF file names its tensors llama.cpp's way (``blk.0.attn_q.weight``); the
``gguf`` package's tensor map knows what Hugging Face (``model.layers.0.self_attn.q_proj.weight``),
Meta's original code (``layers.0.attention.wq.weight``) and others call each
one. The reader puts those candidates in ``metadata["name_candidates"]``; this
strategy pairs a source key with the one open target key that is a candidate
(or a candidate under a wrapper prefix, either way), with equal shapes. Two
target keys that both fit are left for later strategies, with both named.

A source key listed in ``metadata["resolvable"]`` (llama.cpp's permuted q/k
rows) is undecided until the target's naming decides it: a Hugging Face name
(``q_proj``/``k_proj``: rotate-half) gets the ``rope`` adapter, Meta's
(``attention.wq``/``wk``: interleaved) is copied as it is, and any other name
is left open.
"""

from __future__ import annotations

from weightsurgery.match.base import Abstain, Match, MatchContext, StrategyResult

__all__ = ["match_aliases"]

_HALVES = ("q_proj", "k_proj")
_PAIRS = ("attention.wq", "attention.wk")


def _fits(target: str, candidate: str) -> bool:
    if target == candidate:
        return True
    short, long_ = sorted((target, candidate), key=len)
    return short.count(".") >= 2 and long_.endswith("." + short)


def match_aliases(ctx: MatchContext) -> StrategyResult:
    """Pair source keys with the open target key their known other names point at.

    Example:
        >>> import torch
        >>> from weightsurgery.match.target import TargetSpec
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> net = torch.nn.Module(); net.norm = torch.nn.LayerNorm(4)  # HF names it model.norm
        >>> ctx = MatchContext({"output_norm.weight": TensorMeta((4,), torch.float32)}, TargetSpec.from_module(net),
        ...                    ["norm.weight", "norm.bias"], ["output_norm.weight"],
        ...                    {"name_candidates": {"output_norm.weight": ["model.norm.weight", "norm.weight"]}})
        >>> [(m.target, m.source) for m in match_aliases(ctx).matches]
        [('norm.weight', 'output_norm.weight')]
    """
    candidates = ctx.source_metadata.get("name_candidates") or {}
    if not candidates:
        return StrategyResult()
    resolvable = ctx.source_metadata.get("resolvable") or {}
    open_targets = ctx.open_targets
    matches: list[Match] = []
    abstentions: list[Abstain] = []
    claimed: set[str] = set()
    for source in ctx.open_sources:
        names = candidates.get(source) or ()
        hits = sorted({t for t in open_targets for c in names if _fits(t, c)} - claimed)
        hits = [t for t in hits if ctx.target.tensors[t].shape == ctx.source[source].shape]
        if len(hits) > 1:
            for t in hits:
                abstentions.append(Abstain(t, f"ambiguous: {source} is known as {', '.join(hits)}", tuple(hits),
                                           "aliases", fallback=True))
            continue
        if not hits:
            continue
        target = hits[0]
        evidence = f"{source} is {target.rsplit('.', 1)[0]} in the gguf package's tensor map"
        fix = resolvable.get(source)
        if fix is None:
            matches.append(Match(target, source, "aliases", evidence))
        elif any(h in target for h in _HALVES):
            matches.append(Match(target, source, "aliases", f"{evidence}; rows un-permuted to rotate-half order "
                                 f"({fix['heads']} heads)", adapter=fix["adapter"], adapter_args={"heads": fix["heads"]}))
        elif any(p in target for p in _PAIRS):
            matches.append(Match(target, source, "aliases", f"{evidence}; interleaved rotary order, as stored"))
        else:
            abstentions.append(Abstain(target, f"{source}: {target} does not say its rotary convention", (source,),
                                       "aliases"))
            continue
        claimed.add(target)
    return StrategyResult(matches, abstentions)
