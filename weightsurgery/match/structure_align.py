"""Global sequence alignment (Needleman-Wunsch style) that also says where it is unsure.

Two sequences are aligned in order, gaps allowed on either side at no cost;
a pair may align only where the caller allows it, and scores what the caller
says. Besides one best score, the aligner reports, for every row, *every*
column it is paired with on *some* optimal alignment, and whether some optimal
alignment leaves the row out. A row with exactly one such partner and no such
gap is aligned the same way by every optimal alignment: that pairing is certain.
Anything else is a tie the caller must not resolve by picking one path.

Forward and backward tables are filled row by row with ``torch`` vector ops
(a row is the running maximum of the row above and its diagonal), so a few
thousand modules a side align in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Alignment", "align"]

_NEG = -(2**60)


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


def _forward(weights: torch.Tensor) -> torch.Tensor:
    n, m = weights.shape
    table = torch.zeros(n + 1, m + 1, dtype=torch.int64)
    for i in range(1, n + 1):
        above = table[i - 1]
        best = above.clone()
        best[1:] = torch.maximum(above[1:], above[:-1] + weights[i - 1])
        table[i] = torch.cummax(best, 0).values
    return table


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
    if n == 0 or m == 0:
        return Alignment(0, tuple(() for _ in range(n)), tuple(True for _ in range(n)))
    allowed = weights >= 0
    w = torch.where(allowed, weights, torch.full_like(weights, _NEG))
    fwd = _forward(w)
    bwd = _forward(w.flip(0, 1)).flip(0, 1)
    best = int(fwd[n, m])
    on_path = allowed & (fwd[:-1, :-1] + w + bwd[1:, 1:] == best)
    gap = (fwd[:-1, :] + bwd[1:, :] == best).any(dim=1)
    per_row: list[list[int]] = [[] for _ in range(n)]
    rows, cols = torch.nonzero(on_path, as_tuple=True)
    for i, j in zip(rows.tolist(), cols.tolist()):
        per_row[i].append(j)
    return Alignment(best, tuple(tuple(p) for p in per_row), tuple(gap.tolist()))
