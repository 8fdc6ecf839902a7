"""Suffix matching: the longest common suffix of whole dotted components.

``encoder.layer.0.attention.self.query.weight`` in the target and
``bert.encoder.layer.0.attention.self.query.weight`` in the source share every
component but the first; ``stages.0.se.reduce.weight`` sits at the end of
``backbone.body.stages.0.se.reduce.weight``. For each open target key this strategy
finds the open source keys that share the longest run of trailing components,
and claims the pair only when it is sure:

* the suffix is meaningful: besides the leaf it holds at least one component
  that is not generic (:data:`GENERIC`), so ``weight``, ``0.weight``,
  ``dense.weight`` or ``layer1.0.conv1.weight`` alone never match: such names
  recur in unrelated subtrees (BERT's ``pooler.dense`` and
  ``cls.predictions.transform.dense``), and a wrapper prefix, which is what they
  usually differ by, is the ``prefix`` strategy's job;
* the common suffix holds every numeric component of both keys: indices are
  only compared under the same container names (``blocks.3.attn`` meets
  ``vit.blocks.3.attn``, but torchvision Swin's ``features.1.0.attn`` never
  meets timm's ``layers.1.blocks.0.attn``: equal numbers under renamed
  containers are a coincidence, and numbering schemes are left to structural
  alignment);
* exactly one candidate of the target's shape sits at the longest suffix, and
  no other target claims that source with a suffix as long;
* the key's own counterpart is not known to be absent: when the tensors
  already matched in the key's nearest module subtree were (mostly) loaded
  under one consistent rename of a whole-component prefix (``bert.X`` for
  ``X``), the key's counterpart is that rename of its own name. If the source
  does not hold it, the source has no such tensor (a masked-LM checkpoint has
  no ``pooler``), and a look-alike from another subtree is not taken.

A tie is an :class:`~weightsurgery.match.base.Abstain` naming the candidates.
A lone longest candidate of another shape is not claimed either; the
abstention says so, and the key stays open for later strategies.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from weightsurgery.match.base import Abstain, Match, MatchContext, StrategyResult
from weightsurgery.match.prefix import prefix_splits
from weightsurgery.match.tokens import numeric_components

__all__ = ["GENERIC", "is_generic", "match_suffix"]

logger = logging.getLogger(__name__)

STRATEGY = "suffix"

#: Module and leaf names too common to tell two subtrees apart. A component is
#: generic when it is a number, one of these words, or one of them followed by
#: digits (``conv1``, ``fc2``, ``norm_1``, ``layer3``): the digits are an index.
GENERIC: frozenset[str] = frozenset(
    {
        "dense", "fc", "proj", "linear", "lin", "conv", "norm", "ln", "bn", "layer", "layers",
        "block", "blocks", "module", "model", "weight", "bias",
    }
)  # fmt: skip
#: A prefix rename must explain more than this share of a subtree's tensors to count.
_MOST = 0.5


@dataclass(frozen=True)
class _Claim:
    target: str
    source: str
    length: int  # components in the common suffix


def is_generic(component: str) -> bool:
    """Whether a key component is too common to identify a tensor (see :data:`GENERIC`).

    Example:
        >>> [is_generic(c) for c in ("3", "dense", "conv1", "norm_2", "pooler", "se")]
        [True, True, True, True, False, False]
    """
    stem = component.lower().rstrip("0123456789").rstrip("_")
    return component.isdigit() or stem in GENERIC


def _meaningful(suffix: tuple[str, ...]) -> bool:
    """The leaf plus at least one non-generic component: ``se.fc1.weight`` yes, ``dense.weight`` no."""
    return len(suffix) >= 2 and any(not is_generic(c) for c in suffix[:-1])


def _suffix_index(keys: list[str]) -> dict[tuple[tuple[str, ...], tuple[int, ...]], list[str]]:
    """(meaningful trailing run of components, the key's numbers) -> the keys that end with it, in order.

    The numbers are part of the index key because a candidate must hold the
    same numeric components as the target: one lookup per suffix, never a scan
    of every key that shares it (``experts.0.w1.weight`` ends a key in every layer).
    """
    index: dict[tuple[tuple[str, ...], tuple[int, ...]], list[str]] = defaultdict(list)
    generic: dict[str, bool] = {}  # component -> is_generic, computed once per distinct word
    for key in keys:
        parts = tuple(key.split("."))
        numbers = numeric_components(key)
        meaningful = False  # whether parts[-k:-1] holds a non-generic component; grows with k
        for k in range(2, len(parts) + 1):
            c = parts[-k]
            if not meaningful:
                g = generic.get(c)
                if g is None:
                    g = generic[c] = is_generic(c)
                meaningful = not g
            if meaningful:  # the same test as _meaningful(parts[-k:]), incrementally
                index[(parts[-k:], numbers)].append(key)
    return index


def match_suffix(ctx: MatchContext) -> StrategyResult:
    """Claim open target keys whose longest common component suffix with a source key is unique.

    Args:
        ctx: the keys still open, with their shapes.

    Returns:
        Matches (strategy ``"suffix"``) for unique equal-shape pairs, and
        abstentions naming the candidates of every tie or shape mismatch.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from weightsurgery.match.base import MatchContext
        >>> from weightsurgery.match.target import TargetSpec
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> target = TargetSpec.from_module(nn.ModuleDict({"stem": nn.Conv2d(3, 8, 3, bias=False)}))
        >>> source = {"backbone.body.stem.weight": TensorMeta((8, 3, 3, 3), torch.float32)}
        >>> ctx = MatchContext(source, target, list(target.tensors), list(source))
        >>> [(m.target, m.source) for m in match_suffix(ctx).matches]
        [('stem.weight', 'backbone.body.stem.weight')]
    """
    index = _suffix_index(ctx.open_sources)
    renames = _SubtreeRenames(ctx)
    claims: dict[str, list[_Claim]] = defaultdict(list)  # source -> targets claiming it
    abstentions: list[Abstain] = []
    for target in ctx.open_targets:
        tt = ctx.target.tensors[target]
        parts = tuple(target.split("."))
        numbers = numeric_components(target)
        shortest = max([2] + [len(parts) - i for i, c in enumerate(parts) if c.isdigit()])
        candidates: list[str] = []
        for k in range(len(parts), shortest - 1, -1):
            candidates = index.get((parts[-k:], numbers), [])
            if candidates:
                break
        absent, lookalikes = renames.absent_counterpart(target, tt.shape)
        if absent:
            if candidates:
                absent += f"; not filling it from {', '.join(candidates)}"
            abstentions.append(Abstain(target, absent, lookalikes, STRATEGY, final=not lookalikes))
            continue
        if not candidates:
            continue
        fitting = [s for s in candidates if ctx.source[s].shape == tt.shape]
        if len(fitting) == 1:
            claims[fitting[0]].append(_Claim(target, fitting[0], k))
        elif len(fitting) > 1:
            abstentions.append(
                Abstain(
                    target,
                    f"ambiguous: {', '.join(fitting)} all end with '{'.'.join(parts[-k:])}' and have shape "
                    f"{tt.shape}; map {target} explicitly with key_map=",
                    tuple(fitting),
                    STRATEGY,
                )
            )
        else:
            shapes = ", ".join(f"{s} {ctx.source[s].shape}" for s in candidates)
            abstentions.append(
                Abstain(
                    target,
                    f"suffix candidates differ in shape from {target} {tt.shape}: {shapes}",
                    tuple(candidates),
                    STRATEGY,
                )
            )

    matches: list[Match] = []
    for source, rivals in claims.items():
        longest = max(c.length for c in rivals)
        best = [c for c in rivals if c.length == longest]
        if len(best) == 1:
            c = best[0]
            matches.append(
                Match(
                    c.target,
                    source,
                    STRATEGY,
                    f"longest common suffix '{_tail(source, c.length)}' ({c.length} components)",
                )
            )
        losers = rivals if len(best) > 1 else [c for c in rivals if c is not best[0]]
        others = [c.target for c in rivals]
        for c in losers:
            abstentions.append(
                Abstain(
                    c.target,
                    f"ambiguous: source {source} fits {', '.join(others)} equally or better; "
                    f"map {c.target} explicitly with key_map=",
                    (source,),
                    STRATEGY,
                )
            )
    order = {t: i for i, t in enumerate(ctx.open_targets)}
    matches.sort(key=lambda m: order[m.target])
    logger.debug("suffix: %d matches, %d abstentions", len(matches), len(abstentions))
    return StrategyResult(matches, abstentions)


def _tail(key: str, n: int) -> str:
    return ".".join(key.split(".")[-n:])


Rename = tuple[str, str]  # (prefix stripped from the target key, prefix added for the source key)


class _SubtreeRenames:
    """What the already-matched keys say about each subtree: the prefix rename that loaded it.

    A matched target key ``t`` and a matched source key ``s`` with ``s == a + t``
    (or ``t == r + s``) witness the rename ``(r, a)``; prefixes hold whole,
    non-numeric components, as the ``prefix`` strategy's do.
    """

    def __init__(self, ctx: MatchContext) -> None:
        open_t, open_s = set(ctx.open_targets), set(ctx.open_sources)
        self._source: Mapping[str, object] = ctx.source
        self._size: Counter[str] = Counter()  # module path ("" = the model) -> target tensors under it
        self._closed: dict[str, list[str]] = defaultdict(list)  # module path -> matched target keys under it
        for t in ctx.target.tensors:
            for scope in _scopes(t):
                self._size[scope] += 1
                if t not in open_t:
                    self._closed[scope].append(t)
        closed_sources = [s for s in ctx.source if s not in open_s]
        self._closed_sources = set(closed_sources)
        self._added: dict[str, list[str]] = defaultdict(list)  # rest -> prefixes a with a + rest matched
        for s in closed_sources:
            self._added[s].append("")
            for prefix, rest in prefix_splits(s):
                self._added[rest].append(prefix)
        self._ruling: dict[str, tuple[Rename, int] | None] = {}
        by_shape: dict[tuple[int, ...], list[str]] = defaultdict(list)
        for key in ctx.open_sources:
            by_shape[tuple(ctx.source[key].shape)].append(key)
        self._open_by_shape = {shape: sorted(keys) for shape, keys in by_shape.items()}

    def _renames(self, target: str) -> set[Rename]:
        found = {("", a) for a in self._added.get(target, ())}
        return found | {(r, "") for r, rest in prefix_splits(target) if rest in self._closed_sources}

    def _rule(self, scope: str) -> tuple[Rename, int] | None:
        """The rename that loaded most of ``scope``'s tensors, with how many, or ``None``."""
        if scope not in self._ruling:
            votes = Counter(r for t in self._closed[scope] for r in self._renames(t))
            (best, n), *rest = votes.most_common(2) + [(("", ""), 0)]
            clear = n > _MOST * self._size[scope] and n >= 2 and rest[0][1] < n
            self._ruling[scope] = (best, n) if clear else None
        return self._ruling[scope]

    def absent_counterpart(self, target: str, shape: tuple[int, ...]) -> tuple[str, tuple[str, ...]]:
        """Why ``target``'s own counterpart is missing by name, and the open look-alikes in its region.

        Looks at the nearest enclosing module that holds matched keys; if one
        rename explains most of that module's tensors (matched or not) and the
        source lacks the renamed key, the name has no counterpart. It is
        *absent* only when no unused source tensor of ``shape`` sits in the
        aligned region (that module, renamed). Otherwise the look-alikes are
        returned: a port may rename a layer (``conv6`` for ``fc6``), and
        structural alignment may still pair it.

        Returns:
            ``("", ())`` when nothing is known; the reason and no candidates when
            the counterpart is absent; the reason and the look-alikes otherwise.
        """
        scope = next((sc for sc in reversed(_scopes(target)) if self._closed.get(sc)), None)
        ruling = self._rule(scope) if scope is not None else None
        if ruling is None:
            return "", ()
        (strip, add), n = ruling
        if not target.startswith(strip):
            return "", ()
        expected = add + target[len(strip) :]
        if expected in self._source:
            return "", ()
        rename = f"{strip!r} -> {add!r}" if strip else f"added {add!r}" if add else "same names"
        where = f"'{scope}'" if scope else "the model"
        scoped = f"{scope}." if scope else ""
        region = (add + scoped[len(strip) :] if scoped.startswith(strip) else add + scoped).rstrip(".")
        lookalikes = self._open_under(region, shape)
        evidence = f"{n} of the {self._size[scope]} tensors in {where} loaded under that rename ({rename})"
        place = repr(region) if region else "the source"
        if not lookalikes:
            return (
                f"counterpart absent: the source has no {expected}, and {evidence}; "
                f"no unused source tensor sized {shape} sits in {place}"
            ), ()
        shown = ", ".join(lookalikes[:4]) + (" ..." if len(lookalikes) > 4 else "")
        return (
            f"no counterpart by name: the source has no {expected}, and {evidence}; but unused {shown} "
            f"sized {shape} sit in {place}, left to structural alignment"
        ), tuple(lookalikes[:8])

    def _open_under(self, region: str, shape: tuple[int, ...]) -> list[str]:
        """Open source keys of ``shape`` under the module path ``region`` (every one for the root)."""
        keys = self._open_by_shape.get(tuple(shape), [])
        if not region:
            return list(keys)
        lo = bisect.bisect_left(keys, region + ".")
        hi = bisect.bisect_left(keys, region + "/")  # "/" sorts right after "."
        return keys[lo:hi]


def _scopes(key: str) -> list[str]:
    """The module paths enclosing ``key``, outermost first: ``"a.b.w"`` -> ``["", "a", "a.b"]``."""
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(len(parts))]
