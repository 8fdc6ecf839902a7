"""Tiny target factories for the CLI tests.

The CLI runs in a subprocess, which imports this module as ``cli_models``
through ``PYTHONPATH`` (see ``conftest.py``), so a TARGET reads
``cli_models:tiny``.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """A body, a norm and a classifier head: enough for loaded, initialized and unused keys."""

    def __init__(self, num_classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Linear(6, width)
        self.norm = nn.BatchNorm1d(width)
        self.head = nn.Linear(width, num_classes)


def tiny(num_classes: int = 4, width: int = 8) -> nn.Module:
    return TinyNet(num_classes=num_classes, width=width)


class TiedLM(nn.Module):
    """An embedding whose weight the output head shares."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


def tied() -> nn.Module:
    return TiedLM()


def wide() -> nn.Module:
    """256 KiB of weights: big enough to cross a small file-size limit while being written."""
    return nn.Sequential(nn.Linear(256, 256, bias=False))


def broken() -> nn.Module:
    raise ZeroDivisionError("the factory itself is broken")


def not_a_module() -> int:
    return 3


class Payload:
    """A custom class: a pickle holding one needs code to load, so ``weights_only=True`` refuses it."""

    def __init__(self) -> None:
        self.note = "arbitrary object"


def many_small() -> nn.Module:
    """80 one-element tensors: the report (a record per key) is several times larger than the weights."""
    return nn.Sequential(*(nn.Linear(1, 1) for _ in range(40)))
