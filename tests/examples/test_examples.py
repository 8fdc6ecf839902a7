"""The examples run end to end (shortened) and show what they promise."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_quickstart_transfers_the_body_and_initializes_the_new_head(tmp_path, capsys: pytest.CaptureFixture) -> None:
    results = load("quickstart").main(["--pretrain-epochs", "2", "--finetune-epochs", "2", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "initialized (2)" in out and "head.{weight,bias}" in out and "excluded by rule" in out and "stripped 'model.'" in out
    assert (tmp_path / "epoch=7.ckpt").exists()
    assert set(results) == {"transferred", "random init", "constant init"}


def test_efficientnet_example_loads_real_weights_and_recognizes_the_photos(capsys: pytest.CaptureFixture) -> None:
    results = load("finetune_efficientnet").main(["--steps", "2", "--per-class", "2"])
    out = capsys.readouterr().out
    assert "loaded 296, adapted 0, initialized 0, kept 0, unused 0" in out
    top1 = dict(re.findall(r"^skimage\.data\.(\w+)\(\): ([^%]+?) \d+%", out, flags=re.MULTILINE))
    assert "cat" in top1["chelsea"]  # "tabby, tabby cat"
    assert top1["coffee"] == "espresso"
    assert "kept (the constructor's init): classifier.weight, classifier.bias" in out
    assert set(results) == {"transferred", "random init", "constant init"}
