"""Evidence from parents: inside two containers paired with certainty, the open children pair by signature.

Alignment and elimination pair modules one at a time. Their certain pairs also
pair the *containers* they sit in: torchvision's ``layer2.0.downsample.0`` and
HF's ``encoder.stages.1.layers.0.shortcut.convolution`` are the only 1x1
convs of their shape, so ``layer2.0.downsample`` and ``...layers.0.shortcut``
are one part, and the norm left open in each (``downsample.1``,
``shortcut.normalization``) is the other's counterpart, although it looks like
every other norm of the block.

A *region* is a pair of containers ``(C_t, C_s)`` (never a side's root) that
the certain pairs tie together both ways: the certain pairs under ``C_t`` have
their sources under ``C_s``, and ``C_s`` is the deepest container holding all
of them (the common parent path of their sources), and the same read from the
source side gives back ``C_t``. Inside a region, regions deepest first:

1. a signature held by exactly one open module on each side pairs those two;
2. when both sides list modules in module order and the region's certain
   pairs come in the same order on both sides, they cut the region into
   *gaps*; a signature whose open modules sit one per gap on each side, in the
   same gaps, pairs them gap by gap (a block's ``bn1``, ``bn2`` and a neck's
   norm, each right after its own certain conv).

Nothing else counts: two open modules of one signature in one gap are left to
the abstentions the alignment already gave, and so is a signature whose gaps
differ between the sides (a shortcut registered first on one side, last on
the other). Each new pair is itself certain, so the pass repeats until it
finds nothing new.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from weightsurgery.match.structure.groups import Group, Signature, describe

__all__ = ["RegionPair", "beside_idle_twins", "crossing", "pair_in_regions"]

_Path = tuple[str, ...]
RegionPair = tuple[Group, Group, str]  # target, source, evidence

_ROUNDS = 8


def pair_in_regions(
    ts: Sequence[Group],
    ss: Sequence[Group],
    certain: Iterable[tuple[Group, Group]],
    *,
    prior: Iterable[tuple[str, str]] = (),
    ordered: bool,
) -> list[RegionPair]:
    """Pair open modules inside the containers that certain pairs tie together.

    Args:
        ts: the target's groups in alignment order.
        ss: the source's groups in alignment order.
        certain: module pairs already accepted.
        prior: ``(target module, source module)`` paths paired by earlier
            strategies (their tensors are no longer open, but they tie containers).
        ordered: both sides list their modules in module order (positions count).

    Returns:
        The new pairs, each with its evidence.

    Example:
        >>> import torch
        >>> from weightsurgery.match.structure.groups import build_groups
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> f = lambda *s: TensorMeta(s, torch.float32)
        >>> split = lambda k: tuple(k.rsplit(".", 1))
        >>> t = {"b.down.0.w": f(8, 4, 1, 1), "b.down.1.w": f(8), "b.bn.w": f(8)}
        >>> s = {"l.short.conv.w": f(8, 4, 1, 1), "l.short.norm.w": f(8), "l.norm.w": f(8)}
        >>> ts, ss = build_groups(t, t, split), build_groups(s, s, split)
        >>> [(a.path, b.path) for a, b, _ in pair_in_regions(ts, ss, [(ts[0], ss[0])], ordered=True)]
        [('b.down.1', 'l.short.norm')]
    """
    partner_t: dict[int, Group] = {}
    partner_s: dict[int, Group] = {}
    for t, s in certain:
        partner_t[t.index], partner_s[s.index] = s, t
    prior = list(prior)
    pos_t = {g.index: n for n, g in enumerate(ts)}
    pos_s = {g.index: n for n, g in enumerate(ss)}
    found: list[RegionPair] = []
    for _ in range(_ROUNDS):
        anchors = [(_parts(t.path), _parts(partner_t[t.index].path)) for t in ts if t.index in partner_t]
        anchors += [(_parts(a), _parts(b)) for a, b in prior]
        regions = _regions(anchors)
        if not regions:
            break
        under_t, under_s = _under(ts), _under(ss)
        twinned = _twinned_containers(under_t, partner_t) | _twinned_containers(under_s, partner_s, side="s")
        new: list[RegionPair] = []
        for (c_t, c_s), count in regions:
            if ("t", c_t) in twinned or ("s", c_s) in twinned:
                continue  # an identical, wholly open copy beside it could be the one meant
            members_t, members_s = under_t.get(c_t, []), under_s.get(c_s, [])
            open_t = [g for g in members_t if g.index not in partner_t]
            open_s = [g for g in members_s if g.index not in partner_s]
            if not open_t or not open_s:
                continue
            where = f"inside aligned containers {'.'.join(c_s)} <-> {'.'.join(c_t)} ({count} certain module pairs there)"
            pairs = _unique(open_t, open_s, where)
            if ordered:
                gaps = _gaps(members_t, members_s, partner_t, pos_t, pos_s, c_s)
                if gaps is not None:
                    taken = {t.index for t, _, _ in pairs}
                    pairs += _by_gap(
                        [g for g in open_t if g.index not in taken],
                        [g for g in open_s if all(g is not s for _, s, _ in pairs)],
                        gaps,
                        where,
                    )
            for t, s, evidence in pairs:
                partner_t[t.index], partner_s[s.index] = s, t
                new.append((t, s, evidence))
        if not new:
            break
        found += new
    return found


def crossing(
    pairs: Sequence[tuple[Group, Group]], open_t: Sequence[Group] = (), open_s: Sequence[Group] = ()
) -> list[int]:
    """Pairs that cross the containers every other pair agrees on, on both sides.

    A pair ``(t, s)`` crosses when, in the parent of ``t``, most pairs have
    their sources under one container that does not hold ``s``, and, in some
    container of ``s``, most pairs have their targets under one container
    that does not hold ``t`` (or the same with the sides swapped): order paired the last norm of one
    block with the first of the next (a neck registered first on one side,
    last on the other). A pair that only one side contradicts is kept: libraries
    cut blocks differently (Swin's patch merging ends one stage in torchvision
    and starts the next in timm).

    Args:
        pairs: accepted ``(target, source)`` module pairs.

    Returns:
        The indices of the crossing pairs.

    Example:
        >>> import torch
        >>> from weightsurgery.match.structure.groups import build_groups
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> f = lambda *s: TensorMeta(s, torch.float32)
        >>> split = lambda k: tuple(k.rsplit(".", 1))
        >>> t = {f"b{i}.{m}.w": f(4, 4) for i in (1, 2) for m in ("c1", "c2", "c3")}
        >>> s = {f"l{i}.{m}.w": f(4, 4) for i in (1, 2) for m in ("x", "y", "z")}
        >>> ts, ss = build_groups(t, t, split), build_groups(s, s, split)
        >>> crossing([(ts[0], ss[0]), (ts[1], ss[1]), (ts[2], ss[3]), (ts[3], ss[4]), (ts[4], ss[5])])
        [2]
    """
    parts = [(_parts(t.path), _parts(s.path)) for t, s in pairs]
    flipped = [(s, t) for t, s in parts]
    near_t, any_t = _outliers(parts, parent_only=True), _outliers(parts, parent_only=False)
    near_s, any_s = _outliers(flipped, parent_only=True), _outliers(flipped, parent_only=False)
    out = (near_t & any_s) | (any_t & near_s)
    out |= _twinned(pairs, near_t, open_s, side=1) | _twinned(pairs, near_s, open_t, side=0)
    return sorted(out)


def beside_idle_twins(pairs: Sequence[tuple[Group, Group]], ts: Sequence[Group], ss: Sequence[Group]) -> list[int]:
    """Pairs inside a container that has an identical sibling (same signatures) with no pair at all.

    One source block against two identical target blocks: only order picked
    the first, and an order rebuilt from sorted names cannot be asked to.

    Args:
        pairs: accepted ``(target, source)`` module pairs.
        ts: the target's groups.
        ss: the source's groups.

    Returns:
        The indices of the pairs whose choice of container is a guess.

    Example:
        >>> import torch
        >>> from weightsurgery.match.structure.groups import build_groups
        >>> from weightsurgery.sources.checkpoint import TensorMeta
        >>> f = lambda *s: TensorMeta(s, torch.float32)
        >>> split = lambda k: tuple(k.rsplit(".", 1))
        >>> t = {f"b{i}.{m}.w": f(n, 4) for i in (1, 2) for m, n in (("c1", 2), ("c2", 3))}
        >>> s = {f"l.{m}.w": f(n, 4) for m, n in (("x", 2), ("y", 3))}
        >>> ts, ss = build_groups(t, t, split), build_groups(s, s, split)
        >>> beside_idle_twins([(ts[0], ss[0]), (ts[1], ss[1])], ts, ss)
        [0, 1]
    """
    partner_t = {t.index: s for t, s in pairs}
    partner_s = {s.index: t for t, s in pairs}
    twins = _twinned_containers(_under(ts), partner_t, "t") | _twinned_containers(_under(ss), partner_s, "s")
    out = []
    for n, (t, s) in enumerate(pairs):
        pt, ps = _parts(t.path), _parts(s.path)
        if any(("t", pt[:d]) in twins for d in range(1, len(pt))) or any(
            ("s", ps[:d]) in twins for d in range(1, len(ps))
        ):
            out.append(n)
    return out


def _twinned(pairs: Sequence[tuple[Group, Group]], outliers: set[int], open_other: Sequence[Group], *, side: int) -> set[int]:
    """Outliers whose module on the other side sits beside open twins of the modules its rivals paired.

    Two identical blocks on one side, one on the other: an order that pairs the
    lone block's first module with one copy and the rest with the other copy
    leaves same-shaped modules open beside the first pair. Which copy is meant
    cannot be told, so the outlier goes.
    """
    if not outliers or not open_other:
        return set()
    open_by_parent: dict[str, set[Signature]] = defaultdict(set)
    for g in open_other:
        open_by_parent[g.parent].add(g.signature)
    this = 1 - side  # the side where the outlier was seen
    siblings: dict[str, list[int]] = defaultdict(list)
    for n, pair in enumerate(pairs):
        siblings[pair[this].parent].append(n)
    out = set()
    for n in outliers:
        own = pairs[n][side]
        rivals = {pairs[k][side].signature for k in siblings[pairs[n][this].parent] if k != n}
        if rivals & open_by_parent.get(own.parent, set()):
            out.add(n)
    return out


def _outliers(parts: Sequence[tuple[_Path, _Path]], *, parent_only: bool) -> set[int]:
    """Pairs whose other end lies outside the container most pairs of one of their containers agree on.

    For each container (only a module's own parent with ``parent_only``; else
    any below the root), the deepest path that holds the other ends of a
    strict majority of the pairs below it is what the container pairs with; the
    pairs whose other end lies elsewhere are outliers. A container of blocks
    splits its pairs between blocks, so only a module's parent can contradict
    its pair on its own; a pair must be contradicted there on one side and in
    some container on the other (:func:`crossing`).
    """
    members: dict[_Path, list[int]] = defaultdict(list)
    for n, (own, _) in enumerate(parts):
        for depth in range(len(own) - 1 if parent_only else 1, len(own)):
            if depth > 0:
                members[own[:depth]].append(n)
    out: set[int] = set()
    for indices in members.values():
        if len(indices) < 3:
            continue
        votes: Counter[_Path] = Counter()
        for n in indices:
            end = parts[n][1][:-1]
            for depth in range(1, len(end) + 1):
                votes[end[:depth]] += 1
        held = [path for path, count in votes.items() if 2 * count > len(indices)]
        if not held:
            continue
        home = max(held, key=len)
        out.update(n for n in indices if parts[n][1][: len(home)] != home)
    return out


def _parts(path: str) -> _Path:
    return tuple(path.split(".")) if path else ()


def _common(a: _Path, b: _Path) -> _Path:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]


def _regions(anchors: Sequence[tuple[_Path, _Path]]) -> list[tuple[tuple[_Path, _Path], int]]:
    """Container pairs the anchors tie both ways, deepest target container first, with their anchor counts."""
    image_s: dict[_Path, _Path] = {}
    image_t: dict[_Path, _Path] = {}
    count: Counter[_Path] = Counter()
    for t, s in anchors:
        for depth in range(1, len(t)):
            c = t[:depth]
            image_s[c] = _common(image_s[c], s[:-1]) if c in image_s else s[:-1]
            count[c] += 1
        for depth in range(1, len(s)):
            c = s[:depth]
            image_t[c] = _common(image_t[c], t[:-1]) if c in image_t else t[:-1]
    out = [((c_t, c_s), count[c_t]) for c_t, c_s in image_s.items() if c_s and image_t.get(c_s) == c_t]
    out.sort(key=lambda item: -len(item[0][0]))
    return out


def _twinned_containers(
    under: dict[_Path, list[Group]], partner: dict[int, Group], side: str = "t"
) -> set[tuple[str, _Path]]:
    """Containers with a sibling holding the same signatures whose modules are all open."""
    by_shape: dict[tuple[_Path, tuple[Signature, ...]], list[_Path]] = defaultdict(list)
    for c, groups in under.items():
        by_shape[(c[:-1], tuple(sorted(g.signature for g in groups)))].append(c)
    out: set[tuple[str, _Path]] = set()
    for copies in by_shape.values():
        if len(copies) < 2:
            continue
        idle = [c for c in copies if all(g.index not in partner for g in under[c])]
        for c in copies:
            if any(d != c for d in idle):
                out.add((side, c))
    return out


def _under(groups: Sequence[Group]) -> dict[_Path, list[Group]]:
    """Container path -> the groups below it (any depth), in alignment order."""
    out: dict[_Path, list[Group]] = defaultdict(list)
    for g in groups:
        parts = _parts(g.path)
        for depth in range(1, len(parts)):
            out[parts[:depth]].append(g)
    return out


def _unique(open_t: Sequence[Group], open_s: Sequence[Group], where: str) -> list[RegionPair]:
    """Signatures held by one open module on each side."""
    count_t = Counter(g.signature for g in open_t)
    count_s = Counter(g.signature for g in open_s)
    by_sig = {g.signature: g for g in open_s}
    return [
        (t, by_sig[t.signature], f"{where}: the only open module of signature {describe(t.signature)} on both sides")
        for t in open_t
        if count_t[t.signature] == 1 and count_s[t.signature] == 1
    ]


_Gaps = tuple[dict[int, int], dict[int, int], list[tuple[Group, Group]]]


def _gaps(
    members_t: Sequence[Group],
    members_s: Sequence[Group],
    partner_t: dict[int, Group],
    pos_t: dict[int, int],
    pos_s: dict[int, int],
    c_s: _Path,
) -> _Gaps | None:
    """Each open module's gap between the region's certain pairs, if those come in one order on both sides."""
    inside_s = {g.index for g in members_s}
    anchors = [(t, partner_t[t.index]) for t in members_t if t.index in partner_t]
    anchors = [(t, s) for t, s in anchors if s.index in inside_s]
    if not anchors:
        return None
    sources = [pos_s[s.index] for _, s in anchors]
    if any(b <= a for a, b in zip(sources, sources[1:])):
        return None  # the two sides order the region differently: positions say nothing
    cut_t = [pos_t[t.index] for t, _ in anchors]
    gap_t = {g.index: _rank(cut_t, pos_t[g.index]) for g in members_t if g.index not in partner_t}
    partnered_s = {s.index for _, s in anchors}
    gap_s = {g.index: _rank(sources, pos_s[g.index]) for g in members_s if g.index not in partnered_s}
    return gap_t, gap_s, anchors


def _rank(cuts: Sequence[int], position: int) -> int:
    return sum(1 for c in cuts if c < position)


def _by_gap(open_t: Sequence[Group], open_s: Sequence[Group], gaps: _Gaps, where: str) -> list[RegionPair]:
    """Signatures whose open modules sit one per gap, in the same gaps on both sides."""
    gap_t, gap_s, anchors = gaps
    per_t: dict[Signature, dict[int, list[Group]]] = defaultdict(lambda: defaultdict(list))
    per_s: dict[Signature, dict[int, list[Group]]] = defaultdict(lambda: defaultdict(list))
    for g in open_t:
        per_t[g.signature][gap_t[g.index]].append(g)
    for g in open_s:
        per_s[g.signature][gap_s[g.index]].append(g)
    out: list[RegionPair] = []
    for sig, t_gaps in per_t.items():
        s_gaps = per_s.get(sig, {})
        if set(t_gaps) != set(s_gaps) or any(len(v) != 1 for v in (*t_gaps.values(), *s_gaps.values())):
            continue
        for gap, (t,) in t_gaps.items():
            (s,) = s_gaps[gap]
            before = anchors[gap - 1][0].path if gap else "the start"
            after = anchors[gap][0].path if gap < len(anchors) else "the end"
            out.append(
                (
                    t,
                    s,
                    f"{where}: the only open module of signature {describe(sig)} between the same certain "
                    f"neighbours ({before} and {after}) on both sides",
                )
            )
    return out
