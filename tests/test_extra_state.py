"""The module protocol: extra state honoured as torch does; lazy modules refused with a typed error naming them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightsurgery import transfer
from weightsurgery.errors import ModuleProtocolError, StrictTransferError


class Scaled(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.scale = scale

    def get_extra_state(self) -> dict[str, float]:
        return {"scale": self.scale}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.scale = state["scale"]


class Net(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.stem = nn.Linear(2, 2)
        self.body = Scaled(scale)


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(2, 2)
        self.body = nn.Module()
        self.body.lin = nn.Linear(2, 2)


def test_extra_state_moves_with_its_module_as_load_state_dict_does() -> None:
    src, target = Net(scale=3.0), Net()
    torch_copy = Net()
    torch_copy.load_state_dict(src.state_dict())
    report = transfer(src, target, strict=True)
    assert target.body.scale == torch_copy.body.scale == 3.0
    assert report.extra_state == {"body._extra_state": "body._extra_state"}
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert report.to_dict()["extra_state"] == {"body._extra_state": "body._extra_state"}
    assert "body._extra_state  (from body._extra_state)" in str(report)
    assert torch.equal(target.body.lin.weight, src.body.lin.weight)


def test_extra_state_follows_the_plan_through_a_wrapper_prefix_and_a_pickle(tmp_path) -> None:
    src = Net(scale=5.0)
    torch.save({"state_dict": {f"model.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "last.ckpt")
    target = Net()
    report = transfer(tmp_path / "last.ckpt", target)
    assert target.body.scale == 5.0 and report.extra_state == {"body._extra_state": "model.body._extra_state"}
    assert report.unexpected_keys == [] and report.missing_keys == []


def test_a_source_module_with_extra_state_into_a_target_without_any() -> None:
    src = Net(scale=2.0)
    target = Plain()
    report = transfer(src, target)  # no AttributeError on the non-tensor entry
    assert report.mapping == {k: k for k in ("stem.weight", "stem.bias", "body.lin.weight", "body.lin.bias")}
    assert report.unused == () and report.unexpected_keys == ["body._extra_state"] and report.extra_state == {}
    assert torch.equal(target.body.lin.bias, src.body.lin.bias)


def test_a_target_whose_extra_state_the_source_lacks_keeps_its_own_and_says_so() -> None:
    target = Net(scale=7.0)
    report = transfer(Plain(), target)
    assert target.body.scale == 7.0
    assert report.extra_state == {"body._extra_state": None} and report.missing_keys == ["body._extra_state"]
    assert "body._extra_state  (missing: kept its own)" in str(report)


def test_a_set_extra_state_that_raises_names_the_module() -> None:
    class Picky(Scaled):
        def set_extra_state(self, state: dict[str, float]) -> None:
            raise ValueError("wrong version")

    target = Net()
    target.body = Picky()
    with pytest.raises(ModuleProtocolError, match=r"module 'body' \(Picky\) refused .*wrong version") as err:
        transfer(Net(scale=2.0), target)
    assert err.value.module == "body"


def test_a_lazy_target_is_refused_before_anything_changes() -> None:
    target = nn.Sequential(nn.Linear(2, 3), nn.LazyLinear(4))
    before = target[0].weight.detach().clone()
    with pytest.raises(ModuleProtocolError, match=r"target module '1' \(LazyLinear\) is lazy: weight, bias") as err:
        transfer(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4)), target)
    assert err.value.module == "1"
    assert torch.equal(target[0].weight, before) and nn.parameter.is_lazy(target[1].weight)


def test_a_lazy_source_is_refused_with_its_module_named() -> None:
    with pytest.raises(ModuleProtocolError, match=r"'1.weight' is an uninitialized lazy parameter.*'1'") as err:
        transfer(nn.Sequential(nn.Linear(2, 3), nn.LazyLinear(4)), nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4)))
    assert err.value.module == "1"


def test_strict_fails_like_load_state_dict_on_missing_or_unexpected_extra_state() -> None:
    target = Net(scale=7.0)
    with pytest.raises(StrictTransferError, match=r"extra state the source lacks: body._extra_state") as err:
        transfer(Plain(), target, strict=True)
    assert err.value.missing == ("body._extra_state",) and target.body.scale == 7.0
    with pytest.raises(RuntimeError, match="Missing key"):
        Net().load_state_dict(Plain().state_dict())  # torch's own verdict
    with pytest.raises(StrictTransferError, match=r"no target module takes: body._extra_state") as err:
        transfer(Net(scale=2.0), Plain(), strict=True)
    assert err.value.unused == ("body._extra_state",)
