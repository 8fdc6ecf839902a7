"""Adapters end to end through weightsurgery.transfer on real timm/torchvision definitions (random init)."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from weightsurgery.adapt import AdaptRule, resample_pos_embed
from weightsurgery.recipe import Recipe
from weightsurgery.transfer import transfer


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


def test_vit_224_into_384_adapts_only_the_position_embedding():
    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224")
    report = transfer(src, "timm:vit_tiny_patch16_384", on_mismatch="adapt")  # built on meta
    dst = report.model
    assert report.initialized == []
    record = report.records["pos_embed"]
    assert record.adapter == "pos_embed"
    assert record.adapter_args == {"num_prefix_tokens": 1, "old_grid": [14, 14], "new_grid": [24, 24]}
    expected = resample_pos_embed(src.pos_embed.detach(), new_grid=(24, 24))
    assert torch.equal(dst.pos_embed.detach(), expected)
    src_state = src.state_dict()
    assert all(torch.equal(v, src_state[k]) for k, v in dst.state_dict().items() if k != "pos_embed")


def test_grayscale_resnet_sees_a_gray_image_as_the_rgb_model_sees_it_replicated(resnet):
    gray = torchvision.models.resnet18()
    gray.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    report = transfer(resnet, gray.eval(), on_mismatch="adapt")
    assert report.initialized == [] and report.records["conv1.weight"].adapter == "input_channels"
    image = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gray(image), resnet(image.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)


def test_head_subset_gives_the_source_logits_of_those_classes(resnet):
    labels = [f"n{i:03d}" for i in range(1000)]
    small = torchvision.models.resnet18(num_classes=3).eval()
    report = transfer(resnet, small, on_mismatch="adapt", classes=["n005", 1, 9], source_labels=labels)
    assert report.records["fc.bias"].adapter_args == {"rows": [5, 1, 9]}
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(small(image), resnet(image)[:, [5, 1, 9]])


def test_class_count_change_without_classes_keeps_the_constructors_head_and_says_why(resnet):
    report = transfer(resnet, torchvision.models.resnet18(num_classes=10), on_mismatch="adapt", seed=0)
    assert set(report.kept) == {"fc.weight", "fc.bias"} and report.initialized == []
    assert "pass classes=[...] to keep a subset" in report.records["fc.weight"].evidence


class SeparateAttention(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)


class Block(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn


def test_multihead_attention_from_separate_projections_and_back():
    torch.manual_seed(0)
    sep = Block(SeparateAttention())
    mha = Block(nn.MultiheadAttention(16, 4, batch_first=True)).eval()
    report = transfer(sep, mha)
    assert report.initialized == []
    assert report.records["attn.in_proj_weight"].sources == ("attn.q.weight", "attn.k.weight", "attn.v.weight")
    # the reference: the same attention computed from the separate projections
    reference = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([sep.attn.q.weight, sep.attn.k.weight, sep.attn.v.weight]))
        reference.in_proj_bias.copy_(torch.cat([sep.attn.q.bias, sep.attn.k.bias, sep.attn.v.bias]))
        reference.out_proj.load_state_dict(sep.attn.out_proj.state_dict())
        x = torch.randn(2, 5, 16)
        torch.testing.assert_close(mha.attn(x, x, x)[0], reference(x, x, x)[0])
    back = Block(SeparateAttention())
    split = transfer(mha, back)
    assert split.initialized == [] and split.records["attn.v.bias"].adapter == "split"
    for k, v in sep.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


class TinyLM(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, 8)
        self.lm_head = nn.Linear(8, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied


def test_tied_vocabulary_resize_stays_tied():
    torch.manual_seed(0)
    src, dst = TinyLM(100), TinyLM(120)
    report = transfer(src, dst, on_mismatch="adapt")
    assert report.initialized == []
    assert dst.lm_head.weight is dst.wte.weight
    assert torch.equal(dst.wte.weight[:100], src.wte.weight)
    torch.testing.assert_close(dst.wte.weight[100:], src.wte.weight.mean(0).expand(20, 8))


def test_recipe_file_with_an_explicit_rule(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224")
    path = tmp_path / "vit.yaml"
    Recipe(adapt=[AdaptRule("pos_embed", "pos_embed", {"interpolation": "bilinear"})], init={"head.*": "zeros"}).save(
        path
    )
    report = transfer(src, "timm:vit_tiny_patch16_384", recipe=path, exclude=["head.*"])
    dst = report.model
    assert report.records["pos_embed"].adapter_args["interpolation"] == "bilinear"
    expected = resample_pos_embed(src.pos_embed.detach(), new_grid=(24, 24), interpolation="bilinear")
    assert torch.equal(dst.pos_embed.detach(), expected)
    assert set(report.initialized) == {"head.weight", "head.bias"} and not dst.head.weight.any()


def test_grown_head_keeps_copied_rows_and_initializes_new_ones_from_the_fallback_spec():
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6))
    dst = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    report = transfer(src, dst, classes=[5, 1], init={"2.bias": "constant(0.25)", "*": "zeros"}, seed=0)
    assert report.records["2.weight"].adapter_args == {"rows": [5, 1, -1, -1]}
    assert torch.equal(dst[2].weight[:2], src[2].weight[[5, 1]])
    assert torch.equal(dst[2].weight[2:], torch.zeros(2, 8))  # new rows: the fallback spec
    assert torch.equal(dst[2].bias[2:], torch.full((2,), 0.25))
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(dst(x)[:, :2], src(x)[:, [5, 1]])


def test_classes_reorders_a_same_size_head_without_on_mismatch():
    src = nn.Sequential(nn.Linear(4, 3))
    dst = nn.Sequential(nn.Linear(4, 3))
    report = transfer(src, dst, classes=[2, 0, 1])
    assert report.records["0.weight"].status == "adapted"
    x = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x)[:, [2, 0, 1]])


def test_a_rule_with_its_own_sources_fills_a_target_no_strategy_matched():
    q, k, v = (nn.Linear(4, 4) for _ in range(3))
    state = {"enc.wq": q.weight.detach(), "enc.wk": k.weight.detach(), "enc.wv": v.weight.detach()}
    mha = nn.MultiheadAttention(4, 2, bias=False)
    rule = AdaptRule("in_proj_weight", "fuse", sources=("enc.wq", "enc.wk", "enc.wv"))
    report = transfer(state, mha, adapt=[rule], seed=0)
    assert report.records["in_proj_weight"].strategy == "rule"
    assert torch.equal(mha.in_proj_weight, torch.cat([q.weight, k.weight, v.weight]))
    assert report.unused == ()


def test_a_grown_head_counts_only_its_copied_rows_as_loaded_and_records_the_fill_spec():
    src = nn.Sequential(nn.Linear(3, 5))
    with torch.no_grad():
        src[0].weight.copy_(torch.arange(15.0).reshape(5, 3))
        src[0].bias.copy_(torch.arange(5.0))
    target = nn.Sequential(nn.Linear(3, 4))
    report = transfer(src, target, classes=[4, 2], init="constant(0.5)", on_mismatch="adapt")
    w, b = report.records["0.weight"], report.records["0.bias"]
    assert (w.status, w.adapter, dict(w.adapter_args)) == ("adapted", "head", {"rows": [4, 2, -1, -1]})
    assert (w.loaded_numel, w.num_loaded, w.numel, w.init_spec, w.init_rule) == (6, 6, 12, "constant(0.5)", "*")
    assert (b.loaded_numel, b.num_loaded, b.init_spec) == (2, 2, "constant(0.5)")
    assert report.num_loaded_params == 8 and report.num_params == 16 and report.coverage == 0.5
    assert report.to_dict()["records"][0]["loaded_numel"] == 6 and report.to_dict()["coverage"] == 0.5
    assert "coverage 50.0% of 16 parameters" in report.summary()
    assert "2 of 4 rows from the source, new rows constant(0.5)" in str(report)
    expected = torch.cat([src[0].weight[[4, 2]], torch.full((2, 3), 0.5)])
    assert torch.equal(target[0].weight, expected)
    assert torch.equal(target[0].bias, torch.tensor([4.0, 2.0, 0.5, 0.5]))
    dry = transfer(src, nn.Sequential(nn.Linear(3, 4)), classes=[4, 2], init="constant(0.5)", on_mismatch="adapt",
                   dry_run=True)
    assert dry.records["0.weight"].init_spec == "constant(0.5)" and dry.coverage == 0.5


def test_a_grown_vocabulary_counts_only_its_copied_rows_as_loaded():
    src = nn.Embedding(6, 2)
    with torch.no_grad():
        src.weight.copy_(torch.arange(12.0).reshape(6, 2))
    target = nn.Embedding(8, 2)
    report = transfer(src, target, on_mismatch="adapt")
    record = report.records["weight"]
    assert (record.adapter, dict(record.adapter_args)) == ("vocab", {"new_rows": "mean"})
    assert (record.loaded_numel, record.init_spec) == (12, None)  # the new rows are the mean, not an init
    assert report.coverage == 0.75 and report.num_loaded_params == 12
    assert torch.equal(target.weight[:6], src.weight)
    assert torch.equal(target.weight[6:], torch.tensor([[5.0, 6.0], [5.0, 6.0]]))  # the mean row
    shrunk = transfer(src, nn.Embedding(4, 2), on_mismatch="adapt")
    assert shrunk.records["weight"].loaded_numel is None and shrunk.coverage == 1.0
