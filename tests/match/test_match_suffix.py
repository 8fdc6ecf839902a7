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


def test_detector_backbone_with_meaningful_names() -> None:
    target = {"stem.weight": (8, 3, 3, 3), "stages.0.downsample.weight": (8, 8), "stages.0.se.reduce.weight": (2, 8)}
    source = {f"backbone.body.{k}": v for k, v in target.items()}
    assert mapping(run(target, source)) == {k: f"backbone.body.{k}" for k in target}


def test_generic_names_alone_are_left_to_the_prefix_strategy() -> None:
    import torchvision

    with torch.device("meta"):
        resnet = torchvision.models.resnet18()
    source = {f"backbone.body.{k}": tuple(v.shape) for k, v in resnet.state_dict().items()}
    # bn1, layer1.0.conv1, fc: every component is a generic word or an index, so suffix leaves them;
    # only the downsample branches carry a telling name
    got = mapping(run(resnet, source))
    assert got == {k: f"backbone.body.{k}" for k in resnet.state_dict() if ".downsample." in k}


def test_longest_suffix_wins() -> None:
    result = run(
        {"blocks.attn.proj.weight": (4, 4)},
        {"vit.blocks.attn.proj.weight": (4, 4), "vit.mlp.proj.weight": (4, 4)},
    )
    assert mapping(result) == {"blocks.attn.proj.weight": "vit.blocks.attn.proj.weight"}


@pytest.mark.parametrize("source_key", ["other.weight", "net.0.weight", "x.dense.weight", "x.layer2.0.conv1.weight"])
def test_generic_components_alone_are_not_a_meaningful_suffix(source_key: str) -> None:
    target = {"head.0.weight": (4, 4), "weight": (4, 4), "dense.weight": (4, 4), "layer2.0.conv1.weight": (4, 4)}
    result = run(target, {source_key: (4, 4)})
    assert mapping(result) == {}
    assert result.abstentions == []


def test_masked_lm_head_never_fills_the_pooler() -> None:
    # BERT masked-LM checkpoints have no pooler; cls.predictions.transform.dense only looks alike
    result = run({"pooler.dense.weight": (4, 4)}, {"cls.predictions.transform.dense.weight": (4, 4)})
    assert mapping(result) == {}


def test_numeric_components_must_agree() -> None:
    result = run({"blocks.3.attn.weight": (4, 4)}, {"layers.5.attn.weight": (4, 4)})
    assert mapping(result) == {}


def test_tie_on_the_longest_suffix_abstains_naming_both() -> None:
    result = run({"head.weight": (4, 4)}, {"a.head.weight": (4, 4), "b.head.weight": (4, 4)})
    assert mapping(result) == {}
    [abstain] = result.abstentions
    assert abstain.target == "head.weight" and set(abstain.candidates) == {"a.head.weight", "b.head.weight"}
    assert abstain.strategy == "suffix"
    assert "ambiguous: a.head.weight, b.head.weight all end with 'head.weight'" in abstain.reason


def test_shape_tells_candidates_apart() -> None:
    result = run({"head.weight": (4, 4)}, {"a.head.weight": (4, 8), "b.head.weight": (4, 4)})
    assert mapping(result) == {"head.weight": "b.head.weight"}


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
    result = run({"a.attn.weight": (4, 4), "b.attn.weight": (4, 4)}, {"x.attn.weight": (4, 4)})
    assert mapping(result) == {}
    reasons = {a.target: a.reason for a in result.abstentions}
    assert set(reasons) == {"a.attn.weight", "b.attn.weight"}
    assert "source x.attn.weight fits a.attn.weight, b.attn.weight" in reasons["a.attn.weight"]


def test_only_open_keys_are_considered() -> None:
    spec = TargetSpec.from_module(_stub({"head.weight": (4, 4), "head.bias": (4,)}))
    metas = {"net.head.weight": TensorMeta((4, 4), F32), "net.head.bias": TensorMeta((4,), F32)}
    ctx = MatchContext(metas, spec, ["head.bias"], ["net.head.weight", "net.head.bias"])
    assert mapping(match_suffix(ctx)) == {"head.bias": "net.head.bias"}


def _closed(target: Mapping[str, tuple[int, ...]], source: Mapping[str, tuple[int, ...]], matched: Mapping[str, str]):
    """A context where ``matched`` (target -> source) was decided by an earlier strategy."""
    spec = TargetSpec.from_module(_stub(target))
    metas = {k: TensorMeta(shape, F32) for k, shape in source.items()}
    open_t = [t for t in spec.tensors if t not in matched]
    open_s = [s for s in metas if s not in set(matched.values())]
    return match_suffix(MatchContext(metas, spec, open_t, open_s))


def test_counterpart_absent_under_the_subtree_rename_is_not_filled_from_elsewhere() -> None:
    target = {"encoder.attn.weight": (4, 4), "encoder.mlp.weight": (4, 4), "pooler.attn_pool.weight": (4, 4)}
    source = {"bert.encoder.attn.weight": (4, 4), "bert.encoder.mlp.weight": (4, 4), "cls.attn_pool.weight": (4, 4)}
    result = _closed(target, source, {"encoder.attn.weight": "bert.encoder.attn.weight",
                                      "encoder.mlp.weight": "bert.encoder.mlp.weight"})
    assert mapping(result) == {}
    [abstain] = result.abstentions
    assert abstain.target == "pooler.attn_pool.weight"
    assert abstain.reason == (
        "counterpart absent: the source has no bert.pooler.attn_pool.weight, and 2 of the 3 tensors in the model "
        "loaded under that rename (added 'bert.'); no unused source tensor sized (4, 4) sits in 'bert'; "
        "not filling it from cls.attn_pool.weight"
    )


def test_nearest_subtree_decides_and_a_stripped_prefix_counts_too() -> None:
    # the rest of 'pooler' was loaded by stripping 'model.': the counterpart would be attn_pool.weight
    target = {"model.pooler.norm.weight": (4,), "model.pooler.norm.bias": (4,), "model.pooler.attn_pool.weight": (4, 4)}
    source = {"pooler.norm.weight": (4,), "pooler.norm.bias": (4,), "head.attn_pool.weight": (4, 4)}
    result = _closed(target, source, {"model.pooler.norm.weight": "pooler.norm.weight",
                                      "model.pooler.norm.bias": "pooler.norm.bias"})
    assert mapping(result) == {}
    assert "counterpart absent: the source has no pooler.attn_pool.weight," in result.abstentions[0].reason
    assert "in 'model.pooler'" in result.abstentions[0].reason


def test_a_subtree_without_one_consistent_rename_does_not_block() -> None:
    target = {"a.attn.weight": (4, 4), "b.mlp.weight": (4, 4), "head.attn_pool.weight": (4, 4)}
    source = {"x.a.attn.weight": (4, 4), "y.b.mlp.weight": (4, 4), "cls.head.attn_pool.weight": (4, 4)}
    result = _closed(target, source, {"a.attn.weight": "x.a.attn.weight", "b.mlp.weight": "y.b.mlp.weight"})
    assert mapping(result) == {"head.attn_pool.weight": "cls.head.attn_pool.weight"}


def test_the_renamed_counterpart_present_does_not_block() -> None:
    # the counterpart exists (used elsewhere or of another shape): suffix decides as usual
    target = {"enc.attn.weight": (4, 4), "enc.mlp.weight": (4, 4), "enc.se.gate.weight": (4, 4)}
    source = {"m.enc.attn.weight": (4, 4), "m.enc.mlp.weight": (4, 4), "m.enc.se.gate.weight": (4, 4)}
    result = _closed(target, source, {"enc.attn.weight": "m.enc.attn.weight", "enc.mlp.weight": "m.enc.mlp.weight"})
    assert mapping(result) == {"enc.se.gate.weight": "m.enc.se.gate.weight"}


def test_indices_under_renamed_containers_never_match() -> None:
    # torchvision Swin features.1 is stage 0; timm layers.1 is stage 1: equal numbers, other meaning
    result = run({"layers.1.blocks.0.attn.rel_table": (4, 4)}, {"features.1.0.attn.rel_table": (4, 4)})
    assert mapping(result) == {} and result.abstentions == []
    same_container = run({"blocks.3.attn.rel_table": (4, 4)}, {"vit.blocks.3.attn.rel_table": (4, 4)})
    assert mapping(same_container) == {"blocks.3.attn.rel_table": "vit.blocks.3.attn.rel_table"}


def test_absent_counterpart_is_reported_even_without_a_look_alike() -> None:
    target = {"encoder.attn.weight": (4, 4), "encoder.mlp.weight": (4, 4), "pooler.dense.weight": (4, 4)}
    source = {"bert.encoder.attn.weight": (4, 4), "bert.encoder.mlp.weight": (4, 4),
              "cls.predictions.transform.dense.weight": (4, 4)}  # fmt: skip
    result = _closed(target, source, {"encoder.attn.weight": "bert.encoder.attn.weight",
                                      "encoder.mlp.weight": "bert.encoder.mlp.weight"})
    assert mapping(result) == {}
    [abstain] = result.abstentions
    assert abstain.reason.startswith("counterpart absent: the source has no bert.pooler.dense.weight, and 2 of the 3")
    assert "not filling" not in abstain.reason  # dense.weight alone is generic: no look-alike was considered


def test_a_lookalike_in_the_region_keeps_the_key_open_for_structure() -> None:
    """A port renamed one layer (``conv6`` for ``fc6``): not absent, since a tensor of its shape is unused there."""
    target = {"encoder.attn.weight": (4, 4), "encoder.mlp.weight": (4, 4), "encoder.fc6.weight": (6, 4)}
    source = {"bert.encoder.attn.weight": (4, 4), "bert.encoder.mlp.weight": (4, 4), "bert.encoder.conv6.weight": (6, 4)}
    result = _closed(target, source, {"encoder.attn.weight": "bert.encoder.attn.weight",
                                      "encoder.mlp.weight": "bert.encoder.mlp.weight"})
    assert mapping(result) == {}
    [abstain] = result.abstentions
    assert not abstain.final and abstain.candidates == ("bert.encoder.conv6.weight",)
    assert abstain.reason.startswith("no counterpart by name: the source has no bert.encoder.fc6.weight")


def test_a_stripped_scope_looks_for_lookalikes_in_the_whole_source() -> None:
    """``features.`` stripped: the region of ``features.conv4`` is the source root, where ``dense4`` sits."""
    target = {"features.conv1.weight": (4, 4), "features.conv2.weight": (5, 4), "features.conv4.weight": (6, 4)}
    source = {"conv1.weight": (4, 4), "conv2.weight": (5, 4), "dense4.weight": (6, 4)}
    result = _closed(target, source, {"features.conv1.weight": "conv1.weight", "features.conv2.weight": "conv2.weight"})
    [abstain] = result.abstentions
    assert not abstain.final and abstain.candidates == ("dense4.weight",), abstain
