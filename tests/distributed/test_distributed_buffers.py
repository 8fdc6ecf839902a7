"""Non-persistent buffers left on meta are computed by their own module, or named in a warning."""

from __future__ import annotations

import logging

import torch
from torch import nn

from sharded_models import Rotary

from weightsurgery.distributed.buffers import meta_buffers, recompute_buffers


class Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", torch.tril(torch.ones(3, 3)), persistent=False)


def test_a_buffer_on_meta_is_computed_by_its_module_and_the_model_is_not_touched() -> None:
    with torch.device("meta"):
        model = nn.Sequential(Rotary(), nn.Linear(2, 2))
    wanted = meta_buffers(model)
    assert wanted == {"0": ["inv_freq"]}
    values, missing = recompute_buffers(model, wanted, seed=0)
    assert missing == []
    assert torch.equal(values[("0", "inv_freq")], Rotary()._freqs())
    assert model[0].inv_freq.is_meta  # computed on a replica; commit puts it in place


def test_a_buffer_nothing_computes_is_named(caplog) -> None:
    with torch.device("meta"):
        model = nn.Sequential(Masked())
    with caplog.at_level(logging.WARNING, logger="weightsurgery.distributed.buffers"):
        values, missing = recompute_buffers(model, meta_buffers(model), seed=0)
    assert values == {} and missing == ["0.mask"]
    assert "0.mask are on meta" in caplog.text and "compute them yourself" in caplog.text
