"""Relatedness: an unrelated pair loads nothing by default; related transfers of every kind still load."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torchvision
from torch import nn

from weightsurgery import transfer
from weightsurgery.match.plan import Action
from weightsurgery.match.planner import PlanOptions, make_plan
from weightsurgery.match.related import STRATEGY, relatedness
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta


def metas(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, TensorMeta]:
    return {prefix + k: TensorMeta.of(v) for k, v in state.items()}


def quiet_transfer(src, dst, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = transfer(src, dst, **kw)
    return report, [str(w.message) for w in caught]


@pytest.mark.parametrize("target_name", ["efficientnet_b0", "mnasnet1_0"])
def test_torchvision_classifier_of_another_network_is_not_loaded_by_exact_name(target_name) -> None:
    source = torchvision.models.mobilenet_v2().state_dict()
    target = getattr(torchvision.models, target_name)()
    # the trap is real: the same name and shape on both sides
    assert target.state_dict()["classifier.1.weight"].shape == source["classifier.1.weight"].shape == (1000, 1280)
    report, messages = quiet_transfer(source, target, seed=0)

    assert report.mapping == {}
    assert not torch.equal(target.classifier[1].weight, source["classifier.1.weight"])
    record = report.records["classifier.1.weight"]
    assert record.status == "kept" and record.strategy == STRATEGY
    assert record.evidence.startswith("not loaded: source and target look unrelated: only ")
    assert "exact matched classifier.1.weight" in record.evidence
    assert "pass strategies=[...]" in record.evidence
    [note] = [m for m in messages if "nothing loaded" in m]
    assert "source and target look unrelated" in note and "strategies=['exact']" in note
    assert "certain" not in note
    assert list(report.warnings) == [note]


def test_the_user_opts_in_with_strategies_and_gets_the_exact_matches() -> None:
    source = torchvision.models.mobilenet_v2().state_dict()
    target = torchvision.models.mnasnet1_0()
    report, _ = quiet_transfer(source, target, strategies=["exact"])
    assert report.mapping == {"classifier.1.weight": "classifier.1.weight", "classifier.1.bias": "classifier.1.bias"}
    assert torch.equal(target.classifier[1].weight, source["classifier.1.weight"])


@pytest.mark.parametrize(
    ("source_name", "target_name"),
    [("resnet18", "resnet50"), ("efficientnet_b0", "mobilenetv2_100"), ("resnet50", "resnext50_32x4d")],
)
def test_timm_networks_that_share_a_naming_scheme_but_not_weights(source_name, target_name) -> None:
    # ResNet-18's BasicBlock and ResNet-50's Bottleneck share most norm names and widths: ~100 coincidences
    source = metas(timm.create_model(source_name).state_dict())
    target = TargetSpec.from_module(timm.create_model(target_name))
    unfiltered = make_plan(source, target, PlanOptions(strategies=["exact"]))
    assert len(unfiltered.mapping) > 50  # what an exact-name loader would load
    plan = make_plan(source, target)
    assert plan.mapping == {}
    refused = [e for e in plan.entries.values() if e.strategy == STRATEGY]
    # every name match is refused, and so is anything a later strategy found among the keys left open
    assert set(unfiltered.mapping) <= {e.target for e in refused}
    assert all(e.action is Action.INIT and e.source == unfiltered.mapping.get(e.target, e.source) for e in refused)


def test_user_rules_stay_when_the_rest_is_unrelated() -> None:
    source = torchvision.models.mobilenet_v2().state_dict()
    target = torchvision.models.mnasnet1_0()
    report, _ = quiet_transfer(source, target, key_map={"layers.0.weight": "features.0.0.weight"})
    assert report.mapping == {"layers.0.weight": "features.0.0.weight"}
    assert report.warnings[0].startswith("only the 1 tensors that your own map or rules name loaded from ")
    assert report.records["classifier.1.weight"].strategy == STRATEGY


class Trunk(nn.Module):
    """The first stages of a torchvision ResNet-18, under its own names."""

    def __init__(self) -> None:
        super().__init__()
        full = torchvision.models.resnet18()
        self.conv1, self.bn1, self.relu, self.maxpool = full.conv1, full.bn1, full.relu, full.maxpool
        self.layer1, self.layer2 = full.layer1, full.layer2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x))))))


def trunk_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))))


def test_related_transfers_still_load() -> None:
    pretrained = torchvision.models.resnet18().eval()
    state = pretrained.state_dict()
    x = torch.randn(1, 3, 64, 64)

    new_head, _ = quiet_transfer(state, torchvision.models.resnet18(num_classes=7))
    assert set(new_head.kept) == {"fc.weight", "fc.bias"}

    sliced = Trunk().eval()
    report, _ = quiet_transfer(state, sliced)
    assert not report.initialized
    torch.testing.assert_close(sliced(x), trunk_of(pretrained, x), rtol=0, atol=0)

    lightning = {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}
    report, _ = quiet_transfer(lightning, torchvision.models.resnet18())
    assert len(report.mapping) == len(state)

    deeper, _ = quiet_transfer(state, torchvision.models.resnet34())  # a truncated source: all of it loads
    assert set(deeper.mapping.values()) == set(state)


def test_a_tiny_net_with_a_big_new_head_loads_and_warns_about_coverage() -> None:
    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.Flatten())
    target = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 28 * 28, 1000))
    report, messages = quiet_transfer(tiny, target, seed=0)
    assert sorted(report.mapping) == sorted(tiny.state_dict())
    assert torch.equal(target[2].weight, tiny[2].weight)
    assert any("only 0.0% of the target's parameters" in m and "the rest does not load" in m for m in messages)


def test_the_evidence_is_weight_tensors_and_shape_contradictions() -> None:
    a = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 16, 3), nn.Linear(16, 10))
    b = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 32, 1), nn.Conv2d(32, 4, 1), nn.Linear(4, 10))
    source, target = metas(a.state_dict()), TargetSpec.from_module(b)
    verdict = relatedness(make_plan(source, target, PlanOptions(strategies=["exact"])).entries, source, target)
    assert (verdict.loaded, verdict.contradicted, verdict.smaller, verdict.related) == (1, 3, 4, False)
    assert "3 weight tensors match by name but differ in shape, against 1 that fit" in verdict.describe()
    # excluding the contradicted layers leaves a related pair: the first conv and the biases load
    excluded = make_plan(source, target, PlanOptions(exclude=["1.*", "2.*", "3.weight"]))
    assert set(excluded.mapping) == {"0.weight", "0.bias", "3.bias"}
