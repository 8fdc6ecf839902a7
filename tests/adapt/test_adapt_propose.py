"""propose_adapter: each adapter's conditions, decided from metadata alone, and the reasons otherwise."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from timm.layers import PatchEmbed
from torch import nn

from weightsurgery.adapt import AdaptContext, propose_adapter
from weightsurgery.errors import AdapterError
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta


def _metas(module: nn.Module) -> dict[str, TensorMeta]:
    return {k: TensorMeta.of(v) for k, v in module.state_dict().items()}


def _ctx(target: nn.Module, source: nn.Module | dict, **kw) -> AdaptContext:
    src = source if isinstance(source, dict) else _metas(source)
    return AdaptContext(TargetSpec.from_module(target), src, **kw)


@pytest.fixture(scope="module")
def resnets():
    with torch.device("meta"):
        return torchvision.models.resnet18(), torchvision.models.resnet18(num_classes=10)


def test_vit_position_embedding_grid():
    with torch.device("meta"):
        ctx = _ctx(timm.create_model("vit_tiny_patch16_384"), timm.create_model("vit_tiny_patch16_224"))
    assert propose_adapter("pos_embed", "pos_embed", ctx) == (
        "pos_embed",
        {"num_prefix_tokens": 1, "old_grid": [14, 14], "new_grid": [24, 24]},
    )


def test_position_embedding_without_a_unique_grid_gets_a_reason():
    target = nn.Module()
    target.position_embeddings = nn.Parameter(torch.zeros(1, 200, 4))
    ctx = _ctx(target, {"position_embeddings": TensorMeta((1, 196, 4), torch.float32)})
    assert propose_adapter("position_embeddings", "position_embeddings", ctx) == (
        "position embedding: no prefix-token count 0..16 makes both 196 and 200 tokens square grids"
    )


def test_patch_embedding_kernel():
    target, source = nn.Module(), nn.Module()
    target.patch_embed = PatchEmbed(img_size=32, patch_size=8, embed_dim=16)
    source.patch_embed = PatchEmbed(img_size=32, patch_size=16, embed_dim=16)
    assert propose_adapter("patch_embed.proj.weight", "patch_embed.proj.weight", _ctx(target, source)) == (
        "patch_embed",
        {},
    )


def test_first_conv_input_channels(resnets):
    src, _ = resnets
    with torch.device("meta"):
        gray = torchvision.models.resnet18()
        gray.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    assert propose_adapter("conv1.weight", "conv1.weight", _ctx(gray, src)) == ("input_channels", {})


def test_input_channels_elsewhere_is_refused():
    target = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(4, 8, 3))
    src = {"0.weight": TensorMeta((8, 3, 3, 3), torch.float32), "1.weight": TensorMeta((8, 8, 3, 3), torch.float32)}
    assert propose_adapter("1.weight", "1.weight", _ctx(target, src)) == (
        "input channels differ on '1', which is not the first conv ('0')"
    )
    # the source's registry metadata names the first conv
    ctx = _ctx(target, src, source_metadata={"first_conv": "1"})
    assert propose_adapter("1.weight", "1.weight", ctx) == ("input_channels", {})


def test_class_count_change_without_classes_is_left_to_init(resnets):
    src, dst = resnets
    assert propose_adapter("fc.weight", "fc.weight", _ctx(dst, src)) == (
        "class count differs (source 1000, target 10) on the classifier 'fc'; pass classes=[...] to keep a subset"
    )


def test_head_subset_by_index_and_label_names(resnets):
    src, dst = resnets
    labels = [f"class{i}" for i in range(1000)]
    classes = [5, "class7", *range(100, 108)]
    for ctx in (
        _ctx(dst, src, classes=classes, source_metadata={"label_names": labels}),
        _ctx(dst, src, classes=classes, source_labels=labels),
    ):
        rows = [5, 7, *range(100, 108)]
        assert propose_adapter("fc.weight", "fc.weight", ctx) == ("head", {"rows": rows})
        assert propose_adapter("fc.bias", "fc.bias", ctx) == ("head", {"rows": rows})


def test_head_reorder_with_equal_shapes_and_bad_labels():
    target, source = nn.Sequential(nn.Linear(4, 3)), nn.Sequential(nn.Linear(4, 3))
    ctx = _ctx(target, source, classes=[2, 1, 0], source_metadata={"classifier": "0"})
    assert propose_adapter("0.weight", "0.weight", ctx) == ("head", {"rows": [2, 1, 0]})
    bad = _ctx(target, source, classes=["x"], source_labels=["a", "b", "c"])
    with pytest.raises(AdapterError, match=r"classes= names label 'x', which is not a source label"):
        propose_adapter("0.weight", "0.weight", bad)


class TinyLM(nn.Module):
    def __init__(self, vocab: int, positions: int = 16) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, 8)
        self.wpe = nn.Embedding(positions, 8)
        self.lm_head = nn.Linear(8, vocab)


def test_vocabulary_resize_but_not_positions():
    ctx = _ctx(TinyLM(120, positions=32), TinyLM(100))
    assert propose_adapter("wte.weight", "wte.weight", ctx) == ("vocab", {"new_rows": "mean"})
    assert propose_adapter("lm_head.weight", "lm_head.weight", ctx) == ("vocab", {"new_rows": "mean"})
    assert propose_adapter("lm_head.bias", "lm_head.bias", ctx) == ("vocab", {"new_rows": "mean"})
    assert propose_adapter("wpe.weight", "wpe.weight", ctx) == (
        "no adapter's conditions hold for wpe.weight (16, 8) -> wpe.weight (32, 8)"
    )


class Conv1D(nn.Module):
    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(nx, nf))


def test_conv1d_linear_transpose():
    linear_src = {"c_fc.weight": TensorMeta((6, 4), torch.float32)}
    target = nn.Module()
    target.c_fc = Conv1D(6, 4)
    assert propose_adapter("c_fc.weight", "c_fc.weight", _ctx(target, linear_src)) == ("transpose", {})
    lin = nn.Module()
    lin.c_fc = nn.Linear(6, 4, bias=False)  # (4, 6); source (6, 4)
    assert propose_adapter("c_fc.weight", "c_fc.weight", _ctx(lin, linear_src)).startswith(
        "(6, 4) is (4, 6) transposed but neither side is a Conv1D; add AdaptRule('c_fc.weight', 'transpose')"
    )
    ctx = _ctx(lin, linear_src, source_metadata={"module_types": {"c_fc": "Conv1D"}})
    assert propose_adapter("c_fc.weight", "c_fc.weight", ctx) == ("transpose", {})


def test_everything_else_gets_a_reason():
    target = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    src = {"0.weight": TensorMeta((3, 5), torch.float32), "0.bias": TensorMeta((3, 2), torch.float32)}
    ctx = _ctx(target, src)
    assert propose_adapter("0.weight", "0.weight", ctx) == (
        "no adapter's conditions hold for 0.weight (3, 5) -> 0.weight (3, 4)"
    )
    assert propose_adapter("0.bias", "0.bias", ctx) == (
        "0.bias (3, 2) and 0.bias (3) differ in rank; no adapter reshapes implicitly"
    )
    assert propose_adapter("nope", "0.bias", ctx) == "'nope' is not a target key"
