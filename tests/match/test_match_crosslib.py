"""Cross-library matching, scored against a proven ground truth: regressions guarded.

The pairs come from ``benchmarks/matching_eval.py`` (see its docstring for the
oracles). Only pairs that load **zero** tensors into the wrong place today are
here; each must stay at zero wrong and keep at least today's correct count, so
an improvement never fails a test and a regression always does. The harness's
own scoring is tested too, on a transfer made wrong on purpose.
"""

from __future__ import annotations

import warnings
from types import ModuleType

import pytest
import torch
import torchvision

from benchmark_modules import load_benchmark  # tests/match/benchmark_modules.py
from weightsurgery import transfer


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    return load_benchmark("matching_eval")


# (pair name, hand transfer a .safetensors file (keys sorted), correct tensors today = the floor)
CASES = [
    ("tv.convnext_tiny -> timm.convnext_tiny", False, 162),
    ("tv.efficientnet_b0 -> timm.efficientnet_b0", False, 360),
    ("tv.mobilenet_v3_large -> timm.mobilenetv3_large_100", False, 310),
    ("tv.fasterrcnn_resnet50_fpn -> tv.resnet50", False, 318),
    ("tv.fasterrcnn_resnet50_fpn -> tv.resnet50", True, 318),
    ("tv.resnet50 -> sliced trunk.(conv1..layer3)", True, 258),
    ("camelCase resnet18 -> tv.resnet18", False, 122),
    ("camelCase resnet18 -> tv.resnet18", True, 0),
    ("Keras-leaf resnet18 -> tv.resnet18", False, 102),
    ("Keras-leaf resnet18 -> tv.resnet18", True, 66),
    ("mmdet backbone.convnext -> timm.convnext_tiny", False, 178),
    ("tv.resnet18 -> timm.vit_tiny", False, 0),
    ("tv.convnext_tiny -> timm.efficientnet_b0", True, 0),
    ("tv.efficientnet_b0 -> timm.efficientnet_b0", True, 360),
    ("tv.vgg16 -> nested VGG16 features", True, 26),
    ("Lightning distill (student+teacher) -> tv.resnet18", False, 122),
    ("tv.regnet_y_400mf -> timm.regnety_004", False, 276),
]


@pytest.mark.parametrize(("name", "as_safetensors", "floor"), CASES,
                         ids=[f"{n}{' [safetensors]' if s else ''}" for n, s, _ in CASES])
def test_pair_loads_nothing_wrong_and_keeps_its_coverage(
    harness: ModuleType, name: str, as_safetensors: bool, floor: int
) -> None:
    pair = next(p for p in harness.PAIRS if p.name == name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the low-coverage warning of unrelated pairs
        score = harness.evaluate(pair, as_safetensors=as_safetensors)
    assert not score.wrong, harness.render_details([score])
    assert score.correct >= floor, harness.render_details([score])
    assert score.correct + len(score.missed) == score.with_truth


def test_scoring_flags_a_swapped_pair_and_names_the_true_sources(harness: ModuleType) -> None:
    """Swap two same-shaped convs with an explicit map: the harness must call both WRONG."""
    source = harness.cloned(harness.randomized(torchvision.models.resnet18()))
    swap = {"layer1.0.conv1.weight": "layer1.0.conv2.weight", "layer1.0.conv2.weight": "layer1.0.conv1.weight"}
    target = torchvision.models.resnet18()
    report = transfer(source, target, key_map=swap)
    case = harness.Case(source, target, truth=dict(source))
    pair = harness.Pair("swapped", "vision", "construction", lambda: case)
    score = harness.score(pair, case, report)
    wrong = {w.target: (w.source, w.true_source) for w in score.wrong}
    assert wrong == {"layer1.0.conv1.weight": ("layer1.0.conv2.weight", "layer1.0.conv1.weight"),
                     "layer1.0.conv2.weight": ("layer1.0.conv1.weight", "layer1.0.conv2.weight")}
    assert score.correct == 120 and not score.missed  # every other tensor by its own name
    details = harness.render_details([score])
    assert "WRONG [swapped] layer1.0.conv1.weight (64,64,3,3) <- layer1.0.conv2.weight" in details


def test_scoring_counts_a_load_where_nothing_belongs_as_wrong(harness: ModuleType) -> None:
    source = {"0.weight": torch.randn(3, 2), "0.bias": torch.randn(3)}
    target = torch.nn.Sequential(torch.nn.Linear(2, 3))
    case = harness.Case(source, target, truth={})
    pair = harness.Pair("nothing belongs", "unrelated", "unrelated", lambda: case)
    score = harness.score(pair, case, transfer(source, target))
    assert [(w.target, w.true_source) for w in score.wrong] == [("0.weight", None), ("0.bias", None)]
    assert score.with_truth == 0 and score.coverage == 1.0


def test_an_unproven_truth_is_refused(harness: ModuleType) -> None:
    """The output proof fails when the truth swaps two tensors, so such a pair is never scored."""
    model = harness.randomized(torchvision.models.resnet18())
    truth = harness.cloned(model)
    a, b = "layer1.0.conv1.weight", "layer1.0.conv2.weight"
    truth[a], truth[b] = truth[b], truth[a]
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(harness.OracleError, match="truth-loaded target differs from the source: relative error"):
        harness.prove(lambda: model(x), torchvision.models.resnet18(), truth, lambda m: m(x))
