"""A tiny model registered in torchvision's own model registry, with weights the tests serve.

torchvision's real weights URLs carry the sha256 prefix of the real files, and a
cached file is verified against it, so generated weights cannot stand in for
them. This registers ``test_resnet`` (a name timm also has, so a bare name hits
both registries) with a ``WeightsEnum`` whose URL names the hash of the file
the tests serve or seed, through torchvision's ``register_model``, the way
torchvision registers its own builders. The module has no
``from __future__ import annotations``: torchvision reads the enum off the
builder's ``weights`` annotation.
"""

import functools
import hashlib
import io
from typing import Optional

import torch
from torch import nn
from torchvision.models._api import BUILTIN_MODELS, Weights, WeightsEnum, register_model
from torchvision.transforms._presets import ImageClassification

NAME = "test_resnet"
CATEGORIES = ["tench", "goldfish", "shark"]


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, num_classes)


def weights_file(seed: int = 0) -> tuple[dict[str, torch.Tensor], bytes, str]:
    """The state dict, its ``torch.save`` bytes, and the torch.hub file name carrying their hash."""
    torch.manual_seed(seed)
    state = TinyNet().state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    return state, data, f"test_resnet-{hashlib.sha256(data).hexdigest()[:8]}.pth"


def register(url: str) -> type:
    """Register ``test_resnet`` with one weights member at ``url``; returns its ``WeightsEnum``."""
    weights = Weights(
        url=url,
        transforms=functools.partial(ImageClassification, crop_size=8, resize_size=8),
        meta={"categories": CATEGORIES, "num_params": 151},
    )
    enum = WeightsEnum("TestResNet_Weights", {"TINY_V1": weights, "DEFAULT": weights})

    def test_resnet(*, weights: Optional[enum] = None, progress: bool = True, **kwargs: object) -> TinyNet:
        return TinyNet(**kwargs)

    BUILTIN_MODELS.pop(NAME, None)
    register_model(NAME)(test_resnet)
    return enum
