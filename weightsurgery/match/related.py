"""Are source and target related at all? One decision over the whole plan.

Two unrelated networks often share a few names and shapes by coincidence:
torchvision's ``mobilenet_v2`` and ``efficientnet_b0`` both end in
``classifier.1`` of shape ``(1000, 1280)``, and timm's ResNet-18 and ResNet-50
share most BatchNorm names and sizes. Each such pair matches "exactly", yet
loading it is wrong. A key-by-key look cannot see this; the plan as a whole can.

The evidence is the **weight tensors** (two or more dimensions: conv, linear,
embedding kernels). One-dimensional tensors (norms, biases, statistics) carry
little evidence: a width of 64 or 256 recurs in every network. Over the plan:

- ``loaded``: target weight tensors that the plan fills from the source, or
  whose name match holds the same dimensions in another order or with size-1
  dimensions added or dropped (a layout difference such as GPT-2's transposed
  ``Conv1D`` or a 1x1 conv against a Linear, refused or adapted elsewhere);
- ``contradicted``: target weight tensors whose name match was refused for a
  different shape (the same naming scheme, a different network);
- ``smaller``: the weight tensors of the smaller side.

- ``shape overlap``: the fraction of the smaller side's weight shapes (as a
  multiset) that the other side also holds.

Source and target are **related** when ``contradicted <= loaded`` and either
``loaded >= RELATED_FRACTION * smaller`` or the shape overlap is at least
``SAME_SHAPES``. A same-architecture transfer with a new head, a sliced
backbone (target smaller), a truncated source (source smaller), a tiny net with
a big new head or a wrapped checkpoint (Lightning, DDP) all load most weight
tensors of their smaller side. The same architecture under other names (an old
torchvision naming, a port) may match few tensors by name, but holds the same
weight shapes. Coincidences load a few weight tensors of a network whose shapes
differ, or are outnumbered by shape contradictions. Measured on torchvision and
timm families: related pairs load at least 0.8 of the smaller side or overlap
fully in shape; unrelated ones load at most 0.45 and overlap at most 0.67 (ResNet-18
against ResNet-50, which has more contradictions than fits).

When the pair is unrelated, every entry the matching strategies chose falls back
to init with the reason; what the user named (an explicit map, rename rules,
adapter rules) stays. Passing ``strategies=`` explicitly opts out of this
decision: the named strategies load what they match.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from weightsurgery.match.plan import Action, PlanEntry
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta

__all__ = [
    "RELATED_FRACTION",
    "SAME_SHAPES",
    "STRATEGY",
    "USER_STRATEGIES",
    "Relatedness",
    "relatedness",
    "unrelated_reason",
    "veto_unrelated",
]

#: The fraction of the smaller side's weight tensors that a related pair loads.
RELATED_FRACTION = 0.5

#: A shape overlap this high means the same architecture, whatever the names.
SAME_SHAPES = 0.9

#: The ``strategy`` of an entry that this decision refused.
STRATEGY = "related"

_REFUSED = "not loaded: "

#: Strategies that carry the user's own word; their entries are never refused.
USER_STRATEGIES = frozenset({"explicit", "rename", "rule"})


@dataclass(frozen=True)
class Relatedness:
    """The evidence for one plan.

    Attributes:
        loaded: target weight tensors (>= 2-D) filled from the source (or matched in another layout).
        contradicted: target weight tensors whose name match differs in shape.
        target_weights: weight tensors in the target (excluded keys left out).
        source_weights: weight tensors in the source.
        related: the decision.
        shape_overlap: the fraction of the smaller side's weight shapes that the other side holds.
    """

    loaded: int
    contradicted: int
    target_weights: int
    source_weights: int
    related: bool
    shape_overlap: float = 0.0

    @property
    def smaller(self) -> int:
        return min(self.target_weights, self.source_weights)

    def describe(self) -> str:
        """The evidence in words, for the report.

        Example:
            >>> Relatedness(2, 0, 82, 53, False, 0.23).describe()
            'source and target look unrelated: only 2 of the 53 weight tensors of the smaller side match by name and shape, and 23% of their shapes recur on the other side'
        """
        if self.related:
            return f"{self.loaded} of the {self.smaller} weight tensors of the smaller side match"
        why = (
            f"only {self.loaded} of the {self.smaller} weight tensors of the smaller side match by name and shape, "
            f"and {self.shape_overlap:.0%} of their shapes recur on the other side"
        )
        if self.contradicted > self.loaded:
            why = f"{self.contradicted} weight tensors match by name but differ in shape, against {self.loaded} that fit"
        return f"source and target look unrelated: {why}"


def relatedness(
    entries: Mapping[str, PlanEntry],
    source: Mapping[str, TensorMeta],
    target: TargetSpec,
    *,
    exclude: Collection[str] = (),
) -> Relatedness:
    """Weigh the plan's evidence that ``source`` and ``target`` are related.

    Args:
        entries: target key -> decision, as the strategies left them.
        source: the source's metadata.
        target: the target.
        exclude: target keys the user excluded; they do not count.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from weightsurgery.match.planner import make_plan
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
        >>> src = {k: TensorMeta(tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}
        >>> target = TargetSpec.from_module(net)
        >>> relatedness(make_plan(src, target).entries, src, target).related
        True
    """
    keys = [k for k in target.tensors if k not in exclude]
    weights = {k for k in keys if len(target.tensors[k].shape) >= 2}
    source_shapes = Counter(m.shape for m in source.values() if len(m.shape) >= 2)
    if not weights or not source_shapes:  # no weight tensors on a side: every tensor is evidence
        weights, source_shapes = set(keys), Counter(m.shape for m in source.values())
    source_weights = sum(source_shapes.values())
    common = Counter(target.tensors[k].shape for k in weights) & source_shapes
    loaded = contradicted = 0
    for key in weights:
        e = entries.get(key)
        if e is None:
            continue
        if e.action in (Action.LOAD, Action.ADAPT):
            loaded += 1
        elif e.action is Action.INIT and e.source_shape is not None:
            if _layout_free(e.source_shape) == _layout_free(target.tensors[key].shape):
                loaded += 1  # the same tensor in another layout (transposed, squeezed): evidence, refused elsewhere
            else:
                contradicted += 1
    smaller = min(len(weights), source_weights)
    overlap = sum(common.values()) / smaller if smaller else 1.0
    related = smaller == 0 or (
        contradicted <= loaded and (loaded >= RELATED_FRACTION * smaller or overlap >= SAME_SHAPES)
    )
    return Relatedness(loaded, contradicted, len(weights), source_weights, related, overlap)


def veto_unrelated(
    entries: Mapping[str, PlanEntry],
    source: Mapping[str, TensorMeta],
    target: TargetSpec,
    *,
    exclude: Collection[str] = (),
    opted_in: bool = False,
    evidence: Mapping[str, PlanEntry] | None = None,
) -> dict[str, PlanEntry]:
    """The entries to replace when source and target are unrelated (none when related).

    Every entry a matching strategy filled becomes an init entry whose evidence
    says why and names the refused match; entries from the user's own map or
    rules stay.

    Args:
        entries: target key -> decision, as the strategies left them.
        source: the source's metadata.
        target: the target.
        exclude: target keys the user excluded.
        opted_in: the user named the strategies: load what they match.
        evidence: the decisions to judge relatedness by, when they differ from
            ``entries`` (a name match refused for its shape, whose key a later
            strategy filled, still contradicts).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from weightsurgery.match.planner import make_plan
        >>> a = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 16, 3), nn.Linear(16, 10))
        >>> b = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 32, 1), nn.Conv2d(32, 4, 1), nn.Linear(4, 10))
        >>> src = {k: TensorMeta(tuple(v.shape), v.dtype) for k, v in a.state_dict().items()}
        >>> make_plan(src, TargetSpec.from_module(b)).mapping
        {}
        >>> make_plan(src, TargetSpec.from_module(b)).entries["0.weight"].evidence.split(";")[0]
        'not loaded: source and target look unrelated: 3 weight tensors match by name but differ in shape, against 1 that fit'
    """
    if opted_in:
        return {}
    verdict = relatedness(entries if evidence is None else evidence, source, target, exclude=exclude)
    if verdict.related:
        return {}
    out: dict[str, PlanEntry] = {}
    for key, e in entries.items():
        if e.action not in (Action.LOAD, Action.ADAPT) or e.strategy in USER_STRATEGIES:
            continue
        out[key] = PlanEntry(
            key,
            Action.INIT,
            source=e.source,
            strategy=STRATEGY,
            evidence=f"{_REFUSED}{verdict.describe()}; {e.strategy} matched {e.source}; "
            "pass strategies=[...] to load such matches anyway",
        )
    return out


def _layout_free(shape: tuple[int, ...]) -> list[int]:
    return sorted(d for d in shape if d != 1)


def unrelated_reason(entries: Iterable[PlanEntry]) -> str | None:
    """Why this decision refused the plan's matches, or ``None`` when it refused none.

    Example:
        >>> e = PlanEntry("fc.weight", Action.INIT, strategy=STRATEGY, evidence="not loaded: unrelated; exact matched fc.weight")
        >>> unrelated_reason([e])
        'unrelated'
    """
    for e in entries:
        if e.strategy == STRATEGY and e.evidence.startswith(_REFUSED):
            return e.evidence[len(_REFUSED) :].split("; ")[0]
    return None
