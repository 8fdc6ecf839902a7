"""Module trees for the HTML report, with numbered siblings grouped as the text report groups them.

A tree is built from dotted keys. At each module, children whose subtrees hold
the same relative keys with the same statuses are candidates for one node, and
their names are merged by :func:`weightsurgery._grouping.group_keys`, the
function behind the text report's ``layer{1..4}.{0,1}.bn{1,2}`` lines: at the
root only names that differ in their digits merge (``layer1``..``layer4``), below
it any (``{0..11}``, ``{q,k,v}``), as in a key's first and later components.
A merged node stands for every member; its tensors list every member's key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from weightsurgery._grouping import expand_group, group_keys

__all__ = ["build_tree"]

_Rel = dict[tuple[str, ...], list[int]]  # relative key parts -> the items (one per merged member) that hold it


def build_tree(keys: Sequence[str], statuses: Sequence[str], numels: Sequence[int], *, root: str) -> dict[str, Any]:
    """The module tree of ``keys``: nested nodes with per-status counts, numbered siblings merged.

    Args:
        keys: dotted tensor keys, in model order.
        statuses: the status of each key (what a node's counts and its grouping compare).
        numels: the number of elements of each key (0 for one that should not count, a tied alias).
        root: the label of the root node.

    Returns:
        ``{"name", "path", "items", "tensors", "children", "counts", "params"}``: ``items`` are the
        indices of every key beneath the node, ``tensors`` maps a leaf name to the indices of the
        keys it stands for, ``counts``/``params`` count tensors and elements per status.

    Example:
        >>> keys = [f"layer{i}.conv.weight" for i in range(1, 5)] + ["fc.weight"]
        >>> tree = build_tree(keys, ["loaded"] * 4 + ["kept"], [9, 9, 9, 9, 4], root="model")
        >>> [(c["path"], c["params"]) for c in tree["children"]]
        [('layer{1..4}', {'loaded': 36}), ('fc', {'kept': 4})]
    """
    rel: _Rel = {tuple(k.split(".")): [i] for i, k in enumerate(keys)}
    return _node(root, "", rel, list(statuses), list(numels))


def _node(name: str, path: str, rel: _Rel, statuses: list[str], numels: list[int]) -> dict[str, Any]:
    tensors: dict[str, list[int]] = {}
    sub: dict[str, _Rel] = {}
    for parts, items in rel.items():
        if len(parts) == 1:
            tensors[parts[0]] = items
        else:
            sub.setdefault(parts[0], {})[parts[1:]] = items
    by_signature: dict[frozenset[Any], list[str]] = {}
    for child, child_rel in sub.items():
        signature = frozenset((parts, tuple(statuses[i] for i in items)) for parts, items in child_rel.items())
        by_signature.setdefault(signature, []).append(child)
    order = {child: i for i, child in enumerate(sub)}
    children: list[tuple[int, dict[str, Any]]] = []
    for names in by_signature.values():
        known = set(names)
        # below the root any names may merge, as in a key's later components (model.{aux_a,aux_b});
        # at the root only numbered ones (layer{1..4}), as in a key's first component
        patterns = [p[2:] for p in group_keys(f"_.{n}" for n in names)] if path else group_keys(names)
        for pattern in patterns:
            members = [pattern] if pattern in known else [n for n in expand_group(pattern) if n in known]
            merged: _Rel = {}
            for member in members:
                for parts, items in sub[member].items():
                    merged.setdefault(parts, []).extend(items)
            child_path = f"{path}.{pattern}" if path else pattern
            children.append((min(order[m] for m in members), _node(pattern, child_path, merged, statuses, numels)))
    children.sort(key=lambda item: item[0])
    items = sorted(i for group in rel.values() for i in group)
    counts: dict[str, int] = {}
    params: dict[str, int] = {}
    for i in items:
        counts[statuses[i]] = counts.get(statuses[i], 0) + 1
        params[statuses[i]] = params.get(statuses[i], 0) + numels[i]
    return {
        "name": name,
        "path": path,
        "items": items,
        "tensors": tensors,
        "children": [node for _, node in children],
        "counts": counts,
        "params": params,
    }
