"""What structural alignment has decided so far: module pairs, refusals, and how they are reported."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from weightsurgery.match.base import Abstain
from weightsurgery.match.structure.groups import Group
from weightsurgery.match.structure.leaves import counterpart

__all__ = ["MIN_COVERAGE", "MIN_RUN", "STRATEGY", "Outcome", "Pair", "abstain_groups", "shown"]

STRATEGY = "structure"

#: Consecutive aligned modules that anchor an alignment.
MIN_RUN = 3

#: The fraction of the smaller side that must be explained before anything loads.
MIN_COVERAGE = 0.5


@dataclass
class Pair:
    t: Group
    s: Group
    evidence: str
    anchored: bool = False  # in a run of aligned neighbours (not a lone unique module)
    region: bool = False  # paired inside containers that other pairs tie together


@dataclass
class Outcome:
    """Module pairs accepted so far and the reasons for the ones refused.

    Attributes:
        accepted: module pairs to load.
        abstentions: reasons for the modules left open.
        settled_t: target groups accepted or reported ambiguous (by ``Group.index``).
        settled_s: source groups accepted or contested.
        tied: alignment ties per target group, reported unless a unique signature settles them.
    """

    accepted: list[Pair]
    abstentions: list[Abstain]
    settled_t: set[int]
    settled_s: set[int]
    tied: dict[int, list[Abstain]] = field(default_factory=dict)


def shown(path: str) -> str:
    """A module path as reports show it (the root is ``(root)``)."""
    return path or "(root)"


def abstain_groups(t_set: Sequence[Group], s_set: Sequence[Group], reason: str) -> list[Abstain]:
    """One abstention per tensor of ``t_set``, naming its counterparts in ``s_set``."""
    out = []
    for t in t_set:
        for leaf, key in {**t.leaves, **t.counters}.items():
            candidates = tuple(c for s in s_set if (c := counterpart(leaf, t, s)) is not None)
            out.append(
                Abstain(
                    key, f"{reason}; map {key} explicitly with key_map= if you know the source", candidates, STRATEGY
                )
            )
    return out
