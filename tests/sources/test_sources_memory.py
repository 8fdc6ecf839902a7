"""In-memory sources: modules (tied weights, buffers) and mappings (flat and nested)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightsurgery.errors import AmbiguousContainerError, EmptyCheckpointError, UnknownContainerError
from weightsurgery.sources import resolve
from weightsurgery.sources.checkpoint import SourceKind, TensorMeta
from weightsurgery.sources.memory import from_mapping, from_module


class TiedLM(nn.Module):
    """An embedding whose output head shares its weight, plus a norm with buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.norm = nn.BatchNorm1d(3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight


def test_from_module_indexes_every_state_dict_entry_in_order() -> None:
    model = TiedLM()
    ckpt = from_module(model)
    assert ckpt.keys() == list(model.state_dict())
    assert ckpt.metas["norm.num_batches_tracked"] == TensorMeta((), torch.int64)
    assert ckpt.origin.kind is SourceKind.MODULE
    assert ckpt.origin.location.endswith("test_sources_memory.TiedLM")


def test_from_module_lists_tied_weights_under_every_name() -> None:
    model = TiedLM()
    ckpt = from_module(model)
    assert "embed.weight" in ckpt and "head.weight" in ckpt
    assert ckpt.metadata["tied"] == [["embed.weight", "head.weight"]]
    assert ckpt.load("embed.weight").data_ptr() == ckpt.load("head.weight").data_ptr()


def test_from_module_without_ties_sets_no_tied_metadata() -> None:
    assert "tied" not in from_module(nn.Linear(2, 2)).metadata


def test_from_module_loads_detached_views_of_the_live_parameters() -> None:
    model = nn.Linear(2, 3)
    loaded = from_module(model).load("weight")
    assert not loaded.requires_grad
    assert loaded.data_ptr() == model.weight.data_ptr()
    assert torch.equal(loaded, model.weight.detach())


def test_from_mapping_flat_state_dict() -> None:
    sd = {"fc.weight": torch.ones(4, 2), "fc.bias": torch.zeros(4)}
    ckpt = from_mapping(sd, key=None)
    assert ckpt.keys() == ["fc.weight", "fc.bias"]
    assert ckpt.metas["fc.weight"] == TensorMeta((4, 2), torch.float32)
    assert ckpt.origin.kind is SourceKind.STATE_DICT
    assert ckpt.origin.container == ()
    assert ckpt.load("fc.weight") is not None and torch.equal(ckpt.load("fc.weight"), sd["fc.weight"])
    assert "scalars" not in ckpt.metadata


def test_from_mapping_detaches_parameters() -> None:
    model = nn.Linear(2, 2)
    ckpt = from_mapping(dict(model.named_parameters()), key=None)
    assert not ckpt.load("weight").requires_grad


def test_from_mapping_unwraps_nested_and_records_origin() -> None:
    ckpt = from_mapping(
        {"model": {"w": torch.ones(1)}, "model_ema": {"w": torch.zeros(1)}, "epoch": 7, "arch": "vit"}, key=None
    )
    assert ckpt.origin.container == ("model",)
    assert ckpt.origin.details["alternatives"] == ["model_ema"]
    assert ckpt.metadata["scalars"] == {"epoch": 7, "arch": "vit"}
    assert ckpt.load("w").item() == 1.0
    assert ckpt.origin.describe() == "state-dict <mapping> [model]"


def test_from_mapping_key_picks_ema() -> None:
    ckpt = from_mapping({"model": {"w": torch.ones(1)}, "model_ema": {"w": torch.zeros(1)}}, key="model_ema")
    assert ckpt.origin.container == ("model_ema",)
    assert ckpt.load("w").item() == 0.0


def test_from_mapping_errors_name_the_mapping() -> None:
    with pytest.raises(AmbiguousContainerError, match=r"<mapping> holds several state dicts.*key='g'"):
        from_mapping({"g": {"w": torch.ones(1)}, "d": {"w": torch.ones(1)}}, key=None)
    with pytest.raises(UnknownContainerError, match=r"key='nope' names no container .* in <mapping>"):
        from_mapping({"w": torch.ones(1)}, key="nope")
    with pytest.raises(EmptyCheckpointError, match=r"<mapping> holds no tensors; its entries are: epoch \(int\)"):
        from_mapping({"epoch": 1}, key=None)


def test_from_mapping_of_an_empty_dict_is_an_empty_checkpoint() -> None:
    ckpt = from_mapping({}, key=None)
    assert len(ckpt) == 0 and ckpt.origin.container == ()


def test_close_drops_the_index() -> None:
    ckpt = from_mapping({"w": torch.ones(1)}, key=None)
    ckpt.close()
    with pytest.raises(ValueError, match="checkpoint state-dict <mapping> is closed; resolve the source again"):
        ckpt.load("w")


def test_resolve_dispatches_modules_and_mappings_here() -> None:
    assert resolve(nn.Linear(1, 1)).origin.kind is SourceKind.MODULE
    assert resolve({"state_dict": {"w": torch.ones(1)}}, key=None).origin.container == ("state_dict",)
