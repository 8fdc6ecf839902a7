"""PEFT / LoRA with the real ``peft`` package: plain into wrapped, wrapped into plain, merged into plain."""

from __future__ import annotations

import warnings

import peft
import pytest
import timm
import torch
from torch import nn
from transformers import BertConfig, BertModel

from weightsurgery import transfer
from weightsurgery.match.wrappers import is_adapter_tensor

CONFIG = BertConfig(
    vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=16,
)
IDS = torch.tensor([[1, 5, 9, 2, 7, 3]])
IMAGE = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def bert() -> nn.Module:
    torch.manual_seed(0)
    return BertModel(CONFIG).eval()


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=5).eval()


CASES = {
    "bert": (bert, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]),
             lambda m: m(IDS).last_hidden_state),
    "timm-cnn": (cnn, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["conv2", "fc"]), lambda m: m(IMAGE)),
}


def wrapped(make, config) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(make(), config).eval()


def run(src, dst, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transfer(src, dst, seed=0, **kw)


def trained_lora(model: nn.Module) -> nn.Module:
    """Give every lora_B a non-zero value, as training would: the adapter then changes the outputs."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


@pytest.mark.parametrize("case", CASES)
def test_plain_checkpoint_into_a_peft_target_fills_base_layer_and_leaves_lora_without_source(case) -> None:
    make, config, forward = CASES[case]
    plain = make()
    torch.manual_seed(123)  # another init for the target's own base weights
    target = wrapped(make, config)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(1.0)  # every base weight now differs from the checkpoint's
    report = run(plain.state_dict(), target)

    lora = [k for k in target.state_dict() if is_adapter_tensor(k)]
    assert lora and sorted(report.kept) == sorted(lora) and report.initialized == []
    for key in lora:
        assert report.records[key].evidence == (
            "a PEFT adapter tensor: the source holds no adapter tensors, so it has no counterpart"
        )
    base = [k for k in report.mapping if ".base_layer." in k]
    assert base and all(report.mapping[k] == k.removeprefix("base_model.model.").replace(".base_layer", "") for k in base)
    assert not report.unused
    with torch.no_grad(), target.disable_adapter():
        torch.testing.assert_close(forward(target), forward(plain), rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_a_peft_source_into_a_plain_model_loads_the_base_weights_and_reports_lora_unused(case) -> None:
    make, config, forward = CASES[case]
    source = trained_lora(wrapped(make, config))
    with torch.no_grad():
        adapted = forward(source)
        with source.disable_adapter():
            base_only = forward(source)
    assert not torch.allclose(adapted, base_only)  # the adapter matters
    state = source.state_dict()

    target = make()
    with torch.no_grad():
        for p in target.parameters():
            p.add_(1.0)
    report = run(state, target)
    assert not report.initialized
    assert sorted(report.unused) == sorted(k for k in state if is_adapter_tensor(k))
    [key] = [k for k in report.mapping if report.mapping[k].endswith(".base_layer.weight")][:1]
    assert "the source's LoRA delta on it is not merged" in report.records[key].evidence
    with torch.no_grad():
        torch.testing.assert_close(forward(target), base_only, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_a_merged_peft_source_reproduces_the_adapted_model(case) -> None:
    make, config, forward = CASES[case]
    source = trained_lora(wrapped(make, config))
    with torch.no_grad():
        adapted = forward(source)
    merged = source.merge_and_unload()
    target = make()
    with torch.no_grad():
        for p in target.parameters():
            p.add_(1.0)
    report = run(merged.state_dict(), target)
    assert not report.initialized and not report.unused
    with torch.no_grad():
        torch.testing.assert_close(forward(target), adapted, rtol=1e-5, atol=1e-6)


def test_a_peft_model_into_another_peft_model_carries_the_adapter() -> None:
    make, config, forward = CASES["bert"]
    source = trained_lora(wrapped(make, config))
    target = wrapped(make, config)
    report = run(source.state_dict(), target)
    assert not report.initialized and not report.unused
    with torch.no_grad():
        torch.testing.assert_close(forward(target), forward(source), rtol=0, atol=0)


def test_a_saved_adapter_file_fills_the_lora_tensors_of_a_peft_target(tmp_path) -> None:
    from safetensors.torch import save_file

    make, config, _ = CASES["bert"]
    source = trained_lora(wrapped(make, config))
    adapter = peft.get_peft_model_state_dict(source)  # what save_pretrained writes: no adapter name
    assert all(".default." not in k for k in adapter) and adapter
    save_file({k: v.contiguous() for k, v in adapter.items()}, tmp_path / "adapter_model.safetensors")
    target = wrapped(make, config)
    report = run(tmp_path / "adapter_model.safetensors", target)
    lora = {k: v for k, v in target.state_dict().items() if is_adapter_tensor(k)}
    assert sorted(report.mapping) == sorted(lora) and not report.unused
    expected = source.state_dict()
    for key, value in lora.items():
        assert torch.equal(value, expected[key]), key


def test_modules_to_save_both_directions() -> None:
    from transformers import BertForSequenceClassification

    config = BertConfig(**{**CONFIG.to_dict(), "num_labels": 3})

    def make() -> nn.Module:
        torch.manual_seed(0)
        return BertForSequenceClassification(config).eval()

    lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
    plain = make()
    torch.manual_seed(5)
    target = wrapped(lambda: BertForSequenceClassification(config).eval(), lora)
    report = run(plain.state_dict(), target)
    head = "base_model.model.classifier"
    for part in ("original_module", "modules_to_save.default"):
        assert report.mapping[f"{head}.{part}.weight"] == "classifier.weight"
        assert torch.equal(target.state_dict()[f"{head}.{part}.weight"], plain.classifier.weight)
    assert not report.unused
    with torch.no_grad(), target.disable_adapter():
        torch.testing.assert_close(target(IDS).logits, plain(IDS).logits, rtol=0, atol=0)

    # the reverse: the trained copy of the head, not the original, fills a plain classifier
    source = trained_lora(wrapped(make, lora))
    with torch.no_grad():
        source.base_model.model.classifier.modules_to_save["default"].weight.mul_(3.0)
    back = make()
    report = run(source.state_dict(), back)
    assert report.mapping["classifier.weight"] == f"{head}.modules_to_save.default.weight"
    assert f"{head}.original_module.weight" in report.unused
    assert torch.equal(back.classifier.weight, source.state_dict()[f"{head}.modules_to_save.default.weight"])
    assert not torch.equal(back.classifier.weight, source.state_dict()[f"{head}.original_module.weight"])
