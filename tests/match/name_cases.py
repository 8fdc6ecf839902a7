"""What the name and prefix strategy tests share: a context from source shapes and a module, a small net, the pairs."""

from __future__ import annotations

import torch
from torch import nn

from weightsurgery.match.base import MatchContext
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta


def ctx_for(source_keys: dict[str, tuple[int, ...]], module: nn.Module) -> MatchContext:
    source = {k: TensorMeta(s, torch.float32) for k, s in source_keys.items()}
    target = TargetSpec.from_module(module)
    return MatchContext(source, target, list(target.tensors), list(source))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(2, 3)
        self.head = nn.Linear(3, 4)


def pairs(result) -> dict[str, str]:
    return {m.target: m.source for m in result.matches}
