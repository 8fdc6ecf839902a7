"""Finding the state dicts in a nested checkpoint: what is a candidate, what is never searched, how paths rank."""

from __future__ import annotations

import pytest
import torch

from weightsurgery.errors import CorruptCheckpointError
from weightsurgery.sources.nested_search import MAX_DEPTH, Rank, find_candidates, split_entries


def test_optimizer_state_with_integer_keys_is_never_a_candidate() -> None:
    weights = {"conv.weight": torch.ones(2, 1), "conv.bias": torch.ones(2)}
    ckpt = {"weights": weights, "opt": {"state": {0: {"exp_avg": torch.zeros(2), "step": torch.tensor(3.0)}}}}
    assert [c.path for c in find_candidates(ckpt)] == [("weights",)]


def test_training_state_under_a_known_key_is_not_searched() -> None:
    ckpt = {"model": {"w": torch.ones(1)}, "lr_scheduler": {"w": torch.ones(1)}, "Optimizer": {"w": torch.ones(1)}}
    assert [c.dotted for c in find_candidates(ckpt)] == ["model"]


def test_a_container_of_state_dicts_is_not_itself_a_candidate() -> None:
    ckpt = {"loose": torch.ones(1), "model": {"w": torch.ones(1)}, "model_ema": {"w": torch.zeros(1)}}
    found = find_candidates(ckpt)
    assert [(c.dotted, c.rank) for c in found] == [("model", Rank.REGULAR), ("model_ema", Rank.EMA)]


def test_self_referencing_mapping_does_not_loop() -> None:
    ckpt: dict[str, object] = {"w": torch.ones(1)}
    ckpt["self"] = ckpt
    assert [c.dotted for c in find_candidates(ckpt)] == ["<root>"]


def test_nesting_deeper_than_the_limit_is_refused_naming_the_source() -> None:
    ckpt: dict[str, object] = {"w": torch.ones(1)}
    for _ in range(MAX_DEPTH + 1):
        ckpt = {"model": ckpt}
    with pytest.raises(CorruptCheckpointError, match=r"deep\.pth nests mappings more than 100 levels deep"):
        find_candidates(ckpt, source="deep.pth")
    assert len(find_candidates(ckpt["model"])[0].path) == MAX_DEPTH  # at the limit: found


def test_split_entries_separates_weights_other_entries_and_optimizer_moments() -> None:
    tensors, ignored, optimizer = split_entries({"w": torch.ones(1), 3: torch.ones(1), "state.0.exp_avg": torch.ones(1)})
    assert list(tensors) == ["w"] and ignored == ("3",) and optimizer == ("state.0.exp_avg",)


def test_rank_orders_regular_then_ema_then_other() -> None:
    assert Rank.of(("state_dict",)) < Rank.of(("model", "ema")) < Rank.of(("model", "teacher"))
