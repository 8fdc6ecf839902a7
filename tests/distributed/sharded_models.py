"""Tiny purpose-built models for the sharded-transfer tests (imported by the test and by its workers)."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """A pre-norm transformer block; ``fused=True`` holds one ``qkv`` projection instead of ``q``, ``k``, ``v``."""

    def __init__(self, d: int, *, fused: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        if fused:
            self.qkv = nn.Linear(d, 3 * d)
        else:
            self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        q, k, v = self.qkv(h).chunk(3, -1) if hasattr(self, "qkv") else (self.q(h), self.k(h), self.v(h))
        att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1)
        x = x + self.o(att @ v)
        return x + self.down(torch.relu(self.up(self.norm2(x))))


class TinyLM(nn.Module):
    """Embedding, blocks, final norm and a head (tied to the embedding unless ``tied=False``).

    ``vocab=50`` shards unevenly over 4 ranks (13, 13, 13, 11 rows). ``extra=True`` adds an
    ``adapter`` layer no checkpoint holds (a leftover); :class:`Rotary` is a non-persistent
    buffer its module computes (as a rotary embedding does).
    """

    def __init__(self, vocab: int = 50, d: int = 16, layers: int = 2, *, fused: bool = False, tied: bool = True,
                 extra: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, fused=fused) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.head.weight = self.embed.weight
        if extra:
            self.adapter = nn.Linear(d, 12)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class Classifier(nn.Module):
    """A backbone and a classifier head of ``classes`` rows."""

    def __init__(self, classes: int = 10, d: int = 8) -> None:
        super().__init__()
        self.backbone = nn.Linear(6, d)
        self.fc = nn.Linear(d, classes)


def pretrained(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Distinct, reproducible values for every tensor of ``model`` (a checkpoint to transfer from)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g).to(v.dtype) for k, v in model.state_dict().items()}


class Rotary(nn.Module):
    """Its ``inv_freq`` is computed, not loaded; its reset computes it again."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("inv_freq", self._freqs(), persistent=False)

    def _freqs(self) -> torch.Tensor:
        return 1.0 / (10000 ** (torch.arange(0, self.dim, 2, dtype=torch.float32) / self.dim))

    def reset_parameters(self) -> None:
        self.inv_freq.copy_(self._freqs())
