"""The examples run end to end (shortened) and show what they promise."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
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


@pytest.mark.slow
def test_quickstart_transfers_the_body_and_initializes_the_new_head(tmp_path, capsys: pytest.CaptureFixture) -> None:
    results = load("quickstart").main(["--pretrain-epochs", "2", "--finetune-epochs", "2", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "initialized (2)" in out and "head.{weight,bias}" in out and "excluded by rule" in out and "stripped 'model.'" in out
    assert (tmp_path / "epoch=7.ckpt").exists()
    assert set(results) == {"transferred", "random init", "constant init"}


@pytest.mark.slow
def test_efficientnet_example_loads_real_weights_and_recognizes_the_photos(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    figure, page = tmp_path / "curves.png", tmp_path / "report.html"
    results = load("finetune_efficientnet").main(["--steps", "2", "--per-class", "2", "--head-steps", "3",
                                                  "--head-size", "32", "--figure", str(figure), "--html", str(page)])
    out = capsys.readouterr().out
    assert "loaded 296, adapted 0, initialized 0, kept 0, unused 0" in out
    top1 = dict(re.findall(r"^skimage\.data\.(\w+)\(\): ([^%]+?) \d+%", out, flags=re.MULTILINE))
    assert "cat" in top1["chelsea"]  # "tabby, tabby cat"
    assert top1["coffee"] == "espresso"
    assert "kept (the constructor's init): classifier.weight, classifier.bias" in out
    assert set(results) >= {"transferred", "random init", "constant init"}
    heads = {k.removeprefix("head: ") for k in results if k.startswith("head: ")}
    assert heads == set(load("finetune_efficientnet").HEAD_INITS) and len(heads) == 8
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "classifier.weight" in page.read_text() and "report page:" in out


@pytest.mark.slow
def test_the_report_screenshot_is_taken_of_a_real_transfer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI must run the browser tests (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    png = load("report_screenshot").main(["--html", str(tmp_path / "r.html"), "--png", str(tmp_path / "r.png")])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "loaded 294, adapted 0, initialized 0, kept 2, unused 2" in capsys.readouterr().out
    assert "efficientnet-lite0-57934424.pth" in (tmp_path / "r.html").read_text()
