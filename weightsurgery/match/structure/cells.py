"""The alignment's cost cells: one unit per aligned module, names only as a tie-breaker."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from weightsurgery.match.structure.align import Cells
from weightsurgery.match.structure.groups import Group
from weightsurgery.match.tokens import concepts, numeric_components

__all__ = ["cells_of", "run_lengths"]

_NAME_SCALE = 64  # name evidence per pair, in integer units (< one structural unit in total)


def cells_of(ts: Sequence[Group], ss: Sequence[Group]) -> tuple[Cells, int]:
    """Pair scores, as a function of index tensors: one unit per aligned module, names as a tie-breaker.

    Every module counts the same: a norm's four vectors are not four times the
    evidence of a conv's one kernel, or an alignment that skips the convs to
    pair every norm would win where a shortcut moved. Name evidence stays
    under one unit in total. Names are compared once per pair of concept sets
    (:func:`~weightsurgery.match.tokens.concepts`), not once per module pair,
    so a deep stack of repeated blocks costs a few comparisons.

    Returns:
        The cell function and the largest weight it can return.
    """
    unit = _NAME_SCALE * min(len(ts), len(ss)) + 1
    sig_ids: dict[object, int] = {}
    name_ids: dict[tuple[str, ...], int] = {}
    num_ids: dict[tuple[int, ...], int] = {}

    def ids(groups: Sequence[Group], empty_last: int) -> tuple[torch.Tensor, ...]:
        sig, name, num, last = [], [], [], []
        for g in groups:
            sig.append(sig_ids.setdefault(g.signature, len(sig_ids)))
            name.append(name_ids.setdefault(tuple(sorted(concepts(g.path))), len(name_ids)))
            numbers = numeric_components(g.path)
            num.append(num_ids.setdefault(numbers, len(num_ids)))
            last.append(numbers[-1] if numbers else empty_last)
        return tuple(torch.tensor(x, dtype=torch.int64) for x in (sig, name, num, last))

    t_sig, t_name, t_num, t_last = ids(ts, -1)
    s_sig, s_name, s_num, s_last = ids(ss, -2)  # an empty index never agrees in its last number
    names = list(name_ids)
    width = len(names)

    def cells(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        out = torch.full(rows.shape, -1, dtype=torch.int64)
        same = t_sig[rows] == s_sig[cols]
        r, c = rows[same], cols[same]
        combo = t_name[r] * width + s_name[c]
        uniq, inverse = torch.unique(combo, return_inverse=True)
        sim = torch.tensor(
            [_similarity(names[u // width], names[u % width]) for u in uniq.tolist()], dtype=torch.float64
        )
        agree = torch.where(
            t_num[r] == s_num[c], 1.0, torch.where(t_last[r] == s_last[c], 0.5, 0.0)
        ).to(torch.float64)
        score = 0.75 * sim[inverse] + 0.25 * agree
        out[same] = unit + torch.round((_NAME_SCALE - 1) * score).to(torch.int64)
        return out

    return cells, unit + _NAME_SCALE - 1


def _similarity(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    """:func:`~weightsurgery.match.tokens.name_similarity` of two concept multisets."""
    if not a and not b:
        return 0.0
    ca, cb = Counter(a), Counter(b)
    return 2.0 * sum(min(n, cb[k]) for k, n in ca.items()) / (len(a) + len(b))


def run_lengths(pairs: dict[int, int]) -> dict[int, int]:
    """Row -> length of the run of consecutive aligned pairs it belongs to."""
    out: dict[int, int] = {}
    run: list[int] = []
    for i in sorted(pairs):
        if run and not (i == run[-1] + 1 and pairs[i] == pairs[run[-1]] + 1):
            out.update(dict.fromkeys(run, len(run)))
            run = []
        run.append(i)
    out.update(dict.fromkeys(run, len(run)))
    return out
