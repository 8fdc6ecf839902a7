"""Global sequence alignment (Needleman-Wunsch style) that also says where it is unsure.

Two sequences are aligned in order, gaps allowed on either side at no cost;
a pair may align only where the caller allows it, and scores what the caller
says. Besides one best score, the aligner reports, for every row, *every*
column it is paired with on *some* optimal alignment, and whether some optimal
alignment leaves the row out. A row with exactly one such partner and no such
gap is aligned the same way by every optimal alignment: that pairing is certain.
Anything else is a tie the caller must not resolve by picking one path.

Scale. Only a diagonal *band* of the table is filled: row ``i`` may pair
with column ``j`` when ``lo <= i - j <= hi``. That is exact, not a heuristic,
whenever the band's best score beats what any path leaving it could reach: a
path that pairs a row ``o`` places off the diagonal has left at least ``o``
rows unpaired, so it scores at most ``(n - o) * w_max``
(:func:`align_band` checks this and widens the band until it holds; the whole
table is the last resort). Two builds of one network pair almost every
module, so the band stays a few dozen wide and alignment costs
``O(n * band)``, linear in the number of modules. Rows are filled with
``torch`` vector ops (a row is the running maximum of the row above and its
diagonal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Alignment", "align", "align_band"]

_NEG = -(2**60)

#: ``cells(rows, cols) -> weights``: int64 weights of the given (row, column) pairs, negative where forbidden.
Cells = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Alignment:
    """What every optimal alignment agrees on.

    Attributes:
        score: the optimal total score.
        partners: for each row, the columns it pairs with on some optimal alignment.
        gap: for each row, whether some optimal alignment leaves it unpaired.
    """

    score: int
    partners: tuple[tuple[int, ...], ...]
    gap: tuple[bool, ...]

    def certain(self, row: int) -> int | None:
        """The row's column if every optimal alignment pairs it there, else ``None``."""
        cols = self.partners[row]
        return cols[0] if len(cols) == 1 and not self.gap[row] else None


def align(weights: torch.Tensor) -> Alignment:
    """Align rows with columns in order, maximising the total weight of aligned pairs.

    Args:
        weights: an ``(n, m)`` int64 tensor; ``weights[i, j] >= 0`` is the score of
            pairing row ``i`` with column ``j``, a negative entry forbids the pair.

    Returns:
        The optimal score and, per row, its optimal partners and whether it may be left out.

    Example:
        >>> import torch
        >>> a = align(torch.tensor([[5, -1], [-1, 5]]))
        >>> a.score, a.certain(0), a.certain(1)
        (10, 0, 1)
        >>> tie = align(torch.tensor([[5, 5]]))  # one row, two equally good columns
        >>> tie.partners[0], tie.certain(0)
        ((0, 1), None)
    """
    n, m = weights.shape
    w_max = int(weights.max()) if weights.numel() else 0
    return align_band(n, m, lambda r, c: weights[r, c], w_max=w_max)


def align_band(n: int, m: int, cells: Cells, *, w_max: int, width: int = 16) -> Alignment:
    """Align ``n`` rows with ``m`` columns, filling only the band the optimum provably lies in.

    Args:
        n: the number of rows.
        m: the number of columns.
        cells: the weights of given ``(row, column)`` index tensors (same shape),
            negative where the pair is forbidden.
        w_max: an upper bound on every weight.
        width: the first band's half-width beyond the length difference.

    Returns:
        The same :class:`Alignment` as over the whole table.

    Example:
        >>> import torch
        >>> w = torch.eye(500, dtype=torch.int64) * 3 - 1  # only the diagonal may pair
        >>> a = align_band(500, 500, lambda r, c: w[r, c], w_max=2)
        >>> a.score, a.certain(0), a.certain(499)
        (1000, 0, 499)
    """
    if n == 0 or m == 0:
        return Alignment(0, tuple(() for _ in range(n)), tuple(True for _ in range(n)))
    width = max(width, 2)
    while True:
        lo, hi = min(0, n - m) - width, max(0, n - m) + width
        full = hi >= n and lo <= -m
        if full:
            lo, hi = -m, n
        result = _banded(n, m, cells, lo, hi)
        # a path pairing a row at offset o >= hi - 1 (or <= lo + 1) leaves that many rows (columns) unpaired
        bound = w_max * max(n - hi + 1, m + lo + 1, 0)
        if full or result.score > bound:
            return result
        width *= 4


def _banded(n: int, m: int, cells: Cells, lo: int, hi: int) -> Alignment:
    """The alignment restricted to offsets ``lo <= row - col <= hi``, in band coordinates.

    Position ``p`` of table row ``i`` is column ``j = i - hi + p``; the weight
    band row ``r`` at ``p`` is the pair ``(r, r - hi + p)``, so the diagonal
    step into table cell ``(i, p)`` reads weight ``(i - 1, p)`` and the step
    from above reads table cell ``(i - 1, p + 1)``.
    """
    width = hi - lo + 1
    pos = torch.arange(width, dtype=torch.int64)
    rows = torch.arange(n, dtype=torch.int64)[:, None].expand(n, width)
    cols = rows - hi + pos
    inside = (cols >= 0) & (cols < m)
    weights = torch.full((n, width), _NEG, dtype=torch.int64)
    if bool(inside.any()):
        got = cells(rows[inside], cols[inside]).to(torch.int64)
        weights[inside] = torch.where(got >= 0, got, torch.full_like(got, _NEG))
    allowed = weights >= 0
    fwd = _forward(weights, m, hi)
    # the backward table is the forward one of the reversed problem, its band reversed too
    flipped = weights.flip(0, 1)
    bwd = _forward(flipped, m, (n - m) - lo).flip(0, 1)
    best = int(fwd[n, (m - n) + hi])
    on_path = allowed & (fwd[:-1] + weights + bwd[1:] == best)
    gap = torch.zeros(n, dtype=torch.bool)
    if width > 1:
        gap = ((fwd[:-1, 1:] + bwd[1:, :-1]) == best).any(dim=1)
    per_row: list[list[int]] = [[] for _ in range(n)]
    r_idx, p_idx = torch.nonzero(on_path, as_tuple=True)
    for r, c in zip(r_idx.tolist(), (r_idx - hi + p_idx).tolist()):
        per_row[r].append(c)
    return Alignment(best, tuple(tuple(p) for p in per_row), tuple(gap.tolist()))


def _forward(weights: torch.Tensor, m: int, hi: int) -> torch.Tensor:
    """Best scores of every table cell in the band: ``(n + 1, width)``.

    Cells left of column 0 stay ``_NEG``: they only ever read ``_NEG`` cells
    and forbidden weights. Cells right of column ``m`` hold junk, but are read
    only by cells right of ``m`` (or through a forbidden weight), and the
    backward table is ``_NEG`` there, so no optimal path or gap meets them.
    """
    n, width = weights.shape
    col0 = torch.arange(width, dtype=torch.int64) - hi
    table = torch.empty((n + 1, width), dtype=torch.int64)
    table[0] = torch.where((col0 >= 0) & (col0 <= m), 0, _NEG)
    step = torch.empty(width, dtype=torch.int64)
    for i in range(1, n + 1):
        above = table[i - 1]
        torch.add(above, weights[i - 1], out=step)
        torch.maximum(step[:-1], above[1:], out=step[:-1])
        table[i] = torch.cummax(step, 0).values
    return table
