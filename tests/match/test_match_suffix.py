"""Suffix matching: longest common run of whole trailing components, never a guess."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import nn

from weightsurgery.match.base import MatchContext, StrategyResult
from weightsurgery.match.suffix import match_suffix
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta

F32 = torch.float32


def run(target: nn.Module | Mapping[str, tuple[int, ...]], source: Mapping[str, tuple[int, ...]]) -> StrategyResult:
    spec = TargetSpec.from_module(target if isinstance(target, nn.Module) else _stub(target))
    metas = {k: TensorMeta(shape, F32) for k, shape in source.items()}
    return match_suffix(MatchContext(metas, spec, list(spec.tensors), list(metas)))


def _stub(keys: Mapping[str, tuple[int, ...]]) -> nn.Module:
    """A module holding a parameter of the given shape at each dotted key."""
    root = nn.Module()
    for key, shape in keys.items():
        *path, leaf = key.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, nn.Parameter(torch.zeros(shape)))
    return root


def mapping(result: StrategyResult) -> dict[str, str]:
    return {m.target: m.source for m in result.matches}


def test_source_with_an_extra_prefix() -> None:
    key = "encoder.layer.0.attention.self.query.weight"
    result = run({key: (4, 4)}, {"bert." + key: (4, 4), "bert.pooler.dense.weight": (4, 4)})
    assert mapping(result) == {key: "bert." + key}
    assert result.matches[0].strategy == "suffix"
    assert result.matches[0].evidence == f"longest common suffix '{key}' (7 components)"


def test_detector_backbone_into_torchvision_resnet() -> None:
    import torchvision

    with torch.device("meta"):
        resnet = torchvision.models.resnet18()
    source = {f"backbone.body.{k}": tuple(v.shape) for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    result = run(resnet, source)
    expected = {k[len("backbone.body.") :]: k for k in source}
    assert mapping(result) == expected  # bn1.weight is not confused with layer1.0.bn1.weight


def test_longest_suffix_wins() -> None:
    result = run(
        {"blocks.attn.proj.weight": (4, 4)},
        {"vit.blocks.attn.proj.weight": (4, 4), "vit.mlp.proj.weight": (4, 4)},
    )
    assert mapping(result) == {"blocks.attn.proj.weight": "vit.blocks.attn.proj.weight"}


@pytest.mark.parametrize("source_key", ["other.weight", "net.0.weight"])
def test_leaf_alone_or_a_numbered_module_is_not_a_meaningful_suffix(source_key: str) -> None:
    result = run({"head.0.weight": (4, 4), "weight": (4, 4)}, {source_key: (4, 4)})
    assert mapping(result) == {}
    assert result.abstentions == []


def test_numeric_components_must_agree() -> None:
    result = run({"blocks.3.fc.weight": (4, 4)}, {"layers.5.fc.weight": (4, 4)})
    assert mapping(result) == {}


def test_tie_on_the_longest_suffix_abstains_naming_both() -> None:
    result = run({"fc.weight": (4, 4)}, {"a.fc.weight": (4, 4), "b.fc.weight": (4, 4)})
    assert mapping(result) == {}
    [abstain] = result.abstentions
    assert abstain.target == "fc.weight" and set(abstain.candidates) == {"a.fc.weight", "b.fc.weight"}
    assert abstain.strategy == "suffix"
    assert "ambiguous: a.fc.weight, b.fc.weight all end with 'fc.weight'" in abstain.reason


def test_shape_tells_candidates_apart() -> None:
    result = run({"fc.weight": (4, 4)}, {"a.fc.weight": (4, 8), "b.fc.weight": (4, 4)})
    assert mapping(result) == {"fc.weight": "b.fc.weight"}


def test_lone_candidate_of_another_shape_is_not_claimed_but_explained() -> None:
    result = run({"head.fc.weight": (10, 8)}, {"model.head.fc.weight": (1000, 8)})
    assert mapping(result) == {}
    [abstain] = result.abstentions
    assert abstain.candidates == ("model.head.fc.weight",)
    assert "differ in shape" in abstain.reason and "(1000, 8)" in abstain.reason


def test_two_targets_wanting_one_source_longer_suffix_wins() -> None:
    result = run({"attn.proj.weight": (4, 4), "mlp.proj.weight": (4, 4)}, {"x.attn.proj.weight": (4, 4)})
    assert mapping(result) == {"attn.proj.weight": "x.attn.proj.weight"}


def test_two_targets_wanting_one_source_equally_both_abstain() -> None:
    result = run({"a.proj.weight": (4, 4), "b.proj.weight": (4, 4)}, {"x.proj.weight": (4, 4)})
    assert mapping(result) == {}
    reasons = {a.target: a.reason for a in result.abstentions}
    assert set(reasons) == {"a.proj.weight", "b.proj.weight"}
    assert "source x.proj.weight fits a.proj.weight, b.proj.weight" in reasons["a.proj.weight"]


def test_only_open_keys_are_considered() -> None:
    spec = TargetSpec.from_module(_stub({"fc.weight": (4, 4), "fc.bias": (4,)}))
    metas = {"net.fc.weight": TensorMeta((4, 4), F32), "net.fc.bias": TensorMeta((4,), F32)}
    ctx = MatchContext(metas, spec, ["fc.bias"], ["net.fc.weight", "net.fc.bias"])
    assert mapping(match_suffix(ctx)) == {"fc.bias": "net.fc.bias"}
