"""``build_target`` and ``parse_kwargs``: factory specs into models, built on the meta device."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from weightsurgery.errors import TargetError
from weightsurgery.factory import build_target, parse_kwargs


def test_timm_spec_builds_on_meta_with_kwargs():
    model = build_target("timm:resnet18", num_classes=7, in_chans=1)
    assert model.fc.weight.shape == (7, 512) and model.conv1.weight.shape == (64, 1, 7, 7)
    assert all(p.is_meta for p in model.parameters())


def test_buffers_stay_real_while_parameters_go_to_meta():
    model = build_target(nn.BatchNorm1d, num_features=3)
    assert model.weight.is_meta and model.running_var.device.type == "cpu"
    assert torch.equal(model.running_var, torch.ones(3))


def test_constructor_reading_a_parameter_is_rebuilt_on_the_cpu(caplog):
    def reads_its_weight() -> nn.Module:
        layer = nn.Linear(2, 2)
        layer.scale = float(layer.weight.abs().sum().item())  # impossible on meta
        return layer

    with caplog.at_level("INFO", logger="weightsurgery.factory"):
        model = build_target(reads_its_weight)
    assert not model.weight.is_meta and model.scale > 0
    assert "cannot be built on the meta device" in caplog.text


def test_rejected_kwargs_and_failing_factories_are_target_errors():
    with pytest.raises(TargetError, match=r"rejected the keyword arguments in_chans=3: .*; drop or rename them"):
        build_target("torchvision:resnet18", in_chans=3)

    def broken() -> nn.Module:
        raise ZeroDivisionError("boom")

    with pytest.raises(TargetError, match=r"failed to build: ZeroDivisionError: boom") as info:
        build_target(broken)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    with pytest.raises(TargetError, match=r"returned a dtype, not an nn.Module"):
        build_target("torch:get_default_dtype")


def test_parse_kwargs_reads_literals_and_keeps_strings():
    assert parse_kwargs(["num_classes=10", "drop_rate=0.1", "pretrained=False", "pool=avg", "size=(1, 2)",
                         "act=None", "name='x=y'", "expr=1+"]) == {
        "num_classes": 10, "drop_rate": 0.1, "pretrained": False, "pool": "avg", "size": (1, 2),
        "act": None, "name": "x=y", "expr": "1+",
    }


@pytest.mark.parametrize("item", ["num_classes", "=3", "1x=3", "a b=3"])
def test_parse_kwargs_rejects_malformed_items(item: str):
    with pytest.raises(TargetError, match=r"is not of the form key=value"):
        parse_kwargs([item])


literals = st.one_of(
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(alphabet="abc_-/ ", min_size=1).filter(lambda s: s.strip() == s),
)


@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), literals))
def test_parse_kwargs_round_trips_repr(kwargs: dict):
    assert parse_kwargs([f"{k}={v!r}" for k, v in kwargs.items()]) == kwargs
