"""A purpose-built model with position embeddings in both layouts, for the scatter tests (test and workers)."""

from __future__ import annotations

import torch
from torch import nn


class PosModel(nn.Module):
    """timm's ``(1, N, D)`` ``pos_embed``, CLIP's ``nn.Embedding`` ``position_embedding`` and a projection.

    ``N = 1 + grid * grid``: a class token and the patch grid. The default grid (6 x 6, 37 tokens)
    shards unevenly: 19 / 18 rows on 2 ranks, 10, 10, 10, 7 on 4; ``pos_embed``'s dim 0 has one row,
    so under ``Shard(0)`` every rank but the first holds nothing.
    """

    def __init__(self, grid: int = 6, d: int = 10) -> None:
        super().__init__()
        n = 1 + grid * grid
        self.pos_embed = nn.Parameter(torch.zeros(1, n, d))
        self.position_embedding = nn.Embedding(n, d)
        self.proj = nn.Linear(d, d)
