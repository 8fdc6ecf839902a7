"""Name matches inside a numbered container whose numbering the two sides do not share are refused."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

from weightsurgery import transfer

# vgg11's convs sit at these indices of `features`; vgg11_bn puts a BatchNorm after each, shifting them.
VGG11_CONVS = [0, 3, 6, 8, 11, 13, 16, 18]
VGG11_BN_CONVS = [0, 4, 8, 11, 15, 18, 22, 25]
TRUTH = {f"features.{t}.{leaf}": f"features.{s}.{leaf}"
         for s, t in zip(VGG11_CONVS, VGG11_BN_CONVS) for leaf in ("weight", "bias")}


def quiet_transfer(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transfer(*args, **kwargs)


def test_vgg11_into_vgg11_bn_loads_no_feature_by_a_shifted_number() -> None:
    # Before: features.8.bias, features.16.bias (a conv bias into a BatchNorm) and features.18.{weight,bias}
    # (the 8th conv into the 6th, equal shapes) loaded by exact name.
    report = quiet_transfer(torchvision.models.vgg11(), torchvision.models.vgg11_bn(), dry_run=True)
    wrong = {t: s for t, s in report.mapping.items() if t.startswith("features.") and TRUTH.get(t) != s}
    assert wrong == {}
    refused = report.records["features.16.bias"]
    assert refused.status == "kept" and "features.16 holds" in refused.evidence and "running_mean (1-d)" in refused.evidence
    # the classifier's numbering is shared: it still loads by name
    assert all(report.mapping[f"classifier.{i}.{leaf}"] == f"classifier.{i}.{leaf}" for i in (0, 3, 6) for leaf in ("weight", "bias"))


def test_a_checkpoint_missing_a_key_is_no_shift() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, bias=True))
    state = {k: v for k, v in model.state_dict().items() if k != "2.bias"}
    target = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3))
    report = quiet_transfer(state, target)
    assert sorted(report.mapping) == sorted(state)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("strategies", [None, ["exact"]])
def test_a_conv_bias_never_fills_a_batchnorm_by_number(strategies) -> None:
    source = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3))
    target = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3))
    report = quiet_transfer(source, target, strategies=strategies, dry_run=True)
    assert "1.bias" not in report.mapping
    assert "numbering of '<root>' differs" in report.records["1.bias"].evidence
