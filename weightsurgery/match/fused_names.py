"""Which module names are fused projections (``qkv``, ``gate_up_proj``) and which are separate parts (``q_proj``).

:func:`scan` reads a side's keys into fused keys and groups of separate parts;
:mod:`~weightsurgery.match.fused` pairs the two sides.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from weightsurgery.match.tokens import split_tokens

__all__ = ["PART_DECORATION", "ROLE_WORDS", "FusedKey", "PartGroup", "fused_roles", "part_role", "scan"]

#: A role word -> its role. Short and long spellings name the same role.
ROLE_WORDS: Mapping[str, str] = {
    "q": "q",
    "query": "q",
    "k": "k",
    "key": "k",
    "v": "v",
    "value": "v",
    "gate": "gate",
    "up": "up",
}
#: Words that may sit beside the role word(s) in a part or fused name without changing its meaning.
PART_DECORATION: frozenset[str] = frozenset({"proj", "projection", "lin", "linear", "to", "fc", "dense", "layer"})
_LETTER_ROLES = frozenset("qkv")
_LEAVES = ("weight", "bias")
_MHA = {"in_proj_weight": "weight", "in_proj_bias": "bias"}  # nn.MultiheadAttention: [q; k; v]


def part_role(name: str) -> tuple[str, tuple[str, ...]] | None:
    """The role a module name plays as one separate projection, and its template.

    Args:
        name: a module's own name (the last path component).

    Returns:
        ``(role, template)`` where the template is the name's tokens with the
        role word replaced by ``"*"``; ``None`` when the name is not a part.

    Example:
        >>> part_role("q_proj"), part_role("query"), part_role("fc1")
        (('q', ('*', 'proj')), ('q', ('*',)), None)
    """
    tokens = split_tokens(name)
    roles = [i for i, t in enumerate(tokens) if t in ROLE_WORDS]
    if len(roles) != 1 or any(t not in PART_DECORATION for i, t in enumerate(tokens) if i != roles[0]):
        return None
    i = roles[0]
    return ROLE_WORDS[tokens[i]], tokens[:i] + ("*",) + tokens[i + 1 :]


def fused_roles(name: str) -> tuple[str, ...] | None:
    """The roles a fused module name holds, in its order, or ``None``.

    Args:
        name: a module's own name (the last path component).

    Returns:
        The roles in the order the fused tensor stacks them, or ``None`` when
        the name is not a fused projection this strategy trusts.

    Example:
        >>> fused_roles("to_qkv"), fused_roles("kv"), fused_roles("gate_up_proj")
        (('q', 'k', 'v'), ('k', 'v'), ('gate', 'up'))
        >>> fused_roles("query_key_value") is None  # interleaved per head in GPT-NeoX
        True
    """
    tokens = split_tokens(name)
    roles: list[str] = []
    compact = False
    for t in tokens:
        if len(t) >= 2 and set(t) <= _LETTER_ROLES:
            roles += list(t)
            compact = True
        elif t in ("gate", "up"):
            roles.append(t)
        elif t not in PART_DECORATION:
            return None
    if compact and set(roles) <= _LETTER_ROLES and len(set(roles)) == len(roles):
        return tuple(roles)
    return ("gate", "up") if roles == ["gate", "up"] else None


@dataclass(frozen=True)
class FusedKey:
    """One fused tensor: its module's parent path, leaf (``weight``/``bias``), the roles it stacks, and its key."""

    module: str  # path of the module owning the projection
    leaf: str  # weight | bias
    roles: tuple[str, ...]
    key: str

    @property
    def kind(self) -> tuple[str, tuple[str, ...]]:
        return self.leaf, self.roles


@dataclass(frozen=True)
class PartGroup:
    """The separate parts under one module with one name template: (role, keys) sorted by role."""

    module: str
    leaf: str
    parts: tuple[tuple[str, tuple[str, ...]], ...]  # (role, keys) sorted by role; >1 key = unclear

    @property
    def roles(self) -> frozenset[str]:
        return frozenset(r for r, _ in self.parts)

    def key(self, role: str) -> str | None:
        keys = dict(self.parts).get(role, ())
        return keys[0] if len(keys) == 1 else None

    def all_keys(self) -> tuple[str, ...]:
        return tuple(k for _, keys in self.parts for k in keys)


def scan(keys: Iterable[str]) -> tuple[list[FusedKey], list[PartGroup]]:
    """Find fused projections and groups of separate parts among ``keys``."""
    fused: list[FusedKey] = []
    found: dict[tuple[str, str, tuple[str, ...]], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for key in keys:
        module, _, leaf = key.rpartition(".")
        if leaf in _MHA:
            fused.append(FusedKey(module, _MHA[leaf], ("q", "k", "v"), key))
            continue
        if leaf not in _LEAVES:
            continue
        parent, _, name = module.rpartition(".")
        roles = fused_roles(name)
        if roles is not None:
            fused.append(FusedKey(parent, leaf, roles, key))
            continue
        part = part_role(name)
        if part is not None:
            found[(parent, leaf, part[1])][part[0]].append(key)
    groups = [
        PartGroup(parent, leaf, tuple(sorted((r, tuple(ks)) for r, ks in by_role.items())))
        for (parent, leaf, _), by_role in found.items()
    ]
    return fused, groups
