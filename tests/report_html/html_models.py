"""A small real transfer whose report holds every status the page shows."""

from __future__ import annotations

import torch
from torch import nn

from weightsurgery import Report, transfer


class Net(nn.Module):
    """The source is ``Net(3, 5)``; the target ``target()`` has one input channel (adapted), a new
    10-class head (kept weight, initialized bias), an output tied to the embedding and a module
    that two same-shaped source modules fit equally well (ambiguous)."""

    def __init__(self, in_chans: int, num_classes: int, *, target: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 8, 3)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)) for _ in range(3)])
        self.emb = nn.Embedding(12, 8)
        if target:
            self.out = nn.Linear(8, 12, bias=False)
            self.out.weight = self.emb.weight
        self.head = nn.Linear(8, num_classes)
        if target:
            self.side = nn.Module()
            self.side.proj = nn.Linear(8, 4, bias=False)


def source_state() -> dict[str, torch.Tensor]:
    """A Lightning-style ``model.`` prefix, and two extras that nothing tells apart for ``side.proj``."""
    torch.manual_seed(0)
    state = {f"model.{k}": v for k, v in Net(3, 5).state_dict().items()}
    state["model.aux_a.proj.weight"] = torch.randn(4, 8)
    state["model.aux_b.proj.weight"] = torch.randn(4, 8)
    return state


def every_status_report() -> Report:
    """loaded, adapted (3 -> 1 input channels), initialized (a rule), kept, tied and ambiguous keys."""
    return transfer(source_state(), Net(1, 10, target=True), on_mismatch="adapt", init={"head.bias": "zeros"},
                    seed=0, dry_run=True)
